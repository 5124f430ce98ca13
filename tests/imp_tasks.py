"""Setup and task callables of the IMP.parallel compatibility tests (workers import it).

Like IMP.parallel's own examples, these live in a module of their own so the workers can
import them by name; tests put tests/ on the workers' PYTHONPATH.
"""

from __future__ import annotations

import os
import uuid


def _mark(kind: str) -> None:
    directory = os.environ.get("IMP_TASKS_MARKERS")
    if directory:
        name = f"{kind}-{os.getpid()}-{uuid.uuid4().hex}"
        with open(os.path.join(directory, name), "w"):
            pass


def setup():
    """A 'model': a harmonic restraint (force constant, rest length) and a particle."""
    _mark("setup")
    restraint = {"k": 2.0, "x0": 1.0}
    particle = {"x": 0.0}
    return restraint, particle


class Task:
    """Place the particle at ``dist`` and return (dist, score), like IMP's tasks.py."""

    def __init__(self, dist: float):
        self.dist = dist

    def __call__(self, restraint: dict, particle: dict) -> tuple[float, float]:
        _mark("task")
        particle["x"] = self.dist
        return self.dist, 0.5 * restraint["k"] * (particle["x"] - restraint["x0"]) ** 2


def no_arguments() -> int:
    return os.getpid()


def one_value() -> list:
    return [1, 2, 3]


def returns_none() -> None:
    _mark("setup")


def returns_number() -> int:
    return 41


def add_one(value: int) -> int:
    return value + 1


def count_arguments(*args) -> int:
    return len(args)


def fails(*args) -> None:
    raise ValueError("task failed on purpose")


def failing_setup():
    raise KeyError("no such model")
