"""Task functions that workers import by name (tests/ is on the workers' PYTHONPATH).

Functions defined here pickle by reference, the way user code in an installed module
does; the crash helpers and the objects that fail at (un)pickling follow the cases of
CPython's test_concurrent_futures and loky's test_reusable_executor.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any


def add(a: Any, b: Any) -> Any:
    return a + b


def square(x: Any) -> Any:
    return x * x


def identity(x: Any) -> Any:
    return x


def pid() -> int:
    return os.getpid()


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def raise_value_error(message: str = "boom") -> None:
    raise ValueError(message)


def raise_chained() -> None:
    try:
        raise KeyError("inner")
    except KeyError as exc:
        raise RuntimeError("outer") from exc


def write_marker(path: str, text: str = "ran") -> str:
    """Prove a task ran: it leaves a file behind."""
    Path(path).write_text(text)
    return text


def sleep_then_write_marker(seconds: float, path: str) -> str:
    time.sleep(seconds)
    return write_marker(path)


def wait_for_file(path: str, timeout: float = 30.0) -> bool:
    """Block until *path* exists (a test holds a worker busy, then releases it)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def announce_then_wait(started: str, release: str, timeout: float = 30.0) -> bool:
    """Create *started*, then block until *release* exists: holds a worker, visibly."""
    Path(started).touch()
    return wait_for_file(release, timeout)


def nbytes(array: Any) -> int:
    return int(array.nbytes)


# -- objects that fail at pickling time (on either side) -------------------------------
def _raise_at_unpickle(message: str) -> Any:
    raise RuntimeError(message)


def _exit_at_unpickle() -> Any:
    os._exit(1)


class ErrorAtPickle:
    """Fails to pickle (with a plain exception, not a PicklingError)."""

    def __reduce__(self) -> Any:
        raise RuntimeError("ErrorAtPickle cannot be pickled")


class ErrorAtUnpickle:
    """Pickles fine; raises when rebuilt on the other side."""

    def __reduce__(self) -> Any:
        return _raise_at_unpickle, ("ErrorAtUnpickle cannot be unpickled",)


class CrashAtUnpickle:
    """Pickles fine; the process that rebuilds it exits at once."""

    def __reduce__(self) -> Any:
        return _exit_at_unpickle, ()


class UnpicklableError(Exception):
    """An exception carrying something that cannot be pickled."""

    def __init__(self, message: str = "unpicklable error"):
        super().__init__(message)
        self.lock = threading.Lock()


def return_unpicklable() -> Any:
    return threading.Lock()


def raise_unpicklable() -> None:
    raise UnpicklableError()


def return_error_at_pickle() -> ErrorAtPickle:
    return ErrorAtPickle()


def return_error_at_unpickle() -> ErrorAtUnpickle:
    return ErrorAtUnpickle()


# -- crash helpers: the worker process dies --------------------------------------------
def exit_now(code: int = 1) -> None:
    os._exit(code)


def segfault() -> None:
    """Die of SIGSEGV (faulthandler prints the stack first when it is enabled)."""
    import faulthandler

    if hasattr(faulthandler, "_sigsegv"):
        faulthandler._sigsegv()
    ctypes.string_at(0)  # reading address 0 segfaults where _sigsegv is missing


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def hang(seconds: float = 3600.0) -> None:
    """Hold the worker (bounded, so a broken test cannot leave it forever)."""
    time.sleep(seconds)


def exit_if_first(marker: str, code: int = 1) -> str:
    """Exit the first time (no marker yet), succeed on a retry (worth resubmitting)."""
    if not os.path.exists(marker):
        Path(marker).write_text("died once")
        os._exit(code)
    return "survived"
