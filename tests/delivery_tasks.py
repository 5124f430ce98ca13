"""Task functions of the delivery tests (imported by worker processes)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


class ExitsWhenUnpickled:
    """A value whose unpickling calls ``sys.exit``: a BaseException on the client."""

    def __reduce__(self):
        return (sys.exit, ("unpickled on the client",))


def exit_when_unpickled(_x=None):
    return ExitsWhenUnpickled()


def started_then_sleep(flag: str, seconds: float) -> int:
    """Say "started" through a file, then sleep: the test waits for the file, not a time."""
    Path(flag).touch()
    time.sleep(seconds)
    return os.getpid()


def mark(directory: str, name: str) -> int:
    Path(directory, name).touch()
    return os.getpid()


def wait_for_marks(directory: str, n: int, timeout: float) -> int:
    """Block until *n* files exist in *directory* (or *timeout*); return how many there are.

    Used as a long task that can only finish early if tasks queued behind it on its
    worker are given back and run elsewhere meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        count = len(os.listdir(directory))
        if count >= n or time.monotonic() >= deadline:
            return count
        time.sleep(0.01)
