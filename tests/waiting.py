"""The one way tests wait for something to become true: polling with a deadline.

Every wait in a test has a timeout, and a wait that runs out says what it waited for, so a
failure reads "timed out after 30 s waiting for 2 workers to join" instead of a bare assert
on the line after a loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Seconds between two looks: short next to the heartbeats tests use (50 ms), long enough
#: not to keep a shared CPU busy.
INTERVAL = 0.01


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = INTERVAL) -> T:
    """Call *predicate* until it returns something true, and return that.

    Raises:
        AssertionError: *predicate* stayed false for *timeout* seconds; the message names
            *what* was awaited. (The predicate is asked once more at the deadline, so a
            condition that became true while the last sleep ran is not reported as late.)
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
