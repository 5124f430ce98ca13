"""Tasks for the repeated-payload (blob) tests; imported by workers."""

from __future__ import annotations

import os

_seen: list[object] = []


def same_object_as_last_call(data: bytes, i: int) -> tuple[int, int, bool, int]:
    """(pid, how many calls this worker ran before, whether *data* is the very
    object of this worker's previous call, len(data) + i).

    The call count gives each worker's order of execution, which is not the order
    of submission: a task given back by one worker (RECALL) runs later elsewhere.
    """
    calls = len(_seen)
    same = bool(_seen) and _seen[-1] is data
    _seen.append(data)  # keep it alive, so identity cannot be a recycled address
    return os.getpid(), calls, same, len(data) + i


def length_plus(data: bytes, i: int, *, extra: bytes = b"") -> int:
    return len(data) + len(extra) + i
