"""The broker thread: turns messages into Scheduler calls and Scheduler answers into messages.

Threading model::

    caller threads ── submit: Task → inbox deque (+ a wake-up byte if the broker sleeps) ──┐
                      or, when the lock is free, queue and dispatch it themselves           │
    launcher thread ─ worker exited / start failed → inbox (as a command) ─────────────────┤
                                                                                            ▼
    broker thread:  poll(ROUTER, wake-up) → RouterLink (verify, number, acknowledge)
                    → handler by message kind → Scheduler → RouterLink (sign, keep, send)
                    set_result / set_exception on futures, outside the lock

Whoever holds the broker's lock may use the socket (:mod:`._router`); futures are resolved
outside it, because their callbacks may submit. This follows CPython's
``_ExecutorManagerThread`` and its ``_ThreadWakeup``, except that the caller pickles (so
``submit`` can name what does not pickle) and may dispatch its own task.

One turn of the loop (:meth:`Broker._turn`) is a fixed list of steps: drain the inbox,
receive, dispatch, housekeeping (liveness), rebalance, stop when idle and asked to.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from typing import Any

import zmq

from ._errors import BrokenClusterError, ProtocolError, SerializationError, WorkerLostError
from ._peers import Peer
from ._protocol import Flag, Kind, Message
from ._router import HB_SUFFIX, WORKER_ID_SIZE, RouterLink
from ._scheduler import REBALANCE_INTERVAL_S, Scheduler, Statistics, Task, WorkerRecord
from ._serialize import get_serializer
from ._version import __version__

logger = logging.getLogger(__name__)

__all__ = ["HB_SUFFIX", "RECV_BATCH", "WORKER_ID_SIZE", "Broker"]

#: Messages read from the ROUTER per poll wake-up before other work gets a turn.
RECV_BATCH = 512
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_BROKEN = "the executor's broker has stopped"


class Broker:
    """Runs the scheduler against real sockets on a thread of its own (module docstring).

    It holds its thread rather than subclassing ``threading.Thread``: a subclass shares
    the Thread's attribute namespace, and Python 3.13's ``Thread.__init__`` sets
    ``self._handle``, which replaced a method of that name here and broke every message.
    """

    def __init__(
        self,
        *,
        scheduler: Scheduler,
        key: bytes,
        session: bytes,
        address: str,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        welcome_extra: dict[str, Any],
        initializer_frames: list[Any] | None = None,
        initializer_serializer: int = 0,
        curve_secret: bytes | None = None,
        curve_clients: tuple[bytes, ...] = (),
        on_worker_joined: Callable[[WorkerRecord], None] | None = None,
        max_message_size: int | None = None,  # None: $IMPEXEC_MAX_MESSAGE_SIZE or 4 GiB
        extra_binds: Sequence[str] = (),
    ):
        self._thread = threading.Thread(target=self.run, name="impexec-broker", daemon=True)
        self.scheduler = scheduler
        self._session = session
        self._hb_interval = heartbeat_interval
        self._hb_timeout = heartbeat_timeout
        self._welcome = welcome_extra
        self._init_frames = initializer_frames
        self._init_ser = initializer_serializer
        self._on_joined = on_worker_joined
        self._inbox: deque[Any] = deque()
        self._sleeping = False
        self._stop_when_idle = False
        self.stopped = threading.Event()
        self.crash: BaseException | None = None
        self._contexts: dict[int, tuple[list[Any], int]] = {}  # ctx_id → (setup frames, ser)
        self._initializing: set[bytes] = set()  # joined; initializer not yet done
        self._tags: dict[str, bytes] = {}  # launcher tag → worker id
        self.connected_tags: set[str] = set()  # read by the launcher thread
        self.ever_connected_tags: set[str] = set()
        self._last_stop_seq = 0  # STOP_WORKERS, END_RUN: highest seq accepted (replay guard)
        self.ended = False  # `impexec end` ended the run (read by the executor's submit)
        # status clients (impexec status --watch) and when they last asked: told at
        # teardown that the run ended, so that a watch can say so instead of timing out
        self._watchers: dict[bytes, float] = {}
        self._zctx = zmq.Context()
        try:
            self._link = RouterLink(
                self._zctx, key=key, session=session, address=address,
                rto=max(2 * heartbeat_interval, 0.2), max_rto=heartbeat_timeout,
                curve_secret=curve_secret, curve_clients=curve_clients,
                max_message_size=max_message_size, extra_binds=extra_binds)
        except BaseException:
            self._zctx.term()
            raise
        self.address = self._link.address
        self._guard = self._link.guard
        self._drop_log = self._link.drop_log
        self._peers = self._link.peers
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._router_fd = self._link.sock.getsockopt(zmq.FD)
        # Guards the scheduler, the socket and the peer table. Caller threads take it to
        # dispatch their own tasks (no hop through this thread); this thread holds it
        # except while it sleeps in select(). Futures are resolved outside it.
        self._lock = threading.RLock()
        self._later: list[tuple[Any, ...]] = []  # (future, ok, value) or (future, msg)
        self._closed = False
        self._handlers: dict[Kind, Callable[[Peer, WorkerRecord | None, bool, Message], None]] = {
            Kind.HEARTBEAT: self._on_heartbeat,
            Kind.STARTED: self._on_started,
            Kind.RESULT: self._on_result,
            Kind.GOODBYE: self._on_goodbye,
            Kind.START_FAILED: self._on_start_failed,
        }
        self._next_house = 0.0
        self._next_rebalance = 0.0

    # -- called from other threads -----------------------------------------------------
    def enqueue(self, item: Any) -> None:
        """Hand a Task (or a zero-argument callable to run here) to the broker thread."""
        self._inbox.append(item)
        if self._sleeping:
            self._wake()
        if self.stopped.is_set():  # raced with teardown: nobody will read the inbox
            self._fail_orphans()

    def _wake(self) -> None:
        self._sleeping = False
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending, or we are closing

    def submit_now(self, task: Task) -> None:
        """Caller thread: queue *task* and send it to a worker with a free slot at once.

        The ROUTER's ZeroMQ FD is edge-triggered: any use of the socket may consume the
        signal that a message is waiting, so whoever uses it checks ZMQ_EVENTS after and
        wakes the broker thread if something is readable (as pyzmq's asyncio shim does).

        When the broker thread holds the lock (it is receiving), the task goes to the
        inbox instead: it picks it up on its next turn and dispatches it in a batch.
        Waiting for the lock would cost the caller far more than the hand-over.
        """
        if not self._lock.acquire(blocking=False):
            self.enqueue(task)
            return
        try:
            if self._closed:
                task.future.set_exception(BrokenClusterError(_BROKEN))
                return
            self.scheduler.submit(task)
            self._dispatch()
            readable = self._link.sock.getsockopt(_EVENTS) & _POLLIN
        finally:
            self._lock.release()
        if self._later:
            self._flush()
        if readable and self._sleeping:
            self._wake()

    def _fail_orphans(self) -> None:
        """After teardown: fail every task and run every command left in the inbox."""
        while True:
            try:
                item = self._inbox.popleft()
            except IndexError:
                return
            if isinstance(item, Task):
                _resolve(item.future, False, BrokenClusterError(_BROKEN))
            else:
                try:
                    item()
                except Exception:
                    logger.debug("a command for a stopped broker failed", exc_info=True)

    def call(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run *fn* on the broker thread and return its result (or raise its error)."""
        fut: Future[Any] = Future()

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        if self.stopped.is_set():
            return fn()  # no broker any more: state is no longer shared
        self.enqueue(run)  # run here by the teardown if the broker stops meanwhile
        return fut.result(timeout)

    def stop_when_idle(self) -> None:
        """Finish every open task, then tell workers to leave and end the thread."""
        def mark() -> None:
            self._stop_when_idle = True

        self.enqueue(mark)

    def statistics(self, timeout: float = 10.0) -> Statistics:
        return self.call(self.scheduler.statistics, timeout)  # type: ignore[no-any-return]

    def register_context(self, ctx_id: int, frames: list[Any], ser: int) -> None:
        # set at once, not through the inbox: a task of this context may be dispatched
        # from the caller's thread (submit_now) before the inbox is drained; one dict
        # store is atomic, and the broker thread only reads the entry or pops it later
        self._contexts[ctx_id] = (frames, ser)

    # -- the thread --------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def native_id(self) -> int | None:
        return self._thread.native_id

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the executor turns this into BrokenClusterError
            logger.critical("impexec broker thread died", exc_info=True)
            self.crash = exc
        finally:
            self._teardown()

    def _loop(self) -> None:
        self._next_house = time.monotonic() + self._hb_interval
        fds = [self._router_fd, self._wake_r.fileno()]
        while True:
            with self._lock:
                state = self._turn()
                if state is None:
                    self._closed = True
                    return
                more, wake_at = state
                self._sleeping = True
            if self._later:
                self._flush()
            if more or self._inbox:
                self._sleeping = False
                continue
            timeout = max(0.0, wake_at - time.monotonic())
            readable, _, _ = select.select(fds, [], [], timeout)
            self._sleeping = False
            if self._wake_r.fileno() in readable:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except BlockingIOError:
                    pass

    def _turn(self) -> tuple[bool, float] | None:
        """One round of the loop's steps, under the lock.

        Returns (more to read at once?, when to wake up next), or None to stop.
        """
        sched = self.scheduler
        if self._inbox:
            self._drain_inbox()
        more = self._link.receive(self._on_message, RECV_BATCH)
        if sched.n_pending:
            self._dispatch()
        now = time.monotonic()
        if now >= self._next_house:
            self._housekeeping(now)
            self._next_house = now + self._hb_interval
        wake_at = self._next_house
        if sched.tasks and sched.has_idle_worker and not sched.n_pending:
            # idle workers while tasks wait queued on busy ones: maybe recall some
            if now >= self._next_rebalance:
                self._rebalance(now)
                self._next_rebalance = now + REBALANCE_INTERVAL_S
            wake_at = min(wake_at, self._next_rebalance)
        if sched.idle() and not self._later and self._stop_when_idle and not self._inbox:
            return None
        more = more or bool(self._link.sock.getsockopt(_EVENTS) & _POLLIN)
        return more, wake_at

    def _flush(self) -> None:
        """Resolve the futures settled under the lock (their callbacks may submit)."""
        with self._lock:
            later, self._later = self._later, []
        for item in later:
            try:
                if len(item) == 2:
                    _resolve_message(*item)
                else:
                    _resolve(*item)
            except BaseException:  # never let one future take the broker down
                logger.exception("could not resolve a future")

    def _drain_inbox(self) -> None:
        inbox, submit = self._inbox, self.scheduler.submit
        while inbox:
            item = inbox.popleft()
            if isinstance(item, Task):
                submit(item)
            else:
                if self.scheduler.n_pending:
                    # tasks queued before a command reach free workers first: a
                    # shutdown(cancel_futures=True) after submits cancels only the rest
                    self._dispatch()
                item()

    # -- sending tasks -----------------------------------------------------------------
    def _dispatch(self) -> None:
        batches: dict[bytes, tuple[Peer, list[list[Any]]]] = {}
        link, peers = self._link, self._peers
        now = time.monotonic()
        for a in self.scheduler.assign(_claim):
            task = a.task
            peer = peers.get(a.worker.ident)
            if peer is None:  # cannot happen: the scheduler knows only joined workers
                self._finish(a.worker.ident, task, False, RuntimeError("unknown worker"))
                continue
            frames = task.frames
            flags = task.flags
            if task.blobs:  # table of (digest, included?) then the blobs the worker lacks
                missing = a.missing_blobs
                table = b"".join(d + (b"\1" if d in missing else b"\0") for d, _ in task.blobs)
                sent = [data for d, data in task.blobs if d in missing]
                frames = [table, *sent, *frames]
                flags |= Flag.HAS_BLOBS
            if a.with_setup:
                setup = self._contexts.get(task.ctx_id)
                if setup is None:  # closed meanwhile: should not happen, fail loudly
                    self._finish(a.worker.ident, task, False, RuntimeError("context is closed"))
                    continue
                frames = [*setup[0], *frames]
                flags |= Flag.HAS_SETUP
            msg = link.encode_main(peer, Kind.TASK, now, task_id=task.id, ctx_id=task.ctx_id,
                                   aux=task.attempts, flags=flags, serializer=task.ser, frames=frames)
            task.sent_seq = peer.chan.sent
            batch = batches.get(peer.wid)
            if batch is None:
                batches[peer.wid] = (peer, [msg])
            else:
                batch[1].append(msg)
        for peer, msgs in batches.values():  # one block frame per worker and round
            link.send_batch(peer, msgs)

    def _finish(self, ident: bytes, task: Task, ok: bool, value: Any) -> None:
        done = self.scheduler.complete(ident, task.id, ok=ok)
        if done is not None:
            self._later.append((done.future, ok, value))

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
                msg.session != b"\0" * 8 or abs(msg.seq / 1e6 - time.time()) > 300):
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
        self._link.send_client(ident, Kind.STATUS_REPLY,
                               self._status_reply("ending" if self._stop_when_idle else "running"))

    def _status_reply(self, state: str) -> list[Any]:
        stats: dict[str, Any] = self.scheduler.statistics().as_dict()
        stats["workers_list"] = [
            {"name": w.name, "tag": w.tag, "held": len(w.assigned), "completed": w.completed,
             "draining": w.draining, "held_items": sum(t.items for t in w.assigned.values()),
             "items_done": w.items_done}
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
            self._later.append((lt.task.future, False, WorkerLostError(
                f"the task's worker was lost on each of its {lt.attempts} attempts "
                f"(max_retries={self.scheduler.max_retries}; workers: {names}); the task "
                "probably kills its worker (crash, os._exit, out of memory)",
                attempts=lt.attempts, workers=tuple(lt.task.lost_on),
            )))
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

    def _teardown(self) -> None:
        with self._lock:
            self._closed = True
            self._teardown_locked()
        self.stopped.set()
        self._fail_orphans()  # anything put in the inbox while the socket closed
        self._flush()

    def _teardown_locked(self) -> None:
        try:
            now = time.monotonic()
            for ident, asked in self._watchers.items():
                if now - asked < 60:
                    self._link.send_client(ident, Kind.STATUS_REPLY, self._status_reply("ended"))
        except Exception:  # closing anyway; a watch then says it lost the executor
            logger.debug("could not tell the status watchers", exc_info=True)
        try:
            for ident in list(self.scheduler.workers):
                # main link only: the worker finishes its loop and exits cleanly;
                # aux=1 says the executor is closing (exit status 0, not "dismissed")
                peer = self._peers.get(ident)
                if peer is not None:
                    self._link.send_unkept(peer, Kind.SHUTDOWN, aux=1)
        except Exception:  # closing anyway
            logger.debug("could not say goodbye to every worker", exc_info=True)
        err = self.crash
        if err is not None:
            broken = BrokenClusterError(f"the impexec broker thread died: {err!r}")
            for t in self.scheduler.fail_all():
                self._later.append((t.future, False, broken))
        else:
            broken = BrokenClusterError("the executor was shut down before this task was sent")
        # nothing may be left waiting on a broker that is gone (no future ever hangs)
        while self._inbox:
            item = self._inbox.popleft()
            if isinstance(item, Task):
                self._later.append((item.future, False, broken))
            else:
                try:
                    item()  # a call() waiting for its answer, a cancel, a context drop
                except Exception:
                    logger.debug("a command at teardown failed", exc_info=True)
        self._link.close()
        self._wake_r.close()
        self._wake_w.close()
        self._zctx.term()


def _claim(task: Task) -> bool:
    if task.claimed:  # a resubmitted task: claimed at its first dispatch
        return True
    task.claimed = True  # a plain attribute: Future.running() takes the future's lock
    return bool(task.future.set_running_or_notify_cancel())


def _resolve_message(future: Any, msg: Message) -> None:
    """Unpickle a RESULT's payload (its signature was verified) into its future.

    Whatever unpickling raises, ``BaseException`` included (a payload whose
    ``__reduce__`` calls ``sys.exit``), lands in this future and nowhere else.
    """
    ok = bool(msg.flags & Flag.OK)
    try:
        value = get_serializer(msg.serializer).loads(msg.frames)
    except BaseException as exc:
        ok = False
        value = SerializationError(
            f"the {'result' if msg.flags & Flag.OK else 'exception'} of the task could not "
            f"be deserialized on the client: {type(exc).__name__}: {exc}"
        )
        value.__cause__ = exc
    _resolve(future, ok, value)


def _resolve(future: Any, ok: bool | None, value: Any) -> None:
    if ok is None:
        future.cancel()
        return
    try:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    except Exception:  # cancelled or already resolved (InvalidStateError): first one wins
        logger.debug("future already resolved", exc_info=True)

