"""The worker's blob cache: a payload sent again while held keeps the object it has.

In-process, on the worker's own cache code (no sockets: what is tested is how the cache
takes the blob table of a TASK; test_blobs.py covers the path end to end).
"""

from __future__ import annotations

import hashlib
import os

from impexec._connection import ConnectionInfo
from impexec._protocol import Kind, Message
from impexec._scheduler import MAX_BLOBS
from impexec._worker import Worker


def _task(*blobs: tuple[bytes, bytes | None]) -> Message:
    """A TASK whose frames are the blob table, then the blobs it carries."""
    table = b"".join(d + (b"\1" if data is not None else b"\0") for d, data in blobs)
    carried = [data for _, data in blobs if data is not None]
    return Message(Kind.TASK, frames=[table, *carried, b"after"])


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _worker() -> Worker:
    return Worker(ConnectionInfo(address="tcp://127.0.0.1:1", key=b"k" * 32))


def test_a_blob_sent_again_while_held_keeps_the_cached_object() -> None:
    # after a RECALL the broker forgets what the worker holds and sends the blob again:
    # the task must still see the object earlier tasks saw (same identity, no copy kept)
    w = _worker()
    data = os.urandom(100)
    d = _digest(data)
    assert w._take_blobs(_task((d, data)), 0) == 2
    held = w._blob(d)
    assert held == data
    again = bytes(bytearray(data))  # equal bytes, another object
    assert w._take_blobs(_task((d, again)), 0) == 2
    assert w._blob(d) is held
    assert w._take_blobs(_task((d, None)), 0) == 1  # referenced only: touched, still there
    assert w._blob(d) is held


def test_a_blob_the_table_says_is_held_but_is_not_asks_for_everything() -> None:
    w = _worker()
    assert w._take_blobs(_task((_digest(b"x"), None)), 0) == -1


def test_the_cache_evicts_the_least_recently_used_blob() -> None:
    w = _worker()
    blobs = [os.urandom(16) for _ in range(MAX_BLOBS + 1)]
    for b in blobs[:MAX_BLOBS]:
        w._take_blobs(_task((_digest(b), b)), 0)
    w._take_blobs(_task((_digest(blobs[0]), None)), 0)  # touch the oldest: now the newest
    w._take_blobs(_task((_digest(blobs[-1]), blobs[-1])), 0)
    assert w._blob(_digest(blobs[0])) == blobs[0]
    assert w._take_blobs(_task((_digest(blobs[1]), None)), 0) == -1  # evicted
