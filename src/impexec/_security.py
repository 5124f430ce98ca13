"""Key material, CurveZMQ client authentication (ZAP) and the broker socket's limits.

The broker's ROUTER is the only listening socket of an executor. :class:`RouterGuard`
sets it up and watches it::

    before bind  MAXMSGSIZE (a bigger message makes ZeroMQ drop its sender), RCVHWM per
                 peer (ZeroMQ stops reading from a peer whose queue is full), handshake
                 timeout; with encrypt: CURVE server key, ZAP domain, ZAP enforced
    after bind   impexec-zap thread (pyzmq's ThreadAuthenticator): admits a CURVE client
                 only if its public key is one of this executor's client keys
                 impexec-monitor thread: logs failed handshakes (plaintext client against
                 an encrypting broker, wrong server key, refused client key, junk)
    teardown     both threads stopped and joined, from the broker thread, before the
                 ROUTER closes and the context terminates

Messages that pass these gates are still checked (HMAC, session, sequence number) by
``_protocol.decode`` and the broker before anything in them is deserialized; see
docs/security.md for the whole picture.

Nothing here logs secret key material: the log lines name peers by address or by
routing id, and pyzmq's own debug lines (which print client *public* keys) go to the
``impexec.zap`` logger, kept at INFO.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import zmq

logger = logging.getLogger(__name__)

#: Bytes of a generated HMAC key (SHA-256 block-size keys add nothing beyond 32).
KEY_SIZE = 32
#: Largest message (all frames together) a peer may send unless configured otherwise.
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024**3
#: Environment variable overriding the largest message size, e.g. ``256M`` or ``2G``.
MAX_MESSAGE_SIZE_ENV = "IMPEXEC_MAX_MESSAGE_SIZE"
#: Messages one peer may have waiting in the broker's receive queue; beyond that ZeroMQ
#: stops reading from that peer's connection (TCP back-pressure), so a flood costs the
#: broker at most this many messages of memory per connection.
PEER_QUEUE = 1000
#: Seconds a new connection has to finish its ZeroMQ handshake before it is closed.
HANDSHAKE_TIMEOUT_S = 10
#: The ZAP domain the broker's ROUTER announces (any constant works; it must be set).
ZAP_DOMAIN = "impexec"
#: Warn at most this often (seconds) about one source of dropped messages.
DROP_LOG_INTERVAL = 5.0

_SUFFIXES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def curve_keypair() -> tuple[bytes, bytes]:
    """A CurveZMQ (public, secret) pair, Z85-encoded."""
    if not zmq.has("curve"):
        raise RuntimeError("encrypt=True needs libzmq built with CURVE support")
    return zmq.curve_keypair()


def parse_size(text: str) -> int:
    """``"4096"``, ``"64K"``, ``"256M"``, ``"2G"`` (binary units, optional ``B``/``iB``)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _SUFFIXES else ""
    number = t[: len(t) - len(unit)].strip()
    try:
        value = int(float(number) * _SUFFIXES[unit])
    except ValueError:
        raise ValueError(f"not a size: {text!r} (examples: 65536, 64K, 256M, 2G)") from None
    if value < 1024:
        raise ValueError(f"a message size limit below 1 KiB ({text!r}) would refuse heartbeats")
    return value


def message_size_limit(configured: int | None = None) -> int:
    """The limit in force: *configured*, else $IMPEXEC_MAX_MESSAGE_SIZE, else 4 GiB."""
    if configured is not None:
        return int(configured)
    env = os.environ.get(MAX_MESSAGE_SIZE_ENV)
    return parse_size(env) if env else DEFAULT_MAX_MESSAGE_SIZE


class DropLog:
    """WARNINGs about dropped input: at most one per source per *interval*.

    O(1) per drop and bounded memory however many sources there are (a flood from fresh
    connections must not grow a table without end); drops not logged are counted and
    reported with the next warning.
    """

    def __init__(
        self, log: logging.Logger, what: str, *, interval: float = DROP_LOG_INTERVAL, max_sources: int = 1024
    ):
        self.log = log
        self.what = what
        self.interval = interval
        self.max_sources = max_sources
        self.total = 0  # everything ever dropped (read by tests and curious users)
        self._last: dict[str, float] = {}
        self._unlogged = 0
        self._full_until = 0.0

    def __call__(self, source: str, why: str) -> None:
        self.total += 1
        now = time.monotonic()
        last = self._last.get(source)
        if last is not None and now - last < self.interval:
            self._unlogged += 1
            return
        if last is None and len(self._last) >= self.max_sources:
            if now < self._full_until:
                self._unlogged += 1
                return
            # prune once per interval at most, so a flood of sources stays O(1) amortized
            cutoff = now - self.interval
            self._last = {s: t for s, t in self._last.items() if t > cutoff}
            self._full_until = now + self.interval
            if len(self._last) >= self.max_sources:
                self._unlogged += 1
                return
        self._last[source] = now
        more, self._unlogged = self._unlogged, 0
        tail = f" ({more} more dropped and not logged since the last warning)" if more else ""
        self.log.warning("dropped %s from %s: %s%s", self.what, source, why, tail)


