"""ClusterExecutor: the concurrent.futures.Executor users hold.

The caller's thread serializes each task (so ``submit`` can name what does not pickle)
and hands it to the broker thread; a launcher thread starts, watches and replaces
workers. See docs/internals.md for the life of a task.
"""

from __future__ import annotations

import atexit
import dataclasses
import ipaddress
import itertools
import logging
import os
import shutil
import socket
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

from ._broker import Broker
from ._connection import PRIVATE_DIR_PREFIX, ConnectionInfo, lock_private_dir, parse_key
from ._context import Context
from ._errors import BrokenClusterError, WorkerStartError
from ._mapping import (
    bare_chunks,
    check_buffersize,
    chunks,
    default_buffersize,
    input_length,
    ordered,
    plan_chunksize,
    unordered,
)
from ._protocol import Flag
from ._scheduler import DEFAULT_MAX_CONTEXTS, Scheduler, Statistics, Task
from ._serialize import (
    BLOB_MAX,
    BLOB_MIN,
    BlobDigests,
    BlobRef,
    FunctionCache,
    get_serializer,
    serialization_error,
)
from .launchers.base import Launcher
from .launchers.local import LocalWorkers

logger = logging.getLogger("impexec")

#: Seconds launchers get at shutdown to see their workers leave before killing them.
STOP_TIMEOUT = 10.0

_live: weakref.WeakSet[ClusterExecutor] = weakref.WeakSet()
#: Launcher threads still running. They outlive an executor shut down without waiting, or
#: collected, until its work is done and its workers stopped; the exit hook waits for them.
_running: set[threading.Thread] = set()
_global_shutdown = False


def _python_exit() -> None:
    """Interpreter exit: as the stdlib pools do, run what was submitted, then stop.

    Every executor still open is shut down (nothing is cancelled) and the hook waits
    for all of them, so a script may end with futures pending, or right after
    ``shutdown(wait=False)``, and its tasks still run and its workers still leave.
    """
    global _global_shutdown
    _global_shutdown = True
    for ex in list(_live):
        try:
            ex.shutdown(wait=False)
        except Exception:  # interpreter is exiting; the join below still runs
            logger.debug("shutdown at exit failed", exc_info=True)
    for thread in list(_running):
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
    _live.clear()
    _running.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


