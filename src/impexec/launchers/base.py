"""Launcher: the one interface every way of starting workers implements.

The executor calls :meth:`Launcher.start` once with a :class:`LauncherHost`, then
:meth:`Launcher.poll` every ``poll_interval`` seconds from its launcher thread (never from
the broker thread, so a slow ``squeue`` cannot stall dispatch), and :meth:`Launcher.stop`
at shutdown. A launcher reports through the host:

* ``host.worker_exited(tag, why)``: a worker that had connected is gone (its tasks are
  resubmitted at once, before the heartbeat timeout would notice);
* ``self.start_failed(tag, message, output)``: a worker exited, or timed out, before it
  connected; ``output`` is the tail of its stderr or job output.

Workers are told apart by a *tag* the launcher puts on their command line; the broker
records the tag each worker sends in its READY message.
"""

from __future__ import annotations

import abc
import shlex
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .._connection import ConnectionInfo
from .._errors import WorkerStartError
from ._process import worker_argv

#: Seconds a started worker may take to connect before it counts as failed to start.
DEFAULT_START_TIMEOUT = 60.0
#: Restart backoff after a failed start: first delay, factor, ceiling (seconds).
BACKOFF_FIRST, BACKOFF_FACTOR, BACKOFF_MAX = 0.2, 2.0, 30.0
#: Characters of a failed worker's output kept for WorkerStartError.
OUTPUT_TAIL = 4000


class LauncherHost(Protocol):
    """What the executor offers a launcher.

    The executor's host also has ``attach_pipe(sock)``: the client's end of a socket
    pair whose other end a worker process on this machine inherits (see
    :class:`~impexec.launchers.LocalWorkers`). It is not part of this protocol: a
    launcher that uses it asks for it with ``getattr``, and a host without it gets
    workers that dial the broker's socket.
    """

    connection: ConnectionInfo

    @property
    def connection_file(self) -> Path:
        """The connection file a worker started with ``--connect FILE`` reads."""

    def is_connected(self, tag: str) -> bool: ...
    def ever_connected(self, tag: str) -> bool: ...
    def worker_exited(self, tag: str, why: str) -> None: ...
    @property
    def shutting_down(self) -> bool:
        """Shut down with no task left open: workers that exit need no replacement.

        While a shut-down executor still has open tasks, this stays False: dead workers
        are reported and replaced, so every task finishes or reaches its retry limit.
        """


@dataclass
class StartFailure:
    tag: str
    message: str
    output: str
    when: float = field(default_factory=time.monotonic)


class Launcher(abc.ABC):
    """Starts ``n`` workers somewhere and keeps them there.

    Args:
        n: number of workers to keep running.
        python: the command that starts a suitable interpreter on the worker's machine, as
            a string (split like a shell would) or a list; default: this interpreter.
        env: variables added to the workers' inherited environment.
        start_timeout: seconds a worker may take to connect before it counts as failed.
    """

    poll_interval = 0.1
    #: True when its workers run on the executor's machine, which then binds a Unix
    #: socket in its private directory for them (``host.local_connection_file``).
    local_socket = False

    def __init__(
        self,
        n: int,
        *,
        python: str | Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"the number of workers must be a non-negative int, not {n!r}")
        self.n = n
        if python is None:
            self.python: list[str] = [sys.executable]
        elif isinstance(python, str):
            self.python = shlex.split(python)
        else:
            self.python = list(python)
        if not self.python:
            raise ValueError("python must name an interpreter")
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self.host: LauncherHost | None = None
        self._lock = threading.Lock()
        self.failures: list[StartFailure] = []
        self._consecutive_failures = 0

    # -- what a backend implements -------------------------------------------------------
    @abc.abstractmethod
    def start(self, host: LauncherHost) -> None:
        """Start the workers (without waiting for them to connect)."""

    @abc.abstractmethod
    def poll(self) -> None:
        """Check the workers; report exits and start failures; replace dead workers."""

    @abc.abstractmethod
    def stop(self, timeout: float = 10.0) -> None:
        """Stop every worker this launcher started (they were already told to leave)."""

    # -- shared helpers ------------------------------------------------------------------
    def worker_args(self, tag: str, connection: str | None = None) -> list[str]:
        """Arguments after the interpreter: ``-m impexec worker --connect FILE --tag TAG``."""
        assert self.host is not None
        target = connection or str(self.host.connection_file)
        return worker_argv([], target, tag)

    def worker_command(self, tag: str, connection: str | None = None) -> list[str]:
        return [*self.python, *self.worker_args(tag, connection)]

    def start_failed(self, tag: str, message: str, output: str = "") -> None:
        with self._lock:
            self.failures.append(StartFailure(tag, message, output[-OUTPUT_TAIL:]))
            del self.failures[:-20]
            self._consecutive_failures += 1

    def started_ok(self) -> None:
        with self._lock:
            self._consecutive_failures = 0

    @property
    def failing(self) -> bool:
        """Every recent attempt failed (at least ``n`` failures with no success since)."""
        return self.n > 0 and self._consecutive_failures >= self.n

    def start_error(self) -> WorkerStartError | None:
        with self._lock:
            if not self.failures:
                return None
            f = self.failures[-1]
        return WorkerStartError(f"{type(self).__name__}: {f.message}", f.output)

    def backoff(self) -> float:
        k = max(0, self._consecutive_failures - 1)
        return min(BACKOFF_MAX, BACKOFF_FIRST * BACKOFF_FACTOR**k)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.n})"


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def tail(text: str | bytes, limit: int = OUTPUT_TAIL) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text[-limit:]
