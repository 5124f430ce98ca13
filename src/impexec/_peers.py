"""Links and peers, free of I/O: message numbers, acknowledgements, retransmission.

ZeroMQ delivers whole messages or none, in order on one connection, but a message queued
on a connection that resets is dropped without a word, and the peer reconnects with the
same identity as if nothing happened. So each worker's *main link* (the broker's ROUTER
and the worker's main DEALER) carries its own reliability, like a tiny TCP above TCP:

- every message on it gets the next number of its sender (:meth:`Channel.stamp`), and is
  kept (:meth:`Channel.keep`) until the peer acknowledges it;
- every message either way carries ``ack``: the highest number its sender has received
  without a gap (:attr:`Channel.upto`); it releases what the peer kept;
- a receiver takes each number once (:meth:`Channel.accept`); duplicates are dropped,
  which is also the replay guard of the link;
- lost messages are sent again, with the same number and bytes (:meth:`Channel.due`).

Who sends again, and when, differs by side, because the two ends differ. The broker reads
its socket all the time, so a worker resends its unacknowledged results after a timeout.
A worker reads its main socket only between tasks, so its acknowledgements lag while a
task runs; the broker resends only when the worker says, on its heartbeat link, that it is
idle (nothing queued, nothing unread) yet has not received what was sent a while ago, or
that it saw a gap in the numbers.

The heartbeat link (the worker's second DEALER) carries heartbeats and their replies,
RECALL, and the worker's resends; its own messages are numbered separately, strictly
increasing, and are not kept: a lost heartbeat is replaced by the next.

:class:`PeerTable` holds the broker's view of each worker: its keys (bound to the worker
and the direction, see :func:`._protocol.worker_keys`), its main-link channel and the last
number seen on its heartbeat link.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ._protocol import worker_keys

#: :meth:`Channel.accept` answers: the next number; a number past a gap; seen before.
IN_ORDER, AHEAD, DUPLICATE = 0, 1, 2
#: Numbers a receiver remembers past a gap before the link counts as broken.
MAX_AHEAD = 1 << 16

#: Heartbeat flags (``aux`` of a worker's HEARTBEAT on its heartbeat link).
HB_IDLE = 1  # nothing queued, nothing running, nothing unread on the main socket
HB_GAP = 2  # a number is missing on the main link (messages after it are held back)


class LinkBroken(Exception):
    """A peer is so far ahead of a gap that its link cannot be repaired."""


class Channel:
    """One end of a main link: what it sent (until acknowledged) and what it received."""

    __slots__ = ("acked", "ahead", "sent", "unacked", "upto")

    def __init__(self) -> None:
        self.sent = 0  # last number stamped
        self.acked = 0  # highest number the peer acknowledged
        self.upto = 0  # highest number received without a gap
        self.ahead: set[int] = set()  # numbers received past a gap
        # number -> [frames, last sent (monotonic), times sent]; insertion = number order
        self.unacked: dict[int, list[Any]] = {}

    # -- sending -------------------------------------------------------------------------
    def stamp(self) -> int:
        self.sent += 1
        return self.sent

    def keep(self, seq: int, frames: list[Any], now: float) -> None:
        """Hold the encoded message *seq* until the peer acknowledges it."""
        if seq > self.acked:
            self.unacked[seq] = [frames, now, 1]

    def on_ack(self, ack: int) -> float:
        """The peer has everything up to *ack*: forget it.

        Returns when the newest message this released was last sent (0.0: none): the peer
        has heard us since then.
        """
        if ack <= self.acked:
            return 0.0
        if ack > self.sent:  # acknowledges what was never sent: a bug or a forgery
            ack = self.sent
        self.acked = ack
        unacked = self.unacked
        sent_at = 0.0
        while unacked:
            seq = next(iter(unacked))
            if seq > ack:
                break
            sent_at = unacked.pop(seq)[1]
        return sent_at

    def due(self, now: float, rto: float, max_rto: float, *, at_once: bool = False) -> list[list[Any]]:
        """Messages to send again: unacknowledged for *rto* (doubling per resend, at most
        *max_rto*), or all of them with *at_once* (the peer reported a gap)."""
        out: list[list[Any]] = []
        for entry in self.unacked.values():
            wait = min(max_rto, rto * (1 << min(entry[2] - 1, 16)))
            if at_once or now - entry[1] >= wait:
                entry[1] = now
                entry[2] += 1
                out.append(entry[0])
        return out

    def oldest_unacked(self) -> float | None:
        """When the oldest message not yet acknowledged was last sent (None: none)."""
        for entry in self.unacked.values():
            return entry[1]  # type: ignore[no-any-return]
        return None

    # -- receiving -----------------------------------------------------------------------
    def accept(self, seq: int) -> int:
        """Record that *seq* arrived: IN_ORDER, AHEAD (a gap before it) or DUPLICATE."""
        upto = self.upto
        if seq == upto + 1:
            upto = seq
            ahead = self.ahead
            if ahead:
                while upto + 1 in ahead:
                    upto += 1
                    ahead.discard(upto)
            self.upto = upto
            return IN_ORDER
        if seq <= upto or seq in self.ahead:
            return DUPLICATE
        if len(self.ahead) >= MAX_AHEAD:
            raise LinkBroken(f"{len(self.ahead)} messages past a gap at {upto + 1}")
        self.ahead.add(seq)
        return AHEAD


class InOrder:
    """A receiver that hands messages on strictly in number order (the worker's side).

    A worker runs tasks in the order the broker sent them (the broker blames the first
    task it holds for the worker's death), so messages past a gap wait here for it.
    """

    __slots__ = ("chan", "held")

    def __init__(self, chan: Channel):
        self.chan = chan
        self.held: dict[int, Any] = {}

    def push(self, seq: int, item: Any) -> list[Any]:
        """Items now deliverable, in order (empty: a duplicate, or waiting for a gap)."""
        chan = self.chan
        before = chan.upto
        status = chan.accept(seq)
        if status == DUPLICATE:
            return []
        if status == AHEAD:
            self.held[seq] = item
            return []
        held = self.held
        return [item, *(held.pop(n) for n in range(before + 2, chan.upto + 1))]

    @property
    def gap(self) -> bool:
        return bool(self.held)


@dataclass(eq=False)
class Peer:
    """The broker's view of one worker's links."""

    wid: bytes
    rx_key: bytes  # verifies what the worker sends
    tx_key: bytes  # signs what the broker sends it
    chan: Channel = field(default_factory=Channel)
    hb_seq: int = 0  # last number seen on its heartbeat link
    # (number, when sent) of our recent heartbeat-link messages to it: its heartbeats echo
    # the last number they heard, which dates when it last heard us
    hb_sent: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=32))
    heard_at: float = 0.0  # when it last provably heard us (liveness counts from here)
    local: bool = False  # dialed the Unix socket: Flag.LOCAL both ways
    gone: bool = False  # forgotten by the scheduler; late messages still verify


class PeerTable:
    """Every worker that ever said READY (gone ones keep their keys, not their buffers)."""

    def __init__(self, key: bytes, *, rto: float, max_rto: float):
        self._key = key
        self.rto = rto
        self.max_rto = max_rto
        self._peers: dict[bytes, Peer] = {}

    def keys_for(self, wid: bytes) -> tuple[bytes, bytes]:
        """(rx, tx) keys for *wid*, known or not (a READY is verified before it joins)."""
        p = self._peers.get(wid)
        if p is not None:
            return p.rx_key, p.tx_key
        return worker_keys(self._key, wid)

    def join(self, wid: bytes, ready_seq: int, now: float = 0.0) -> Peer | None:
        """A verified READY: the new peer, or None if *wid* was seen before (a replay)."""
        if wid in self._peers:
            return None
        rx, tx = worker_keys(self._key, wid)
        p = Peer(wid, rx, tx, heard_at=now)
        p.chan.accept(ready_seq)
        self._peers[wid] = p
        return p

    def get(self, wid: bytes) -> Peer | None:
        return self._peers.get(wid)

    def forget(self, wid: bytes) -> None:
        """The worker left or was lost: nothing more is resent to it."""
        p = self._peers.get(wid)
        if p is not None:
            p.gone = True
            p.chan.unacked.clear()
            p.chan.ahead.clear()

    def resend_on_report(self, p: Peer, flags: int, now: float) -> list[list[Any]]:
        """A heartbeat from *p* said IDLE and/or GAP: what to send it again.

        Idle with messages unacknowledged for a timeout means they were lost (its main
        thread has read everything that arrived); a gap means lost for sure.
        """
        if p.gone or not p.chan.unacked or not flags & (HB_IDLE | HB_GAP):
            return []
        return p.chan.due(now, self.rto, self.max_rto, at_once=bool(flags & HB_GAP))

    @staticmethod
    def heard(p: Peer, ack_sent_at: float, echo: int) -> float:
        """Update when *p* last heard us, from what a message of its acknowledged (the
        send time of the newest message its ack released) and, on a heartbeat, the last
        heartbeat-link number it echoes. Returns ``p.heard_at``.

        A worker that talks but does not hear (a half-open link) is not alive for the
        broker: tasks sent to it are lost, and it gives up on its side.
        """
        t = ack_sent_at
        if echo:
            for seq, sent in reversed(p.hb_sent):
                if seq <= echo:
                    t = max(t, sent) if seq == echo else t
                    break
        if t > p.heard_at:
            p.heard_at = t
        return p.heard_at

    def __iter__(self) -> Iterator[Peer]:
        return iter(self._peers.values())

    def __len__(self) -> int:
        return len(self._peers)
