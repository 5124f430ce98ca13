"""What the broker does with each message and with each worker that comes or goes.

:class:`WorkerEvents` is the half of :class:`._broker.Broker` that reacts: a handler per
message kind (the table is ``Broker._handlers``), the handshake (READY → WELCOME), status
clients, and workers leaving, lost or dismissed. It runs on whichever thread holds the
broker's lock, never touches futures (it queues their outcome in ``_later``) and does its
I/O through the broker's :class:`._router.RouterLink`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

from ._errors import ProtocolError, WorkerLostError
from ._peers import Peer, PeerTable
from ._protocol import Flag, Kind, Message
from ._router import RouterLink
from ._scheduler import Scheduler, WorkerRecord
from ._security import RouterGuard
from ._version import __version__

logger = logging.getLogger("impexec._broker")


class WorkerEvents:
    """Message handlers and worker bookkeeping of the broker (mixed into Broker)."""

    # set by Broker.__init__ (the rest by _init_events)
    scheduler: Scheduler
    address: str
    ended: bool
    connected_tags: set[str]
    ever_connected_tags: set[str]
    _link: RouterLink
    _peers: PeerTable
    _guard: RouterGuard
    _session: bytes
    _hb_interval: float
    _hb_timeout: float
    _welcome: dict[str, Any]
    _init_frames: list[Any] | None
    _init_ser: int
    _on_joined: Callable[[WorkerRecord], None] | None
    _initializing: set[bytes]
    _tags: dict[str, bytes]
    _last_stop_seq: int
    _watchers: dict[bytes, float]
    _stop_when_idle: bool
    _contexts: dict[int, tuple[list[Any], int]]
    _later: list[tuple[Any, ...]]
    _handlers: dict[Kind, Callable[[Peer, WorkerRecord | None, bool, Message], None]]

    def _init_events(
        self,
        welcome_extra: dict[str, Any],
        initializer_frames: list[Any] | None,
        initializer_serializer: int,
        on_worker_joined: Callable[[WorkerRecord], None] | None,
    ) -> None:
        self._welcome = welcome_extra
        self._init_frames = initializer_frames
        self._init_ser = initializer_serializer
        self._on_joined = on_worker_joined
        self._contexts = {}  # ctx_id → (setup frames, ser)
        self._initializing = set()  # joined; initializer not yet done
        self._tags = {}  # launcher tag → worker id
        self.connected_tags = set()  # read by the launcher thread
        self.ever_connected_tags = set()
        self._last_stop_seq = 0  # STOP_WORKERS, END_RUN: highest seq accepted (replay guard)
        self.ended = False  # `impexec end` ended the run (read by the executor's submit)
        # status clients (impexec status --watch) and when they last asked: told at
        # teardown that the run ended, so that a watch can say so instead of timing out
        self._watchers = {}
        self._handlers = {
            Kind.HEARTBEAT: self._on_heartbeat,
            Kind.STARTED: self._on_started,
            Kind.RESULT: self._on_result,
            Kind.GOODBYE: self._on_goodbye,
            Kind.START_FAILED: self._on_start_failed,
        }

    # -- receiving ---------------------------------------------------------------------
    def _on_message(self, ident: bytes, peer: Peer | None, is_hb: bool, msg: Message) -> None:
        """A verified, first-seen message (RouterLink checked numbers and session)."""
        kind = msg.kind
        if peer is None:
            if kind == Kind.READY:
                self._on_ready(ident, msg)
            else:
                self._on_status(ident, msg)
            return
        # alive counts from when it last provably heard us (see PeerTable.heard), not from
        # when it last spoke: a half-open link must not keep a worker that hears nothing.
        # Its heartbeat echoes our reply to the one before, so allow one interval of lag.
        now = time.monotonic()
        w = self.scheduler.seen(peer.wid, min(now, peer.heard_at + self._hb_interval))
        handler = self._handlers.get(kind)
        if handler is None:
            raise ProtocolError(f"unexpected {kind.name} from a worker")
        handler(peer, w, is_hb, msg)

    def _on_heartbeat(self, peer: Peer, w: WorkerRecord | None, is_hb: bool, msg: Message) -> None:
        if w is None:
            self._link.send_hb(peer, Kind.SHUTDOWN)
            return
        if not is_hb:
            raise ProtocolError("HEARTBEAT on a worker's main link")
        self._link.send_hb(peer, Kind.HEARTBEAT)
        # idle with messages unacknowledged, or a gap: they were lost, send them again
        self._link.resend(peer, self._peers.resend_on_report(peer, msg.aux, time.monotonic()))

    def _on_started(self, peer: Peer, w: WorkerRecord | None, is_hb: bool, msg: Message) -> None:
        """Its initializer ran: only now is it counted as started (a failing initializer
        would otherwise look like a worker that connected and died, restarted forever)."""
        if w is not None and peer.wid in self._initializing:
            self._initializing.discard(peer.wid)
            self._worker_started(w)

    def _on_goodbye(self, peer: Peer, w: WorkerRecord | None, is_hb: bool, msg: Message) -> None:
        reason = msg.json().get("reason", "")
        if w is not None:
            logger.info("worker %s is leaving (%s)", w.name, reason)
            self.scheduler.drain_worker(peer.wid)
            self._release_drained(w)

    def _on_start_failed(self, peer: Peer, w: WorkerRecord | None, is_hb: bool, msg: Message) -> None:
        text = msg.json().get("error", "")
        name = w.name if w else peer.wid.hex()
        logger.error("worker %s could not start: %s", name, text)
        if w is not None:
            self._forget(w, lost=False)

    def _on_ready(self, ident: bytes, msg: Message) -> None:
        info = msg.json()
        if info.get("worker") != ident.hex():
            raise ProtocolError("READY whose worker id does not match its socket")
        peer = self._peers.join(ident, msg.seq, time.monotonic())
        if peer is None:
            raise ProtocolError("READY from a worker id seen before (replay)")
        peer.local = info.get("local") is True  # it dialed our Unix socket (signed: a key holder says so)
        name = f"{info.get('host', '?')}:{info.get('pid', '?')}"
        tag = str(info.get("tag") or "")
        w = self.scheduler.add_worker(ident, name, time.monotonic(), tag=tag, info=info)
        if tag:
            self._tags[tag] = ident
        welcome = {
            **self._welcome,
            "worker": ident.hex(),
            "session": self._session.hex(),
            "heartbeat_interval": self._hb_interval,
            "heartbeat_timeout": self._hb_timeout,
            "max_message_size": self._guard.max_message_size,  # per frame (ZeroMQ MAXMSGSIZE)
            # heartbeat-link numbers so far: the worker takes only later ones from there
            "hb_floor": self._link.hb_seq,
        }
        frames: list[Any] = [json.dumps(welcome).encode()]
        flags = 0
        if self._init_frames is not None:
            frames += self._init_frames
            flags = Flag.HAS_SETUP
        self._link.send_main(peer, Kind.WELCOME, flags=flags, serializer=self._init_ser, frames=frames)
        logger.info("worker %s joined (tag %s, python %s)", name, tag or "-", info.get("python", "?"))
        if self._init_frames is None:
            self._worker_started(w)
        else:  # started once its initializer ran (it says so with STARTED)
            self._initializing.add(ident)

    def _worker_started(self, w: WorkerRecord) -> None:
        """The worker is ready for work: launchers and the executor count it as started."""
        if w.tag:
            self.connected_tags.add(w.tag)
            self.ever_connected_tags.add(w.tag)
        if self._on_joined is not None:
            self._on_joined(w)

    def _on_status(self, ident: bytes, msg: Message) -> None:
        kind = msg.kind
        if msg.session != self._session and (  # a URL + key client knows no session:
            msg.session != b"\0" * 8 or abs(msg.seq / 1e6 - time.time()) > 300
        ):
            raise ProtocolError("status request from another session")  # or a stale one
        if kind != Kind.STATUS:  # clients number requests by the clock
            if msg.seq <= self._last_stop_seq:
                raise ProtocolError(f"replayed {kind.name} (seq {msg.seq})")
            self._last_stop_seq = msg.seq
        if kind == Kind.STOP_WORKERS:
            for w in list(self.scheduler.workers.values()):
                peer = self._peers.get(w.ident)
                if peer is not None:
                    self._link.send_main(peer, Kind.DRAIN)
                self.scheduler.drain_worker(w.ident)
                self._release_drained(w)
        elif kind == Kind.END_RUN:
            self._end_run()
        now = time.monotonic()
        self._watchers[ident] = now
        if len(self._watchers) > 64:  # bounded: forget those that stopped asking
            self._watchers = {i: t for i, t in self._watchers.items() if now - t < 60}
        self._link.send_client(
            ident, Kind.STATUS_REPLY, self._status_reply("ending" if self._stop_when_idle else "running")
        )

    def _status_reply(self, state: str) -> list[Any]:
        stats: dict[str, Any] = self.scheduler.statistics().as_dict()
        stats["workers_list"] = [
            {
                "name": w.name,
                "tag": w.tag,
                "held": len(w.assigned),
                "completed": w.completed,
                "draining": w.draining,
                "held_items": sum(t.items for t in w.assigned.values()),
                "items_done": w.items_done,
            }
            for w in list(self.scheduler.workers.values())[:1000]
        ]
        stats["address"] = self.address
        stats["version"] = __version__
        stats["state"] = state
        return [json.dumps(stats).encode()]

    def _end_run(self) -> None:
        """``impexec end``: no future may wait on a run that nobody will serve any more."""
        self.ended = True
        self.cancel_pending()
        ended = CancelledError("the run was ended by `impexec end` while this task was on a worker")
        for t in self.scheduler.fail_all():  # the held ones: their results are not awaited
            self._later.append((t.future, False, ended))
        for w in list(self.scheduler.workers.values()):
            peer = self._peers.get(w.ident)
            if peer is not None:
                self._link.send_unkept(peer, Kind.SHUTDOWN, aux=1)
            self._forget(w, lost=False)
        self._stop_when_idle = True

    def _on_result(self, peer: Peer, w: WorkerRecord | None, is_hb: bool, msg: Message) -> None:
        wid = peer.wid
        if msg.flags & Flag.NEED_SETUP:
            self.scheduler.needs_setup(wid, msg.task_id)
            return
        if msg.flags & Flag.RELEASED:
            self.scheduler.release(wid, msg.task_id)
            return
        ok = bool(msg.flags & Flag.OK)
        task = self.scheduler.complete(wid, msg.task_id, ok=ok, run_s=msg.aux / 1e6, raised=msg.ctx_id)
        if w is None:  # a worker we declared lost: its late result is taken, it goes
            self._link.send_hb(peer, Kind.SHUTDOWN)
        elif w.draining:
            self._release_drained(w)
        if task is None:
            logger.debug("dropped a late result for task %d (completed elsewhere)", msg.task_id)
            return
        self._later.append((task.future, msg))  # unpickled outside the lock

    # -- worker loss -------------------------------------------------------------------
    def _release_drained(self, w: WorkerRecord) -> None:
        if w.draining and not w.assigned:
            peer = self._peers.get(w.ident)
            if peer is not None:
                self._link.send_unkept(peer, Kind.SHUTDOWN)
            self._forget(w, lost=False)

    def _forget(self, w: WorkerRecord, *, lost: bool) -> None:
        peer = self._peers.get(w.ident)
        received = peer.chan.acked if peer is not None else None
        for lt in self.scheduler.remove_worker(w.ident, lost=lost, received_upto=received):
            names = ", ".join(lt.task.lost_on)
            self._later.append(
                (
                    lt.task.future,
                    False,
                    WorkerLostError(
                        f"the task's worker was lost on each of its {lt.attempts} attempts "
                        f"(max_retries={self.scheduler.max_retries}; workers: {names}); the task "
                        "probably kills its worker (crash, os._exit, out of memory)",
                        attempts=lt.attempts,
                        workers=tuple(lt.task.lost_on),
                    ),
                )
            )
        self._peers.forget(w.ident)
        self._initializing.discard(w.ident)
        if w.tag:
            self.connected_tags.discard(w.tag)
            self._tags.pop(w.tag, None)

    def worker_lost(self, ident: bytes, why: str) -> None:
        """Broker thread: declare a worker lost and requeue its work."""
        w = self.scheduler.workers.get(ident)
        if w is None:
            return
        logger.warning("worker %s lost (%s); %d task(s) go back to the queue", w.name, why, len(w.assigned))
        peer = self._peers.get(ident)
        if peer is not None:  # if it is only stopped, it learns on waking that it is not wanted
            self._link.send_unkept(peer, Kind.SHUTDOWN)
            self._link.send_hb(peer, Kind.SHUTDOWN)
        self._forget(w, lost=True)

    def tag_exited(self, tag: str, why: str) -> None:
        """Broker thread: a launcher saw the process behind *tag* exit."""
        ident = self._tags.get(tag)
        if ident is not None:
            self.worker_lost(ident, why)

    def fail_open_tasks(self, err: BaseException) -> None:
        """Broker thread: no worker can start: every open future fails with *err*."""
        for t in self.scheduler.fail_all():
            self._later.append((t.future, False, err))

    def _rebalance(self, now: float) -> None:
        # on the heartbeat link: its thread answers while the worker's main thread runs a task
        for w, n in self.scheduler.rebalance(now):
            peer = self._peers.get(w.ident)
            if peer is not None:
                logger.debug("asking worker %s to give back up to %d queued task(s)", w.name, n)
                self._link.send_hb(peer, Kind.RECALL, aux=n)

    def _housekeeping(self, now: float) -> None:
        for w in self.scheduler.expire(now):
            self.worker_lost(w.ident, f"no heartbeat for {now - w.last_seen:.1f} s")

    # -- context and shutdown commands (broker thread) ---------------------------------
    def drop_context(self, ctx_id: int) -> None:
        self._contexts.pop(ctx_id, None)
        for w in self.scheduler.drop_context(ctx_id):
            peer = self._peers.get(w.ident)
            if peer is not None:
                self._link.send_main(peer, Kind.DROP_CONTEXT, ctx_id=ctx_id)

    def cancel_pending(self) -> None:
        for t in self.scheduler.cancel_pending():
            self._later.append((t.future, None, None))
