"""Task functions of the network-fault tests (workers import this module by name).

Tasks that record their runs append one line per run to a file of their own: appends of
a few bytes with O_APPEND are atomic and reach the page cache at once, so a worker killed
right after still leaves its line, and the test can count how often each task really ran.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def square(x: int) -> int:
    return x * x


def _append(path: str | Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def record(i: int, logdir: str, seconds: float = 0.0) -> tuple[int, int]:
    """Note this run in ``logdir/<i>`` (one line: this process's pid); return (i², pid)."""
    _append(os.path.join(logdir, str(i)), f"{os.getpid()}\n")
    if seconds:
        time.sleep(seconds)
    return i * i, os.getpid()


def started_then_sleep(i: int, logdir: str, seconds: float) -> tuple[int, int]:
    """Like :func:`record`, and touch ``logdir/<i>.started`` first, so the test knows it runs."""
    _append(os.path.join(logdir, f"{i}.started"), f"{os.getpid()}\n")
    return record(i, logdir, seconds)


def runs(logdir: str | Path, i: int) -> list[int]:
    """The pids that ran task ``i`` (test side)."""
    path = Path(logdir, str(i))
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().split()]
