"""Helpers of the security tests and the frame fuzzer (tests/integration, tests/fuzz).

The *sentinel* is a pickle whose unpickling creates a marker directory (``os.mkdir``, a
builtin every interpreter can import): if any process — the client's broker or a worker
— ever unpickles it, the marker exists. Tests slip it into every payload they forge and
check at the end that the marker was never made.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from impexec._protocol import Kind, Message, decode, encode


class Sentinel:
    """Unpickling this object runs ``os.mkdir(marker)``."""

    def __init__(self, marker: str | os.PathLike[str]):
        self.marker = os.fspath(marker)

    def __reduce__(self) -> Any:
        return (os.mkdir, (self.marker,))


def sentinel_pickle(marker: str | os.PathLike[str]) -> bytes:
    return pickle.dumps(Sentinel(marker), protocol=5)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll *predicate* until it is true or *timeout* seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def drop_count(ex: Any) -> int:
    """Messages the executor's broker has refused so far."""
    return int(ex._broker._drop_log.total)


def recv_messages(sock: zmq.Socket[Any], key: bytes, timeout: float) -> list[Message]:
    """Verified messages that arrive on *sock* within *timeout* seconds."""
    if not sock.poll(timeout * 1000):
        return []
    return list(decode(key, sock.recv_multipart(), None))


def join_as_fake_worker(sock: zmq.Socket[Any], key: bytes, wid: bytes, seq: int = 1) -> Message:
    """Send READY as worker *wid* (the socket's routing id) and return the WELCOME."""
    info = {"worker": wid.hex(), "pid": 0, "host": "fake", "tag": "", "python": "?", "impexec": "?"}
    sock.send_multipart(encode(key, Kind.READY, b"\0" * 8, seq, frames=[json.dumps(info).encode()]))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for msg in recv_messages(sock, key, 1.0):
            if msg.kind == Kind.WELCOME:
                return msg
    raise TimeoutError("no WELCOME for the fake worker")


def marker_path(tmp_path: Path) -> Path:
    return tmp_path / "SENTINEL-WAS-UNPICKLED"
