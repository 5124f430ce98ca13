"""Tasks that meet at a barrier made of files: a cross-process count of running tasks."""

from __future__ import annotations

import os
import time
import uuid


def arrive_and_wait(directory: str, parties: int, timeout: float = 30.0) -> int:
    """Announce this task in *directory*, then wait until *parties* tasks have.

    Returns how many had arrived when it stopped waiting: *parties* when that many ran at
    once, fewer when the caller never had that many running together (then it waits the
    whole *timeout*).
    """
    mine = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex}")
    with open(mine, "w"):
        pass
    deadline = time.monotonic() + timeout
    while True:
        arrived = len(os.listdir(directory))
        if arrived >= parties or time.monotonic() > deadline:
            return arrived
        time.sleep(0.01)
