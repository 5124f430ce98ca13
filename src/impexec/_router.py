"""The broker's socket: a ROUTER, verified receiving and numbered, kept sending.

Local workers' main links arrive on pipes instead (:mod:`._pipe`); their messages take
the same path from :meth:`RouterLink._deliver` on, and :meth:`RouterLink.send` routes a
worker's messages to its pipe once it has heard from it there.

:class:`RouterLink` is the broker's I/O half. It turns incoming frames into verified,
first-seen messages (signature with the sender's own key, session, link numbers,
acknowledgements; see :mod:`._peers`) and sends messages signed for their receiver,
keeping what goes on a worker's main link until it is acknowledged. It does not know
what the messages mean: that is :class:`._broker.Broker`.

Only the thread holding the broker's lock touches the socket.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from ._errors import ProtocolError
from ._peers import DUPLICATE, LinkBroken, Peer, PeerTable
from ._pipe import PipeSet
from ._protocol import Kind, Message, client_keys, decode, encode, join, recv_frames, send_frames
from ._security import DropLog, RouterGuard

logger = logging.getLogger("impexec._broker")

#: A worker's id: the routing id of its main socket; its heartbeat socket adds HB_SUFFIX.
WORKER_ID_SIZE = 16
HB_SUFFIX = b"h"
_NOBLOCK = int(zmq.NOBLOCK)
#: Kinds a status client (``impexec status`` / ``stop``) may send.
CLIENT_KINDS = frozenset((Kind.STATUS, Kind.STOP_WORKERS, Kind.END_RUN))

#: handle(ident, peer or None, on the heartbeat link?, message)
Handler = Callable[[bytes, "Peer | None", bool, Message], None]


class RouterLink:
    """The ROUTER socket with the peer table; see the module docstring."""

    def __init__(
        self,
        *,
        key: bytes,
        session: bytes,
        address: str,
        rto: float,
        max_rto: float,
        curve_secret: bytes | None,
        curve_clients: tuple[bytes, ...],
        max_message_size: int | None,
        extra_binds: Sequence[str],
    ):
        self.session = session
        self.peers = PeerTable(key, rto=rto, max_rto=max_rto)
        self.client_rx, self.client_tx = client_keys(key)
        self.drop_log = DropLog(logger, "a message")  # rate-limited, bounded memory
        self._hb_seq = 0  # numbers of heartbeat-link and status messages (not kept)
        # local workers' main links (_pipe), in the poll the broker thread waits in
        self.pipes = PipeSet(select.poll())
        # a context of its own: closing the link ends its I/O thread too, and nothing
        # else in the process shares its fate
        zctx: zmq.Context[Any] = zmq.Context()
        self._zctx = zctx
        sock = self.sock = zctx.socket(zmq.ROUTER)
        try:
            self.guard = self._configure(sock, curve_secret, curve_clients, max_message_size)
        except BaseException:  # e.g. a bad CURVE key
            sock.close(linger=0)
            zctx.term()
            raise
        try:
            self.address = _bind(sock, address, extra_binds)
            self.guard.start(zctx)
        except BaseException:  # address in use, bad address: nothing of ours may stay open
            self.guard.close()
            sock.close(linger=0)
            zctx.term()
            raise

    @staticmethod
    def _configure(
        sock: zmq.Socket[Any],
        curve_secret: bytes | None,
        curve_clients: tuple[bytes, ...],
        max_message_size: int | None,
    ) -> RouterGuard:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # a worker that reconnects (reset link, NAT timeout) takes its identity back at
        # once; without this ZeroMQ refuses the new connection until it notices the old
        # one is dead, and messages in between are dropped
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.SNDHWM, 0)
        # limits (MAXMSGSIZE, RCVHWM per peer), CURVE server + ZAP client check: _security
        return RouterGuard(
            sock, curve_secret=curve_secret, curve_clients=curve_clients, max_message_size=max_message_size
        )

    # -- sending -------------------------------------------------------------------------
    def send(self, ident: bytes, frames: list[Any]) -> bool:
        if self.pipes.by_ident and self.pipes.send(ident, frames):
            return True
        try:
            send_frames(self.sock, [ident, *frames])
            return True
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return False  # not connected now: kept messages go again when it reports
            raise

    def encode_main(self, peer: Peer, kind: int, now: float, **fields: Any) -> list[Any]:
        """A message for *peer*'s main link, numbered and kept until acknowledged."""
        chan = peer.chan
        seq = chan.stamp()
        frames = encode(peer.tx_key, kind, self.session, seq, ack=chan.upto, local=peer.local, **fields)
        chan.keep(seq, frames, now)
        return frames

    def send_main(self, peer: Peer, kind: int, now: float | None = None, **fields: Any) -> None:
        now = time.monotonic() if now is None else now
        self.send(peer.wid, self.encode_main(peer, kind, now, **fields))

    def send_batch(self, peer: Peer, messages: list[list[Any]]) -> None:
        """Several encoded main-link messages in one block frame."""
        self.send(peer.wid, join(messages))

    def send_hb(self, peer: Peer, kind: int, **fields: Any) -> None:
        """A message on *peer*'s heartbeat link (not kept: the next one replaces it)."""
        self._hb_seq += 1
        peer.hb_sent.append((self._hb_seq, time.monotonic()))
        self.send(
            peer.wid + HB_SUFFIX,
            encode(peer.tx_key, kind, self.session, self._hb_seq, ack=peer.chan.upto, **fields),
        )

    def send_unkept(self, peer: Peer, kind: int, **fields: Any) -> None:
        """A last main-link message (SHUTDOWN): numbered, not kept (the peer is leaving)."""
        chan = peer.chan
        self.send(
            peer.wid,
            encode(peer.tx_key, kind, self.session, chan.stamp(), ack=chan.upto, local=peer.local, **fields),
        )

    def resend(self, peer: Peer, messages: list[list[Any]]) -> None:
        if messages:
            logger.debug("sending %d message(s) again to worker %s", len(messages), peer.wid.hex()[:12])
            self.send(peer.wid, join(messages))

    def send_client(self, ident: bytes, kind: int, frames: list[Any]) -> None:
        self._hb_seq += 1
        self.send(ident, encode(self.client_tx, kind, self.session, self._hb_seq, frames=frames))

    # -- receiving -----------------------------------------------------------------------
    def receive(self, handle: Handler, limit: int) -> bool:
        """Verify and hand on what has arrived; True if *limit* left messages unread."""
        sock = self.sock
        for _ in range(limit):
            # read until empty (the FD is edge-triggered): one zmq.Again per wake-up is
            # cheaper than asking ZMQ_EVENTS before every message
            try:
                frames = recv_frames(sock, _NOBLOCK)
            except zmq.Again:
                return False
            self._deliver(frames[0].bytes, frames, handle)
        return True

    def receive_pipes(self, handle: Handler, limit: int) -> bool:
        """Like :meth:`receive`, from the local workers' pipes the last poll found readable."""
        if not self.pipes.ready:
            return False

        def on_frames(ident: bytes, frames: list[Any]) -> None:
            if len(ident) != WORKER_ID_SIZE:  # a pipe carries one worker's main link only
                self.drop_log("a local worker's pipe", f"a message from {ident.hex()[:12]}")
                return
            self._deliver(ident, frames, handle)

        return self.pipes.receive(on_frames, limit)

    def add_pipe(self, sock: socket.socket) -> None:
        """Take the broker's end of a local worker's pipe (see :mod:`._pipe`)."""
        self.pipes.add(sock)

    def _deliver(self, ident: bytes, frames: list[Any], handle: Handler) -> None:
        """Verify one received message (``frames[0]`` is its sender) and hand it on."""
        peers = self.peers
        n = len(ident)
        is_hb = n == WORKER_ID_SIZE + 1 and ident[WORKER_ID_SIZE:] == HB_SUFFIX
        peer: Peer | None = None
        if n == WORKER_ID_SIZE or is_hb:
            wid = ident[:WORKER_ID_SIZE]
            peer = peers.get(wid)
            rx = peer.rx_key if peer is not None else peers.keys_for(wid)[0]
            local = peer is not None and peer.local
        else:
            rx, local = self.client_rx, False
        try:
            for msg in decode(rx, frames[1:], None, local):
                if self._fresh(ident, peer, is_hb, msg):
                    handle(ident, peer, is_hb, msg)
        except ProtocolError as exc:
            self.drop_log(f"peer {ident.hex()[:12]}", str(exc))
        except LinkBroken as exc:
            self.drop_log(f"peer {ident.hex()[:12]}", f"link broken: {exc}")
        except Exception:  # a bug handling one message must not take the broker down
            logger.exception("error while handling a message from %s", ident.hex()[:12])

    def _fresh(self, ident: bytes, peer: Peer | None, is_hb: bool, msg: Message) -> bool:
        """Session, numbering and acknowledgement; False: a duplicate, dropped quietly."""
        kind = msg.kind
        if peer is None:
            if kind in CLIENT_KINDS or (kind == Kind.READY and len(ident) == WORKER_ID_SIZE):
                return True  # the broker checks these itself
            if len(ident) == WORKER_ID_SIZE or is_hb:
                raise ProtocolError(f"{kind.name} from a peer that never sent READY (a replay?)")
            raise ProtocolError(f"{kind.name} from a status client")
        if kind in CLIENT_KINDS:
            raise ProtocolError(f"{kind.name} from a worker")
        if msg.session != self.session:
            if kind == Kind.READY:  # sent before it knew the session: a resend of its first
                return peer.chan.accept(msg.seq) != DUPLICATE or self._ready_again(peer)
            raise ProtocolError("message from another session (another executor, or a replay)")
        echo = 0
        if is_hb and kind == Kind.HEARTBEAT:
            if msg.seq <= peer.hb_seq:
                raise ProtocolError(f"replayed or reordered heartbeat (seq {msg.seq} <= {peer.hb_seq})")
            peer.hb_seq = msg.seq
            echo = msg.task_id  # the last heartbeat-link number it heard from us
        elif peer.chan.accept(msg.seq) == DUPLICATE:
            self.peers.heard(peer, peer.chan.on_ack(msg.ack), 0)
            return False  # sent again after a loss, or replayed: taken once already
        self.peers.heard(peer, peer.chan.on_ack(msg.ack), echo)
        return True

    def _ready_again(self, peer: Peer) -> bool:
        """The worker sent READY again: its WELCOME was lost; send what it lacks."""
        if not peer.gone:
            self.resend(peer, peer.chan.due(time.monotonic(), 0.0, 0.0, at_once=True))
        return False

    @property
    def hb_seq(self) -> int:
        return self._hb_seq

    def close(self) -> None:
        self.guard.close()  # ZAP and monitor threads, before the socket and the context
        self.pipes.close(linger=0.2)  # a moment to flush the SHUTDOWNs
        self.sock.close(linger=200)  # a moment to flush the SHUTDOWNs
        self._zctx.term()


def _bind(sock: zmq.Socket[Any], address: str, extra_binds: Sequence[str]) -> str:
    """Bind *address* (a port of 0 or * picks a free one) and the extra addresses;
    return the address bound."""
    if address.endswith((":0", ":*")):
        base = address.rsplit(":", 1)[0]
        bound = f"{base}:{sock.bind_to_random_port(base)}"
    else:
        sock.bind(address)
        bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    for extra in extra_binds:
        sock.bind(extra)
    return bound