class _Core:
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
            _running.discard(threading.current_thread())

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


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ClusterExecutor(Executor):
    """An Executor whose workers run anywhere and talk to it over ZeroMQ.

    Args:
        workers: an int (that many :class:`LocalWorkers`), a :class:`Launcher`, a list of
            launchers, or None (no workers yet; they join with ``impexec-worker``).
        address: where the broker binds, e.g. ``"tcp://0.0.0.0:5555"``; default: loopback
            on a free port.
        advertise: host name or address workers should dial, when it is not the bind
            address (default: the bind address, or this host's name for a wildcard bind).
        max_retries: attempts beyond the first for a task whose worker vanished.
        heartbeat_interval: seconds between heartbeats (both directions).
        heartbeat_timeout: seconds of silence after which a worker (or, seen from a
            worker, the broker) counts as gone.
        serializer: "cloudpickle" (default), "dill" or "pickle".
        initializer: callable run once in every worker process at its start.
        initargs: arguments of ``initializer``.
        key: the HMAC key (bytes or hex text, at least 16 bytes); default: 32 random bytes.
        encrypt: encrypt traffic with CurveZMQ.
        prefetch: tasks a worker may hold beyond the one it runs; default: adaptive
            (1 for long tasks, more for very short ones).
        max_contexts: contexts a worker keeps set up at once (least recently used evicted).
    """

    def __init__(
        self,
        workers: int | Launcher | Sequence[Launcher] | None = None,
        *,
        address: str | None = None,
        advertise: str | None = None,
        max_retries: int = 3,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 10.0,
        serializer: str = "cloudpickle",
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        key: bytes | str | None = None,
        encrypt: bool = False,
        prefetch: int | None = None,
        max_contexts: int = DEFAULT_MAX_CONTEXTS,
    ):
        if heartbeat_interval <= 0 or heartbeat_timeout <= heartbeat_interval:
            raise ValueError("need 0 < heartbeat_interval < heartbeat_timeout")
        if max_contexts < 1:
            raise ValueError("max_contexts must be >= 1")
        self._ser = get_serializer(serializer)
        self._fncache = FunctionCache(self._ser)
        self._digests = BlobDigests()
        self._launchers = self._make_launchers(workers)
        init_frames = None
        if initializer is not None:
            init_frames = [self._dumps_once(initializer, (initializer, tuple(initargs)),
                                            "the initializer")]
        self._key = parse_key(key) if key is not None else os.urandom(32)
        session = os.urandom(8)
        bind = address or "tcp://127.0.0.1:0"
        curve_secret = client_public = client_secret = server_public = None
        if encrypt:
            from ._security import curve_keypair

            server_public, curve_secret = curve_keypair()
            client_public, client_secret = curve_keypair()
        self._scheduler = Scheduler(max_retries=max_retries, heartbeat_timeout=heartbeat_timeout,
                                    prefetch=prefetch, max_contexts=max_contexts)
        self._ids = itertools.count(1)
        self._shutdown_lock = threading.Lock()
        self._core = _Core(self._scheduler, self._launchers)
        # a forked child shares this process's sockets but not its threads: it must not
        # use the executor (it would wait for ever on a broker that is not its own)
        self._pid = os.getpid()
        started: list[Launcher] = []
        try:
            extra_binds: list[str] = []
            if os.name == "posix" and any(launcher.local_socket for launcher in self._launchers):
                # Workers on this machine dial a Unix socket in the private directory:
                # ~20 µs faster per round trip than TCP loopback, and reachable by this
                # user only.
                ipc = f"ipc://{self._private_dir()}/broker.sock"
                extra_binds = [ipc] if len(ipc) < 100 else []
            self._broker = Broker(
                scheduler=self._scheduler, key=self._key, session=session, address=bind,
                heartbeat_interval=heartbeat_interval, heartbeat_timeout=heartbeat_timeout,
                welcome_extra={"max_contexts": max_contexts},
                initializer_frames=init_frames, initializer_serializer=self._ser.code,
                curve_secret=curve_secret, on_worker_joined=self._core.worker_joined,
                curve_clients=(client_public,) if client_public else (),
                extra_binds=extra_binds,
            )
            host = self._broker.address.split("://", 1)[1].rsplit(":", 1)[0]
            port = self._broker.address.rsplit(":", 1)[1]
            if advertise is None and host in ("0.0.0.0", "*", "[::]", "::"):  # noqa: S104 (a check, not a bind)
                advertise = socket.gethostname()
            dial = f"tcp://{advertise or host}:{port}"
            if not encrypt and not _is_loopback(host):
                logger.warning(
                    "impexec broker bound to %s without encrypt=True: anyone who can reach this "
                    "port can read the tasks and results in transit (they cannot inject work "
                    "without the key); use encrypt=True or an SSH tunnel on untrusted networks",
                    self._broker.address,
                )
            self._conn = ConnectionInfo(
                address=dial, key=self._key, session=session,
                server_key=server_public.decode() if server_public else None,
                client_public=client_public.decode() if client_public else None,
                client_secret=client_secret.decode() if client_secret else None,
            )
            self._core.broker = self._broker
            self._core.conn = self._conn
            if extra_binds:
                self._core.local_connection_file = dataclasses.replace(
                    self._conn, address=extra_binds[0]).write(self._private_dir() / "connection-local.json")
            self._broker.start()
            # the thread's target is the core, not this executor: see _Core
            self._launcher_thread = threading.Thread(target=self._core.watch_launchers,
                                                     name="impexec-launchers", daemon=True)
            for launcher in self._launchers:
                started.append(launcher)  # before start(): it may fail half-way
                launcher.start(_Host(self))
            self._launcher_thread.start()
            _running.add(self._launcher_thread)
        except BaseException:
            self._undo_init(started)
            raise
        _live.add(self)
        finalizer = weakref.finalize(self, _Core.collected, self._core)
        finalizer.atexit = False  # at exit, _python_exit shuts everything down

    # the shared state, under the names the executor's methods use
    @property
    def _shutdown(self) -> bool:
        return self._core.shutdown

    @property
    def _start_error(self) -> WorkerStartError | None:
        return self._core.start_error

    @property
    def _tmpdir(self) -> Path | None:
        return self._core.tmpdir

    def _undo_init(self, started: list[Launcher]) -> None:
        """Stop what a failing ``__init__`` had started: threads, sockets, files, workers."""
        broker = getattr(self, "_broker", None)
        if broker is not None:
            try:
                if not broker.is_alive() and not broker.stopped.is_set():
                    broker.start()  # its teardown closes the sockets and the context
                broker.stop_when_idle()  # nothing was submitted: it stops at once
                broker.join(STOP_TIMEOUT)
            except Exception:
                logger.debug("could not stop the broker of a failed executor", exc_info=True)
        for launcher in started:  # after the broker said goodbye to connected workers
            try:
                launcher.stop(STOP_TIMEOUT)
            except Exception:
                logger.exception("%r failed to stop its workers", launcher)
        self._remove_private_dir()

    def _private_dir(self) -> Path:
        return self._core.private_dir()

    def _remove_private_dir(self) -> None:
        self._core.remove_private_dir()

    @property
    def connection_file_path(self) -> Path:
        """The connection file in the private directory (written when first asked for)."""
        return self._core.connection_file_path()

    @property
    def local_connection_file_path(self) -> Path:
        """The connection file for workers on this machine (the Unix socket, if bound)."""
        return self._core.local_connection_file or self._core.connection_file_path()

    @staticmethod
    def _make_launchers(workers: Any) -> list[Launcher]:
        if workers is None:
            return []
        if isinstance(workers, bool):
            raise TypeError("workers must be an int, a Launcher, a list of launchers or None")
        if isinstance(workers, int):
            return [LocalWorkers(workers)] if workers else []
        if isinstance(workers, Launcher):
            return [workers]
        launchers = list(workers)
        for launcher in launchers:
            if not isinstance(launcher, Launcher):
                raise TypeError(f"not a Launcher: {launcher!r}")
        return launchers

    # -- serialization ---------------------------------------------------------------------
    def _dumps_once(self, fn: Any, obj: Any, label: str) -> bytes:
        """Pickle *obj* into one self-contained frame; errors name the culprit."""
        import io

        try:
            out = io.BytesIO()
            self._ser._pickler(out, protocol=5).dump(obj)
            return out.getvalue()
        except Exception as exc:
            raise serialization_error(self._ser, [(label, fn), (f"the arguments of {label}", obj)],
                                      exc) from exc

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"this ClusterExecutor belongs to process {self._pid}, not to this forked "
                "child: its broker runs in the parent. Create executors after forking, or "
                "a new one in the child")

    def _check_open(self) -> None:
        self._check_process()
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _global_shutdown:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self._broker.ended:
            raise RuntimeError("cannot schedule new futures: the run was ended by `impexec end`")
        if self._broker.crash is not None or self._broker.stopped.is_set():
            raise BrokenClusterError(f"the impexec broker thread died: {self._broker.crash!r}")
        if self._start_error is not None:
            raise self._start_error

    def _enqueue(self, task: Task) -> Future[Any]:
        with self._shutdown_lock:
            self._check_open()
            self._broker.submit_now(task)
        future: Future[Any] = task.future  # the scheduler keeps it opaque (Any)
        return future

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                ctx_id: int = 0) -> Future[Any]:
        self._check_open()
        ser = self._ser
        try:
            fn_frame = self._fncache.dumps(fn)
            blobs: dict[bytes, bytes] = {}
            if any(type(a) is bytes and BLOB_MIN <= len(a) <= BLOB_MAX
                   for a in (*args, *kwargs.values())):
                args = tuple(self._blob_ref(a, blobs) for a in args)
                kwargs = {k: self._blob_ref(v, blobs) for k, v in kwargs.items()}
            frames = ser.dumps((args, kwargs))
        except Exception as exc:
            named = [("the callable", fn), *((f"argument {i}", a) for i, a in enumerate(args)),
                     *((f"keyword argument {k!r}", v) for k, v in kwargs.items())]
            raise serialization_error(ser, named, exc) from exc
        fn_part, flags = self._fn_part(fn_frame, blobs)
        return self._enqueue(Task(next(self._ids), [fn_part, *frames], Future(), ctx_id,
                                  flags=flags, ser=ser.code, blobs=tuple(blobs.items())))

    def _blob_ref(self, value: Any, blobs: dict[bytes, bytes]) -> Any:
        """A large ``bytes`` argument travels once per worker: send a reference instead."""
        if type(value) is bytes and BLOB_MIN <= len(value) <= BLOB_MAX:
            digest = self._digests.digest(value)
            blobs[digest] = value
            return BlobRef(digest)
        return value

    def _fn_part(self, fn_frame: bytes, blobs: dict[bytes, bytes]) -> tuple[bytes, int]:
        """The function frame, or the digest of it when it is large (sent once per worker)."""
        if not BLOB_MIN <= len(fn_frame) <= BLOB_MAX:
            return fn_frame, 0
        digest = self._digests.digest(fn_frame)
        blobs[digest] = fn_frame
        return digest, Flag.FN_BLOB

    def _submit_chunk(self, fn: Callable[..., Any], fn_frame: bytes, chunk: list[Any],
                      ctx_id: int = 0, bare: bool = False, item_errors: bool = False) -> Future[Any]:
        """One map chunk: a list of argument tuples, or with *bare* of single arguments."""
        self._check_open()
        ser = self._ser
        try:
            frames = ser.dumps(chunk)
        except Exception as exc:
            what = "argument" if bare else "arguments"
            named = [(f"the {what} {args!r:.60}", args) for args in chunk]
            raise serialization_error(ser, named, exc) from exc
        blobs: dict[bytes, bytes] = {}
        fn_part, flags = self._fn_part(fn_frame, blobs)
        if bare:
            flags |= Flag.BARE
        if item_errors:
            flags |= Flag.ITEM_ERRORS
        return self._enqueue(Task(next(self._ids), [fn_part, *frames], Future(), ctx_id,
                                  flags=Flag.CHUNK | flags, ser=ser.code, items=len(chunk),
                                  blobs=tuple(blobs.items())))

    # -- the Executor interface ------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` on a worker and return its Future.

        Raises:
            RuntimeError: after :meth:`shutdown`.
            SerializationError: ``fn`` or an argument cannot be serialized (named).
            WorkerStartError: no worker could be started (the launchers gave up).
        """
        return self._submit(fn, args, kwargs)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int | str = 1, buffersize: int | None = None,
            return_exceptions: bool = False) -> Iterator[Any]:
        """Return an iterator of ``fn`` over the inputs, in input order.

        Args:
            fn: the callable.
            *iterables: its arguments, consumed lazily.
            timeout: seconds from this call after which ``next()`` raises TimeoutError.
            chunksize: calls per dispatched task: an int (1 = fully dynamic), ``"static"``
                (one chunk per worker; the inputs need a length) or ``"auto"``.
            buffersize: chunks in flight or read ahead at most (default: a few per worker,
                at least 64), so huge or infinite inputs run in bounded memory.
            return_exceptions: yield a call's exception in its place instead of raising
                it (which ends the map), and go on with the other calls, also those of
                the same chunk (as ``asyncio.gather(..., return_exceptions=True)``). A
                chunk that fails as a whole (its worker lost ``max_retries`` times, its
                context's setup raised, cancelled) yields its exception for each item.
                ``timeout`` still raises TimeoutError from ``next()``.
        """
        return self._map(fn, iterables, timeout, chunksize, buffersize, None, ordered=True,
                         return_exceptions=return_exceptions)

    def map_unordered(self, fn: Callable[..., Any], *iterables: Iterable[Any], chunksize: int | str = 1,
                      buffersize: int | None = None, timeout: float | None = None,
                      return_exceptions: bool = False) -> Iterator[Any]:
        """Like :meth:`map`, but yield results in the order they complete."""
        return self._map(fn, iterables, timeout, chunksize, buffersize, None, ordered=False,
                         return_exceptions=return_exceptions)

    def _map(self, fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...], timeout: float | None,
             chunksize: int | str, buffersize: int | None, ctx: Context | None, *,
             ordered: bool, return_exceptions: bool = False) -> Iterator[Any]:
        check_buffersize(buffersize)
        self._check_open()
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        n_workers = self.worker_count()
        size = plan_chunksize(chunksize, input_length(iterables), n_workers)
        try:
            fn_frame = self._fncache.dumps(fn)
        except Exception as exc:
            raise serialization_error(self._ser, [("the callable", fn)], exc) from exc
        submit_chunk = (ctx._submit_chunk if ctx is not None else self._submit_chunk)
        bufsize = buffersize or default_buffersize(n_workers)
        bare = len(iterables) == 1
        source = bare_chunks(iterables[0], size) if bare else chunks(iterables, size)
        run = _ordered_iter if ordered else _unordered_iter
        item_errors = bool(return_exceptions)
        return run(lambda chunk: submit_chunk(fn, fn_frame, chunk, bare=bare, item_errors=item_errors),
                   source, bufsize, timeout, item_errors)

    def context(self, setup: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Context:
        """Return a :class:`Context`: an Executor whose tasks get ``setup(*args, **kwargs)``.

        The setup runs at most once per worker, lazily, and its value is passed as the
        first argument of each of the context's tasks on that worker.
        """
        self._check_open()
        return Context(self, setup, args, kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; finish (or cancel) the queued ones; stop the workers.

        Args:
            wait: block until every pending future is done and the workers are stopped.
            cancel_futures: cancel the tasks not yet sent to a worker.
        """
        with self._shutdown_lock:
            first = not self._shutdown
            self._core.shutdown = True
        broker = self._broker
        if cancel_futures and not broker.stopped.is_set():
            broker.enqueue(broker.cancel_pending)
        if first:
            broker.stop_when_idle()
        if wait:
            broker.join()
            self._launcher_thread.join()
            _live.discard(self)
        # without wait, it stays listed (weakly) and its launcher thread in _running:
        # the exit hook waits for its work and its workers

    # -- introspection -----------------------------------------------------------------------
    def statistics(self) -> Statistics:
        """A snapshot: workers, queued, running, done, failed, resubmitted (and more)."""
        self._check_process()
        if self._broker.stopped.is_set():
            return self._scheduler.statistics()
        return self._broker.statistics()

    def worker_count(self) -> int:
        """Workers connected now, or, before any connected, the number requested (≥ 1)."""
        n = len(self._scheduler.workers)
        if n:
            return n
        return max(1, sum(launcher.n for launcher in self._launchers))

    @property
    def max_workers(self) -> int:
        """The size of the pool, the number of tasks this executor can run at once (≥ 1).

        The number of workers the launchers keep running, or the number connected when
        more have joined (workers started with ``impexec-worker``). Unlike
        :meth:`worker_count` it does not shrink while launched workers are still
        starting: a library that sizes its queue of tasks by it keeps every worker busy
        once they are all there. Also readable as ``_max_workers``, the attribute of
        the standard library's pools that dask and others read.
        """
        connected = len(self._scheduler.workers)
        target = sum(launcher.n for launcher in self._launchers)
        return max(1, connected, target)

    @property
    def _max_workers(self) -> int:
        # the stdlib pools' attribute: dask's Executor scheduler and its "processes"
        # scheduler with pool= read it to decide how many tasks to keep in flight
        return self.max_workers

    def connection_file(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write the connection file (mode 0600) for workers and ``impexec status``.

        Returns:
            Its path. Without ``path``, a file in a private temporary directory that
            lives as long as the executor.
        """
        if path is None:
            return str(self.connection_file_path)
        return str(self._conn.write(path))

    @property
    def address(self) -> str:
        """The address workers dial (``tcp://host:port``)."""
        return self._conn.address

    @property
    def launchers(self) -> list[Launcher]:
        return list(self._launchers)

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else f"{len(self._scheduler.workers)} workers"
        return f"<ClusterExecutor {self.address} {state}>"


def _ordered_iter(*args: Any) -> Iterator[Any]:
    return ordered(*args)


def _unordered_iter(*args: Any) -> Iterator[Any]:
    return unordered(*args)


class _Host:
    """The executor as seen by one launcher (see launchers.base.LauncherHost)."""

    def __init__(self, ex: ClusterExecutor):
        self._core = ex._core  # not the executor: launchers must not keep it alive
        self._broker = ex._broker
        self.connection = ex._conn

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

    def worker_exited(self, tag: str, why: str) -> None:
        broker = self._broker
        broker.enqueue(lambda: broker.tag_exited(tag, why))

    @property
    def shutting_down(self) -> bool:
        # shut down AND no task open: until the last task is done, a worker that dies
        # is reported and replaced, or a task that kills its workers would never reach
        # its retry limit and shutdown(wait=True) would never return
        return self._core.shutdown and self._core.scheduler.idle()
