"""The worker's heartbeat thread: beats, resends, RECALL, and leaving when orphaned.

It has a socket of its own (routing id: the worker id plus ``b"h"``), so a task that runs
for hours still proves the process alive. Each interval it sends a HEARTBEAT (unless tasks
and results flow on the main socket both ways), saying whether the worker is idle or saw a
gap and echoing the last heartbeat-link number it heard; sends again what the broker has
not acknowledged; answers RECALL at once, taking queued tasks back even while the main
thread runs one; and ends the process when the broker is silent for the timeout or told
it to go and the main thread cannot. No exit depends on a write succeeding.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from typing import TYPE_CHECKING, Any

import zmq

from ._errors import ProtocolError
from ._peers import HB_GAP, HB_IDLE
from ._protocol import Kind, Message, decode, encode, join
from ._security import DropLog

if TYPE_CHECKING:
    from ._worker import Worker

logger = logging.getLogger("impexec._worker")

HB_SUFFIX = b"h"
#: Milliseconds the thread waits per poll: a prompt exit at shutdown.
_POLL_MS = 50


class Heartbeat:
    """The state and steps of one worker's heartbeat thread (see the module docstring)."""

    def __init__(self, worker: Worker, zctx: zmq.Context[Any]):
        from ._mainlink import send_nowait

        self.w = worker
        self.send = send_nowait
        self.sock = worker._socket(zctx, worker.wid + HB_SUFFIX)
        self.dropped = DropLog(logger, "a message")  # this thread's own: not thread-safe
        self.seq = 0
        self.broker_seq = worker._hb_floor  # the heartbeat link's numbers: strictly increasing
        self.rto, self.max_rto = max(2 * worker.hb_interval, 0.2), worker.hb_timeout
        self.last_heard = self.last_tick = time.monotonic()
        self.dismissed_at = 0.0

    def run(self) -> None:
        from ._worker import EXIT_BROKER_GONE, EXIT_DISMISSED, EXIT_OK, exit_now

        w = self.w
        try:
            while not w._stop.is_set():
                self.beat(time.monotonic())
                self.listen(time.monotonic() + w.hb_interval)
                now = time.monotonic()
                self.last_heard = max(self.last_heard, w._main_rx)
                if self.dismissed_at and now - self.dismissed_at > w.hb_timeout:
                    os._exit(EXIT_OK if w._leaving else EXIT_DISMISSED)  # main is stuck
                if not self.dismissed_at and now - self.last_heard > w.hb_timeout:
                    exit_now(
                        EXIT_BROKER_GONE,
                        f"impexec worker: no heartbeat from the broker for {w.hb_timeout:g} s: exiting\n",
                        w.connection_file,
                    )
        except BaseException:
            if not w._stop.is_set():
                # nothing else would notice the broker's silence: leave rather than
                # run on unwatched (the launcher replaces a worker that had to go)
                exit_now(1, "impexec worker: the heartbeat thread failed:\n" + traceback.format_exc())
            raise
        finally:
            self.sock.close(linger=0)

    def beat(self, now: float) -> None:
        """One interval's beat, and the resends that are due."""
        w = self.w
        if now - self.last_tick > 2 * w.hb_interval + 1.0:
            # this process was stopped (SIGSTOP, suspended VM): its own stall is no
            # evidence against the broker; judge from fresh traffic
            self.last_heard = now
        self.last_tick = now
        interval = w.hb_interval
        if now - w._main_rx < interval and now - w._main_tx < interval:
            # tasks and results are flowing on the main socket: each side already knows the
            # other is alive, so no beat; we still read this socket (a SHUTDOWN)
            self.last_heard = max(self.last_heard, w._main_rx)
        else:
            self.seq += 1
            self.send(self.sock, beat(w, self.seq, self.broker_seq))
        with w._lock:  # what the broker has not acknowledged for a while: again
            due = w._chan.due(now, self.rto, self.max_rto)
        if due:
            self.send(self.sock, join(due))

    def listen(self, deadline: float) -> None:
        """Read the heartbeat socket until *deadline* (or the worker stops)."""
        w = self.w
        first = True  # after a stall (SIGSTOP), read what came before judging silence
        while first or ((left := deadline - time.monotonic()) > 0 and not w._stop.is_set()):
            wait_ms = 0 if first else int(min(left, _POLL_MS / 1000) * 1000)
            first = False
            before = time.monotonic()
            ready = self.sock.poll(wait_ms)
            if time.monotonic() - before > wait_ms / 1000 + 1.0:
                self.last_heard = time.monotonic()  # we were stopped, not the broker
            if not ready:
                continue
            try:
                msgs = list(decode(w._rx_key, self.sock.recv_multipart(copy=False), w._session))
            except ProtocolError as exc:
                self.dropped("the broker's heartbeat socket", str(exc))
                continue
            for msg in msgs:
                self.take(msg)

    def take(self, msg: Message) -> None:
        w = self.w
        if msg.seq <= self.broker_seq:
            self.dropped("the broker's heartbeat socket", f"replayed message (seq {msg.seq})")
            return
        self.broker_seq = msg.seq
        self.last_heard = time.monotonic()
        with w._lock:
            w._chan.on_ack(msg.ack)
        if msg.kind == Kind.RECALL:
            w._read_main_socket()
            released = w._release(msg.aux)
            if released:
                self.send(self.sock, join(released))
        elif msg.kind == Kind.SHUTDOWN and not self.dismissed_at:
            # declared lost: the running task may still finish and be taken; the main
            # thread leaves after it
            logger.info("the broker no longer wants this worker: leaving")
            w._dismissed = True
            self.dismissed_at = time.monotonic()


def beat(w: Worker, seq: int, heard: int) -> list[Any]:
    """HEARTBEAT number *seq* of *w*'s heartbeat link: idle? a gap? It echoes *heard*, the
    last heartbeat-link number received from the broker, which dates from then when we
    last heard it: a worker that talks but does not hear (a half-open link) is lost for
    the broker, and without the echo so is one that merely has no task."""
    flags = HB_IDLE if w._idle and not w._queue else 0
    if w._inorder.gap:
        flags |= HB_GAP
    return encode(w._tx_key, Kind.HEARTBEAT, w._session, seq, ack=w._chan.upto, aux=flags, task_id=heard)
