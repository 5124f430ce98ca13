"""The exception tree of impexec.

::

    ImpexecError(Exception)
    ├── WorkerLostError        a task's worker vanished on each of its max_retries + 1 attempts
    ├── WorkerStartError       launched workers could not start (carries their output's tail)
    ├── SerializationError     also pickle.PicklingError; submit could not serialize an object
    └── BrokenClusterError     also concurrent.futures.BrokenExecutor; the broker thread died

``ProtocolError`` is internal: malformed or unauthenticated frames are dropped and logged,
never raised to users.
"""

from __future__ import annotations

import pickle
from concurrent.futures import BrokenExecutor
from typing import Any

__all__ = [
    "BrokenClusterError",
    "ImpexecError",
    "ProtocolError",
    "SerializationError",
    "WorkerLostError",
    "WorkerStartError",
]


class ImpexecError(Exception):
    """Base class of every error impexec raises on its own account."""


class WorkerLostError(ImpexecError):
    """Raised when a task's worker vanished on every one of its attempts.

    The task probably kills its workers (a segfault, an ``os._exit``, memory exhaustion);
    it was attempted ``max_retries + 1`` times. ``attempts`` holds that number and
    ``workers`` describes the workers it was lost on.
    """

    def __init__(self, message: str, attempts: int = 0, workers: tuple[str, ...] = ()):
        super().__init__(message)
        self.attempts = attempts
        self.workers = workers

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.args[0], self.attempts, self.workers)


class WorkerStartError(ImpexecError):
    """Raised when launched workers cannot start.

    Every attempt exited, or timed out, before connecting to the broker. ``output``
    holds the tail of the failed worker's stderr (or its job's output file).
    """

    def __init__(self, message: str, output: str = ""):
        text = message if not output else f"{message}\n--- worker output (tail) ---\n{output}"
        super().__init__(text)
        self.output = output

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_start_error, (self.args[0], self.output)


def _rebuild_start_error(text: str, output: str) -> WorkerStartError:
    err = WorkerStartError("", "")
    err.args = (text,)
    err.output = output
    return err


class SerializationError(ImpexecError, pickle.PicklingError):
    """Raised when an object cannot be serialized; the message names the object.

    ``submit`` raises it for a callable or argument; a future gets it when its task's
    result (or exception) could not be serialized on the worker.
    """


class BrokenClusterError(ImpexecError, BrokenExecutor):
    """Raised when the executor can no longer work because its broker thread died."""


class ProtocolError(ImpexecError):
    """Internal: a frame was malformed, unauthenticated or from another session."""
