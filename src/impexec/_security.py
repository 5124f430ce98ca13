"""Key material: HMAC keys and CurveZMQ key pairs."""

from __future__ import annotations

import os

import zmq

#: Bytes of a generated HMAC key (SHA-256 block-size keys add nothing beyond 32).
KEY_SIZE = 32


def new_key() -> bytes:
    return os.urandom(KEY_SIZE)


def curve_keypair() -> tuple[bytes, bytes]:
    """A CurveZMQ (public, secret) pair, Z85-encoded."""
    if not zmq.has("curve"):
        raise RuntimeError("encrypt=True needs libzmq built with CURVE support")
    return zmq.curve_keypair()
