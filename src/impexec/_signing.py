"""The signatures of messages: per-peer keys, and HMAC-SHA256 over a record and its
out-of-band payloads (large ones through a parallel tree digest). See :mod:`._protocol`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

#: Payload frames at least this large enter the MAC through a tree digest (below).
TREE_MIN = 8 * 1024 * 1024
#: Leaf size of the tree digest.
TREE_CHUNK = 4 * 1024 * 1024
_HASH_THREADS = max(1, min(4, os.cpu_count() or 1))


def _tree_digest(buf: memoryview) -> bytes:
    """SHA-256 over the SHA-256 digests of TREE_CHUNK-sized leaves, hashed in parallel.

    One SHA-256 stream is far slower than copying memory, and a large array is hashed
    four times on a round trip (signed and verified each way). hashlib releases the GIL on large
    inputs, so the leaves are hashed by a few short-lived threads at once. The MAC stays
    HMAC-SHA256 keyed over the header and, for such a frame, its length and this digest:
    forging it needs a SHA-256 collision.
    """
    n = buf.nbytes
    leaves = [buf[i : i + TREE_CHUNK] for i in range(0, n, TREE_CHUNK)]
    digests: list[bytes] = [b""] * len(leaves)
    k = min(_HASH_THREADS, len(leaves))

    def work(first: int) -> None:
        for j in range(first, len(leaves), k):
            digests[j] = hashlib.sha256(leaves[j]).digest()

    threads = [threading.Thread(target=work, args=(i,), name="impexec-hash") for i in range(1, k)]
    for t in threads:
        t.start()
    work(0)
    for t in threads:
        t.join()
    return hashlib.sha256(b"".join(digests)).digest()


def _as_bytes_view(f: Any) -> memoryview:
    buf = memoryview(f.buffer if hasattr(f, "buffer") else f)
    return buf if buf.format == "B" and buf.ndim == 1 else buf.cast("B")


try:  # OpenSSL's HMAC object: its copy() is C; hmac.HMAC.copy is Python
    from _hashlib import hmac_new as _openssl_hmac_new

    def _new_hmac(key: bytes) -> Any:
        return _openssl_hmac_new(key, b"", "sha256")
except ImportError:  # pragma: no cover - CPython without OpenSSL, or another runtime

    def _new_hmac(key: bytes) -> Any:
        return hmac.new(key, digestmod=hashlib.sha256)


_KEYED: dict[bytes, Any] = {}
_KEYED_MAX = 8192


def _derive(key: bytes, label: bytes) -> bytes:
    return hmac.digest(key, b"impexec/3\0" + label, "sha256")


def worker_keys(key: bytes, wid: bytes) -> tuple[bytes, bytes]:
    """MAC keys of worker *wid*'s messages: (worker → broker, broker → worker).

    Binding the direction and the worker's id into the key means no signed frame can be
    turned around (a broker's heartbeat reply reflected to the broker as the worker's
    heartbeat) or moved to another worker's link.
    """
    return _derive(key, b"to-broker\0" + wid), _derive(key, b"from-broker\0" + wid)


def client_keys(key: bytes) -> tuple[bytes, bytes]:
    """MAC keys of a status client (``impexec status``/``stop``): (to broker, from broker)."""
    return _derive(key, b"client-to-broker"), _derive(key, b"broker-to-client")


def _keyed(key: bytes) -> Any:
    """An HMAC-SHA256 state with *key* absorbed, to copy per message.

    A fresh ``hmac.digest`` costs several times a copy of a prepared state (OpenSSL
    looks the digest up and pads the key each time). A broker holds two derived keys
    per worker, so the table holds a few thousand at most; it is cleared if something
    feeds it more.
    """
    state = _KEYED.get(key)
    if state is None:
        if len(_KEYED) >= _KEYED_MAX:
            _KEYED.clear()
        state = _KEYED[bytes(key)] = _new_hmac(key)
    return state


class _MacState(Protocol):
    """What _mac needs of an HMAC state (OpenSSL's or hmac.HMAC: no common class)."""

    def update(self, data: Any, /) -> None: ...
    def digest(self) -> bytes: ...


def _mac(key: bytes, body: Any, oob: Sequence[Any], contents: bool = True) -> bytes:
    """HMAC-SHA256 over a record's header, table and inline bytes, then its out-of-band
    parts: each one's length, and (unless *contents* is false: Flag.LOCAL) its bytes."""
    mac: _MacState = _keyed(key).copy()
    mac.update(body)
    if not oob:
        return mac.digest()
    for f in oob:
        buf = _as_bytes_view(f)
        n = buf.nbytes
        mac.update(n.to_bytes(8, "big"))
        if contents:
            mac.update(_tree_digest(buf) if n >= TREE_MIN else buf)
    return mac.digest()
