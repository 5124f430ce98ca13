"""Setups and tasks for the context tests; workers import them by name.

Every setup appends one line ``<context name> <pid>`` to a log file (``O_APPEND`` writes
of one short line do not interleave between processes), so a test counts how often each
worker ran each setup by reading the file. A :class:`Model` writes a marker file when it
is garbage collected on the worker, which shows that a worker really dropped (or
evicted) its cached value.
"""

from __future__ import annotations

import collections
import os
import time
import weakref
from pathlib import Path
from typing import Any

SETUP_LOG = "setups.log"
INIT_LOG = "init.log"

_initialized: tuple[Any, ...] | None = None


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _mark_dropped(log_dir: str, name: str, pid: int) -> None:
    Path(log_dir, f"dropped-{name}-{pid}").touch()


class Model:
    """A setup value; leaves ``dropped-<name>-<pid>`` in *log_dir* when collected."""

    def __init__(self, name: str, log_dir: str):
        self.name = name
        self.pid = os.getpid()
        weakref.finalize(self, _mark_dropped, log_dir, name, self.pid)


def setup(log_dir: str, name: str, *, delay: float = 0.0, fail: bool = False) -> Model:
    """Log the call, then build a Model (or raise ValueError when *fail*)."""
    _append(Path(log_dir, SETUP_LOG), f"{name} {os.getpid()}")
    if delay:
        time.sleep(delay)
    if fail:
        raise ValueError(f"setup of {name} failed on purpose")
    return Model(name, log_dir)


def setup_counts(log_dir: str | Path) -> collections.Counter[tuple[str, int]]:
    """How many times each (context name, worker pid) ran its setup."""
    path = Path(log_dir, SETUP_LOG)
    if not path.exists():
        return collections.Counter()
    pairs = (line.split() for line in path.read_text().splitlines() if line)
    return collections.Counter((name, int(pid)) for name, pid in pairs)


def whoami(model: Model, x: Any = None, *, sleep: float = 0.0) -> tuple[str, int, int, Any]:
    """(context name, pid that built the model, pid running the task, x)."""
    if sleep:
        time.sleep(sleep)
    return model.name, model.pid, os.getpid(), x


def scaled(model: Model, x: int, factor: int = 1) -> tuple[str, int, int]:
    return model.name, x * factor, os.getpid()


def plain_pid() -> int:
    return os.getpid()


def initializer(log_dir: str, *values: Any) -> None:
    """Executor initializer: log the call and remember *values* for :func:`initialized`."""
    global _initialized
    _append(Path(log_dir, INIT_LOG), str(os.getpid()))
    _initialized = values


def initialized() -> tuple[int, tuple[Any, ...] | None]:
    return os.getpid(), _initialized


def init_counts(log_dir: str | Path) -> collections.Counter[int]:
    path = Path(log_dir, INIT_LOG)
    if not path.exists():
        return collections.Counter()
    return collections.Counter(int(line) for line in path.read_text().split())


def failing_initializer() -> None:
    raise RuntimeError("initializer failed on purpose")


def crashing_setup() -> None:
    """A setup that kills its worker process (a segfault in a model's C++ code, say)."""
    os._exit(17)
