"""``impexec worker --processes N``: N worker processes on this machine, crashed ones replaced.

Children get the connection on their stdin (never on their command line) and exit when it
closes, so they do not outlive the supervisor. A child that left on purpose, or found
nothing to serve, is not replaced; one that crashed is, after a backoff that grows while
its replacements keep failing to start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from ._connection import ConnectionInfo, remove_orphaned_private_dir
from ._worker import EXIT_BROKER_GONE, EXIT_INIT_FAILED, EXIT_NO_BROKER, EXIT_OK
from .launchers._process import WorkerProcess, worker_argv
from .launchers.base import BACKOFF_FACTOR, BACKOFF_FIRST, BACKOFF_MAX

logger = logging.getLogger("impexec")

#: Seconds after which a supervised worker process counts as having started well: if it
#: dies later, its replacement starts without the backoff of repeated start failures.
STABLE_S = 30.0
#: Exit codes of a child that must not be replaced: it left on purpose, or there is
#: nothing to serve (the broker is gone, never answered, or the initializer failed).
_FINAL = (EXIT_OK, EXIT_BROKER_GONE, EXIT_NO_BROKER, EXIT_INIT_FAILED)


class Supervisor:
    """The child processes of one ``impexec worker --processes N``, by slot 0..N-1.

    Args:
        args: the parsed ``impexec worker`` command line.
        conn: the executor's connection (handed to each child on its stdin).
        connection_file: the connection file named on the command line, if any (its
            private directory is removed if the executor died and left it behind).
        broker_alive: asks the broker whether it still runs (a crashed child whose
            executor shut down has nothing to rejoin).
    """

    def __init__(
        self,
        args: argparse.Namespace,
        conn: ConnectionInfo,
        connection_file: str | None,
        broker_alive: Callable[[], bool],
    ) -> None:
        self.args = args
        self.connection_file = connection_file
        self.broker_alive = broker_alive
        self.line = (json.dumps(conn.to_json()) + "\n").encode()
        self.deadline = time.monotonic() + args.runtime if args.runtime else None
        self.tag = args.tag or f"{socket.gethostname()}-{os.getpid()}"
        self.procs: dict[int, WorkerProcess] = {}
        slots = range(args.processes)
        self.generation = dict.fromkeys(slots, 0)
        self.backoff = dict.fromkeys(slots, 0.0)
        self.started = dict.fromkeys(slots, 0.0)
        self.restart_at: dict[int, float] = {}  # slot → when its replacement starts
        self.stop = False  # SIGTERM
        self.broker_gone = False  # the last child to exit found the broker gone
        self.code = 0

    def run(self) -> int:
        """Start the children, watch them until all have left; the exit code."""
        signal.signal(signal.SIGTERM, self._on_term)
        for i in range(self.args.processes):
            self._spawn(i)
        try:
            while (self.procs or self.restart_at) and not self.stop:
                time.sleep(0.2)
                self._restart_due()
                self._reap()
        except KeyboardInterrupt:
            self.code = 130
        finally:
            self._close()
        return self.code

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stop = True

    def _spawn(self, i: int) -> None:
        self.generation[i] += 1
        options = ["--connect-timeout", str(self.args.connect_timeout), *["-v"] * self.args.verbose]
        if self.deadline is not None:
            options += ["--runtime", f"{max(1.0, self.deadline - time.monotonic()):.3f}"]
        tag = f"{self.tag}-{i}-{self.generation[i]}"
        argv = worker_argv([sys.executable], "-", tag, exit_with_stdin=True, options=options)
        # its stderr is ours (not read): the children's messages reach the terminal
        self.procs[i] = WorkerProcess(argv, stdin=self.line, capture_stderr=False, name=f"impexec-child-{i}")
        self.started[i] = time.monotonic()

    def _restart_due(self) -> None:
        for i, at in list(self.restart_at.items()):
            if time.monotonic() >= at:
                del self.restart_at[i]
                self._spawn(i)

    def _reap(self) -> None:
        """Collect the children that exited; schedule the replacement of crashed ones."""
        for i, p in list(self.procs.items()):
            rc = p.poll()
            if rc is None:
                continue
            del self.procs[i]
            p.close_stdin()
            self.broker_gone = rc == EXIT_BROKER_GONE
            if rc == EXIT_INIT_FAILED:
                self.code = rc
            if self._to_replace(rc):
                self._schedule_restart(i, rc)

    def _to_replace(self, rc: int) -> bool:
        if rc in _FINAL:
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        return self.broker_alive()  # dismissed because the executor shut down: nothing to rejoin

    def _schedule_restart(self, i: int, rc: int) -> None:
        if time.monotonic() - self.started[i] > STABLE_S:
            self.backoff[i] = 0.0  # it was serving: a crash, not a failure to start
        self.backoff[i] = min(BACKOFF_MAX, max(BACKOFF_FIRST, self.backoff[i] * BACKOFF_FACTOR))
        logger.warning("worker process %d exited with %s; replacing it in %.1f s", i, rc, self.backoff[i])
        # not a sleep here: the others are watched and SIGTERM obeyed meanwhile
        self.restart_at[i] = time.monotonic() + self.backoff[i]

    def _close(self) -> None:
        """End the children still running (they exit when their stdin closes)."""
        if self.broker_gone and not self.procs and self.connection_file is not None:
            # the executor was killed: its leftovers on this machine
            remove_orphaned_private_dir(self.connection_file)
        for p in self.procs.values():
            p.close_stdin()  # the child exits at once (--exit-with-stdin)
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
