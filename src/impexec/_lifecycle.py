"""What keeps an executor's machinery alive and ends it: interpreter exit, fork, collection.

Two objects stand between a ClusterExecutor and the threads and launchers working for it,
so that none of those refers to the executor itself (an executor nobody references any
more is collected and then shut down, its submitted work still running, as the stdlib
pools do)::

    ClusterExecutor ──▶ Core      scheduler, broker, launchers, flags, private directory;
                         ▲        the launcher thread runs Core.watch_launchers
           Host ─────────┘        the executor as one launcher sees it (LauncherHost)

At interpreter exit :func:`_python_exit` shuts every open executor down and waits for its
work; in a forked child the parent's executors are forgotten.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import shutil
import socket
import tempfile
import threading
import weakref
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._connection import PRIVATE_DIR_PREFIX, ConnectionInfo, lock_private_dir
from ._errors import WorkerStartError
from ._scheduler import Scheduler
from .launchers.base import Launcher

if TYPE_CHECKING:
    from ._broker import Broker

logger = logging.getLogger("impexec")

#: Seconds launchers get at shutdown to see their workers leave before killing them.
STOP_TIMEOUT = 10.0

#: Executors open in this process, shut down at interpreter exit.
live: weakref.WeakSet[Executor] = weakref.WeakSet()
#: Launcher threads still running. They outlive an executor shut down without waiting, or
#: collected, until its work is done and its workers stopped; the exit hook waits for them.
running: set[threading.Thread] = set()
_global_shutdown = False


def interpreter_exiting() -> bool:
    """True once the interpreter began to exit: no executor takes new work then."""
    return _global_shutdown


def _python_exit() -> None:
    """Interpreter exit: as the stdlib pools do, run what was submitted, then stop.

    Every executor still open is shut down (nothing is cancelled) and the hook waits
    for all of them, so a script may end with futures pending, or right after
    ``shutdown(wait=False)``, and its tasks still run and its workers still leave.
    """
    global _global_shutdown
    _global_shutdown = True
    for ex in list(live):
        try:
            ex.shutdown(wait=False)
        except Exception:  # interpreter is exiting; the join below still runs
            logger.debug("shutdown at exit failed", exc_info=True)
    for thread in list(running):
        thread.join()


# Like concurrent.futures: run before atexit handlers, so that a later submit (from an
# atexit handler) is refused rather than started on an executor that is going away.
if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_python_exit)
else:  # not CPython
    atexit.register(_python_exit)


def _forget_after_fork() -> None:
    # a forked child's copies of the parent's executors are not its own to shut down at
    # exit (their threads did not survive the fork; their sockets are the parent's)
    live.clear()
    running.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


class Core:
    """What the executor's threads, its launchers and its finalizer share.

    Never the executor itself: an executor nobody references any more is collected and
    then shut down (its submitted work still runs), like the stdlib pools.
    """

    def __init__(self, scheduler: Scheduler, launchers: list[Launcher]):
        self.scheduler = scheduler
        self.launchers = launchers
        self.broker: Broker | None = None  # set once built
        self.conn: ConnectionInfo | None = None
        self.shutdown = False
        self.start_error: WorkerStartError | None = None
        # the private (0700) directory: made only when something needs it, so a client
        # killed with remote workers only leaves nothing in /tmp
        self.private_lock = threading.RLock()
        self.tmpdir: Path | None = None
        self.private_fd: int | None = None
        self.connection_file: Path | None = None
        self.local_connection_file: Path | None = None
        self.ipc: str | None = None  # the Unix socket address for workers on this machine
        self.started: list[Launcher] = []

    # -- starting (and undoing a failed start) -----------------------------------------
    def local_binds(self) -> list[str]:
        """Addresses the broker binds besides its own: a Unix socket in the private
        directory when a launcher runs workers on this machine (faster per round trip
        than TCP loopback, and reachable by this user only)."""
        if os.name == "posix" and any(launcher.local_socket for launcher in self.launchers):
            ipc = f"ipc://{self.private_dir()}/broker.sock"
            self.ipc = ipc if len(ipc) < 100 else None  # longer: too long for a sun_path
        return [self.ipc] if self.ipc else []

    def start(self, conn: ConnectionInfo) -> threading.Thread:
        """Start the broker thread, the launchers and the thread that watches them."""
        broker = self.broker
        assert broker is not None
        self.conn = conn
        if self.ipc is not None:
            self.local_connection_file = dataclasses.replace(conn, address=self.ipc).write(
                self.private_dir() / "connection-local.json"
            )
        broker.start()
        # the thread's target is this core, never the executor
        thread = threading.Thread(target=self.watch_launchers, name="impexec-launchers", daemon=True)
        for launcher in self.launchers:
            self.started.append(launcher)  # before start(): it may fail half-way
            launcher.start(Host(self))
        thread.start()
        running.add(thread)
        return thread

    def undo_start(self) -> None:
        """Stop what a failing ``__init__`` had started: threads, sockets, files, workers."""
        broker = self.broker
        if broker is not None:
            try:
                if not broker.is_alive() and not broker.stopped.is_set():
                    broker.start()  # its teardown closes the sockets and the context
                broker.stop_when_idle()  # nothing was submitted: it stops at once
                broker.join(STOP_TIMEOUT)
            except Exception:
                logger.debug("could not stop the broker of a failed executor", exc_info=True)
        for launcher in self.started:  # after the broker said goodbye to connected workers
            try:
                launcher.stop(STOP_TIMEOUT)
            except Exception:
                logger.exception("%r failed to stop its workers", launcher)
        self.remove_private_dir()

    # -- the private directory ---------------------------------------------------------

    def private_dir(self) -> Path:
        with self.private_lock:
            if self.tmpdir is None:
                self.tmpdir = Path(tempfile.mkdtemp(prefix=PRIVATE_DIR_PREFIX))
                # held while this process lives: a worker that finds the lock free after
                # its broker vanished removes the directory (it holds the key)
                self.private_fd = lock_private_dir(self.tmpdir)
            return self.tmpdir

    def remove_private_dir(self) -> None:
        with self.private_lock:
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
            if self.private_fd is not None:
                os.close(self.private_fd)
                self.private_fd = None

    def connection_file_path(self) -> Path:
        with self.private_lock:
            if self.connection_file is None:
                assert self.conn is not None
                self.connection_file = self.conn.write(self.private_dir() / "connection.json")
            return self.connection_file

    def worker_joined(self, _worker: Any) -> None:
        self.start_error = None

    def collected(self) -> None:
        """The executor was garbage-collected: finish its work, then stop."""
        self.shutdown = True
        if self.broker is not None:
            self.broker.stop_when_idle()

    def watch_launchers(self) -> None:
        """The launcher thread: poll the launchers until the broker stops, then stop them."""
        broker = self.broker
        assert broker is not None
        interval = min([launcher.poll_interval for launcher in self.launchers] or [0.1])
        try:
            while not broker.stopped.wait(interval):
                for launcher in self.launchers:
                    try:
                        launcher.poll()
                    except Exception:
                        logger.exception("%r failed to poll its workers", launcher)
                self.check_start_failures()
        finally:
            for launcher in self.launchers:
                try:
                    launcher.stop(STOP_TIMEOUT)
                except Exception:
                    logger.exception("%r failed to stop its workers", launcher)
            self.remove_private_dir()
            running.discard(threading.current_thread())

    def check_start_failures(self) -> None:
        if not self.launchers or self.scheduler.workers:
            return
        if not all(launcher.failing for launcher in self.launchers if launcher.n):
            return
        errors = [e for e in (launcher.start_error() for launcher in self.launchers) if e]
        if not errors:
            return
        err = errors[-1]
        if self.start_error is None:
            logger.error("no worker could be started: %s", err)
        self.start_error = err
        broker = self.broker
        assert broker is not None
        broker.enqueue(lambda: broker.fail_open_tasks(err))


class Host:
    """The executor as seen by one launcher (see launchers.base.LauncherHost)."""

    def __init__(self, core: Core):
        assert core.broker is not None and core.conn is not None
        self._core = core  # not the executor: launchers must not keep it alive
        self._broker = core.broker
        self.connection = core.conn

    @property
    def connection_file(self) -> Path:
        return self._core.connection_file_path()

    @property
    def local_connection_file(self) -> Path:
        return self._core.local_connection_file or self._core.connection_file_path()

    def is_connected(self, tag: str) -> bool:
        return tag in self._broker.connected_tags

    def ever_connected(self, tag: str) -> bool:
        return tag in self._broker.ever_connected_tags

    def attach_pipe(self, sock: socket.socket) -> None:
        """The client's end of a local worker's pipe: its main link (:mod:`._pipe`)."""
        self._broker.attach_pipe(sock)

    def worker_exited(self, tag: str, why: str) -> None:
        broker = self._broker
        broker.enqueue(lambda: broker.tag_exited(tag, why))

    @property
    def shutting_down(self) -> bool:
        # shut down AND no task open: until the last task is done, a worker that dies
        # is reported and replaced, or a task that kills its workers would never reach
        # its retry limit and shutdown(wait=True) would never return
        return self._core.shutdown and self._core.scheduler.idle()