class _ClientKeys:
    """pyzmq credentials provider: admit exactly the executor's CURVE client keys."""

    def __init__(self, keys: Iterable[bytes | str], refused: DropLog):
        self.keys = frozenset(k.encode() if isinstance(k, str) else bytes(k) for k in keys)
        self.refused = refused
        self.address = "?"  # set by _Authenticator just before the callback runs

    def callback(self, domain: str, client_key: bytes) -> bool:
        if client_key in self.keys:
            return True
        self.refused(
            self.address,
            "its CURVE client key is not this executor's (a connection file from another executor?)",
        )
        return False


def _auth_class() -> type:
    from zmq.auth.thread import ThreadAuthenticator

    class _Authenticator(ThreadAuthenticator):
        provider: _ClientKeys | None = None

        async def handle_zap_message(self, msg: list[bytes]) -> None:
            if self.provider is not None and len(msg) > 3:
                self.provider.address = msg[3].decode("utf-8", "replace") or "?"
            await super().handle_zap_message(msg)

    return _Authenticator


class RouterGuard:
    """Limits, client authentication and handshake logging for the broker's ROUTER.

    Construct it on the unbound socket (it sets options that ZeroMQ copies at bind
    time), call :meth:`start` after binding, and :meth:`close` from the thread that owns
    the socket before closing it.
    """

    def __init__(
        self,
        router: zmq.Socket[Any],
        *,
        curve_secret: bytes | None = None,
        curve_clients: Iterable[bytes | str] = (),
        max_message_size: int | None = None,
    ):
        self.router = router
        self.max_message_size = message_size_limit(max_message_size)
        self.encrypt = curve_secret is not None
        self.clients = tuple(curve_clients)
        if self.encrypt and not self.clients:
            raise ValueError("encryption without client keys would admit no worker")
        router.setsockopt(zmq.MAXMSGSIZE, self.max_message_size)
        router.setsockopt(zmq.RCVHWM, PEER_QUEUE)
        router.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_TIMEOUT_S * 1000)
        if curve_secret is not None:
            router.setsockopt(zmq.CURVE_SERVER, 1)
            router.setsockopt(zmq.CURVE_SECRETKEY, curve_secret)
            router.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
            # fail closed: with no ZAP handler listening, CURVE clients are refused
            router.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        self.refused = DropLog(logger, "a connection")
        self._auth: Any = None
        self._monitor: zmq.Socket[Any] | None = None
        self._monitor_thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, zctx: zmq.Context[Any]) -> None:
        """Start the ZAP handler (with encryption) and the handshake monitor."""
        if self.encrypt:
            auth = _auth_class()(zctx, log=_zap_logger())
            # its own DropLog: this one is also used by the monitor thread
            auth.provider = _ClientKeys(self.clients, DropLog(logger, "a connection"))
            auth.start()
            auth.thread.name = "impexec-zap"
            auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=auth.provider)
            self._auth = auth
        # (refused client keys are logged by the ZAP handler, which knows the address)
        events = (
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_MONITOR_STOPPED
        )
        self._monitor = self.router.get_monitor_socket(events)
        self._monitor_thread = threading.Thread(target=self._watch, name="impexec-monitor", daemon=True)
        self._monitor_thread.start()

    def close(self) -> None:
        """Stop both threads (idempotent); call before closing the ROUTER."""
        self._stop.set()
        if self._monitor_thread is not None:
            with contextlib.suppress(zmq.ZMQError):  # already closed
                self.router.disable_monitor()
            self._monitor_thread.join(5.0)
            self._monitor_thread = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def _watch(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        mon = self._monitor
        if mon is None:
            return
        try:
            while not self._stop.is_set():
                if not mon.poll(500):
                    continue
                event = recv_monitor_message(mon)
                kind = event["event"]
                if kind == zmq.EVENT_MONITOR_STOPPED:
                    return
                self.refused("a client", _describe_handshake_failure(kind, event["value"], self.encrypt))
        except zmq.ZMQError:  # the context is going away
            logger.debug("handshake monitor stopped", exc_info=True)
        finally:
            mon.close(linger=0)


def _describe_handshake_failure(kind: int, value: int, encrypt: bool) -> str:
    if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            detail = "security mechanism mismatch"
        elif value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            detail = "CurveZMQ cryptographic error"
        else:
            detail = f"ZeroMQ protocol error {value:#x}"
    else:  # the peer hung up mid-handshake; errno says how
        detail = os.strerror(value) if 0 < value < 4096 else f"error {value}"
        if value in (errno.ECONNRESET, errno.EPIPE):
            # the connection went away before the handshake ended: on a real network a
            # reset (a restarted tunnel, a NAT timeout) is far likelier than a bad peer
            return (
                f"handshake failed ({detail}): the connection was reset or closed before "
                "the handshake ended (a network reset, or a peer that went away)"
            )
    if encrypt:
        return (
            f"handshake failed ({detail}); this executor has encrypt=True: a client "
            "without CurveZMQ, with the wrong server key, or not a ZeroMQ peer"
        )
    return (
        f"handshake failed ({detail}); this executor has encrypt=False: a client using "
        "CurveZMQ, or not a ZeroMQ peer"
    )


def _zap_logger() -> logging.Logger:
    log = logging.getLogger("impexec.zap")
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)  # pyzmq's debug lines print client public keys
    return log
