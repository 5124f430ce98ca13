"""Task functions of parameter sweeps (tests/integration/test_sweep.py); workers import them."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any


class Unpicklable(Exception):
    """An exception carrying a lock: it cannot be sent back as it is."""

    def __init__(self, x: int):
        super().__init__(f"unpicklable at {x}")
        self.lock = threading.Lock()


def evaluate(x: int) -> int:
    """x squared, except that every x with x % 7 == 3 raises (like a diverging fit)."""
    if x % 7 == 3:
        raise ValueError(f"no fit for {x}")
    return x * x


def evaluate_pair(x: int, y: int) -> int:
    return evaluate(x) + y


def with_model(model: dict[str, int], x: int) -> int:
    return evaluate(x) * model["scale"]


def make_model(scale: int, fail: bool = False) -> dict[str, int]:
    if fail:
        raise RuntimeError("the model did not load")
    return {"scale": scale}


def unpicklable_error_at(x: int, bad: int) -> int:
    if x == bad:
        raise Unpicklable(x)
    return x


def kill_at(x: int, bad: int) -> int:
    """The worker dies at *bad* (every time: the chunk runs out of retries)."""
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def identity(x: Any) -> Any:
    return x


def slow_evaluate(x: int) -> int:
    """evaluate(), slow enough for a live view to see the work held by workers."""
    import time

    time.sleep(0.05)
    return evaluate(x)
