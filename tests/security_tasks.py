"""Helpers of the security tests and the frame fuzzer (tests/integration, tests/fuzz).

The *sentinel* is a pickle whose unpickling creates a marker directory (``os.mkdir``, a
builtin every interpreter can import): if any process — the client's broker or a worker
— ever unpickles it, the marker exists. Tests slip it into every payload they forge and
check at the end that the marker was never made.

Keys (protocol 3): every peer signs with a key of its own, derived from the executor's
key and bound to the direction: a worker's main socket (routing id = its 16-byte id) and
its heartbeat socket (the id + ``b"h"``) use :func:`impexec._protocol.worker_keys` of that
id; any other routing id is a status client (:func:`impexec._protocol.client_keys`).
:func:`keys_for` picks them, and :class:`FakeWorker` speaks a worker's links with them.
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

from impexec._protocol import Kind, Message, client_keys, decode, encode, worker_keys

#: A worker's id is its main socket's routing id; its heartbeat socket adds HB_SUFFIX.
WORKER_ID_SIZE = 16
HB_SUFFIX = b"h"
ZERO_SESSION = b"\0" * 8


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


def keys_for(key: bytes, ident: bytes | None) -> tuple[bytes, bytes]:
    """MAC keys (to the broker, from the broker) of the socket whose routing id is *ident*:
    a worker's (main or heartbeat socket) or, for any other routing id (None: one ZeroMQ
    picks), a status client's."""
    if ident is None:
        return client_keys(key)
    if len(ident) == WORKER_ID_SIZE or (len(ident) == WORKER_ID_SIZE + 1 and ident.endswith(HB_SUFFIX)):
        return worker_keys(key, ident[:WORKER_ID_SIZE])
    return client_keys(key)


def client_request(key: bytes, kind: Kind, session: bytes, seq: int, **fields: Any) -> list[bytes]:
    """A status client's request (STATUS, STOP_WORKERS), signed with the client's key."""
    return encode(client_keys(key)[0], kind, session, seq, **fields)


def client_replies(sock: zmq.Socket[Any], key: bytes, timeout: float) -> list[Message]:
    """The broker's verified answers to a status client within *timeout* seconds."""
    return recv_messages(sock, client_keys(key)[1], timeout)


class FakeWorker:
    """A worker driven by hand: its main socket is *sock* (routing id *wid*), its
    heartbeat socket *hb* (routing id *wid* + ``b"h"``), if the test needs one.

    It speaks the links as a real worker does, and runs nothing: it signs with its own key
    and verifies the broker's with the broker's key for it, numbers its main-link messages
    1, 2, 3... (READY is 1) and acknowledges the broker's main-link numbers received in
    order; its heartbeat link has numbers of its own. Tests forge from here what a key
    holder could send (another session, a number used before).
    """

    def __init__(self, sock: zmq.Socket[Any], key: bytes, wid: bytes, hb: zmq.Socket[Any] | None = None):
        self.sock, self.hb, self.wid = sock, hb, wid
        self.tx, self.rx = worker_keys(key, wid)
        self.session = ZERO_SESSION  # learnt from WELCOME
        self.seq = 0  # last number sent on the main link
        self.hb_seq = 0  # last number sent on the heartbeat link
        self.upto = 0  # the broker's main-link numbers received without a gap
        self.ready: list[bytes] = []  # the frames of its READY, once sent

    def encode(
        self, kind: Kind, *, session: bytes | None = None, seq: int | None = None, **fields: Any
    ) -> list[bytes]:
        """A signed main-link message with the next number (or *seq*: then none is used up)."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        return encode(
            self.tx, kind, self.session if session is None else session, seq, ack=self.upto, **fields
        )

    def send(self, kind: Kind, **fields: Any) -> list[bytes]:
        """Send a main-link message (see :meth:`encode`); returns its frames."""
        frames = self.encode(kind, **fields)
        self.sock.send_multipart(frames)
        return frames

    def encode_hb(
        self,
        kind: Kind = Kind.HEARTBEAT,
        *,
        session: bytes | None = None,
        seq: int | None = None,
        **fields: Any,
    ) -> list[bytes]:
        """A signed heartbeat-link message with the next heartbeat-link number (or *seq*)."""
        if seq is None:
            self.hb_seq += 1
            seq = self.hb_seq
        return encode(
            self.tx, kind, self.session if session is None else session, seq, ack=self.upto, **fields
        )

    def recv(self, timeout: float, sock: zmq.Socket[Any] | None = None) -> list[Message]:
        """Verified messages of one receive on the main socket (or *sock*)."""
        main = sock is None or sock is self.sock
        msgs = recv_messages(self.sock if sock is None else sock, self.rx, timeout)
        for msg in msgs:
            if main and msg.seq == self.upto + 1:
                self.upto = msg.seq
        return msgs

    def expect(self, kind: Kind, timeout: float = 10.0, sock: zmq.Socket[Any] | None = None) -> Message:
        """The next *kind* message from the broker (others are skipped)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            for msg in self.recv(min(left, 1.0), sock):
                if msg.kind == kind:
                    return msg
        raise TimeoutError(f"no {kind.name} for the fake worker")

    def join(self, timeout: float = 10.0) -> Message:
        """Send READY (main-link number 1; its frames stay in ``ready``) and return the
        WELCOME; learn the session."""
        info = {"worker": self.wid.hex(), "pid": 0, "host": "fake", "tag": "", "python": "?", "impexec": "?"}
        self.ready = self.send(Kind.READY, session=ZERO_SESSION, frames=[json.dumps(info).encode()])
        welcome = self.expect(Kind.WELCOME, timeout)
        self.session = bytes.fromhex(welcome.json()["session"])
        return welcome


def marker_path(tmp_path: Path) -> Path:
    return tmp_path / "SENTINEL-WAS-UNPICKLED"
