"""The broker thread: owns the ROUTER socket, turns frames into Scheduler calls, resolves futures.

Threading model (the only thread that touches the broker's sockets is this one)::

    caller threads ── submit: Task → inbox deque (+ a wake-up byte if the broker sleeps) ──┐
    launcher thread ─ worker exited / start failed → inbox (as a command) ─────────────────┤
                                                                                            ▼
    broker thread:  poll(ROUTER, wake-up) → verify+decode → Scheduler → encode+sign → ROUTER
                    set_result / set_exception on futures (their callbacks run here)

This follows CPython's ``_ExecutorManagerThread`` and its ``_ThreadWakeup``: other
threads never touch the socket, they append to a deque and poke a socketpair. Unlike
CPython, the caller thread pickles (so ``submit`` can raise naming the culprit) and no
feeder thread copies payloads again.
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

from . import __version__
from ._errors import BrokenClusterError, ProtocolError, SerializationError, WorkerLostError, WorkerStartError
from ._protocol import Flag, Kind, decode, encode, join, recv_frames, send_frames
from ._scheduler import REBALANCE_INTERVAL_S, Scheduler, Statistics, Task, WorkerRecord
from ._security import DropLog, RouterGuard
from ._serialize import get_serializer

logger = logging.getLogger(__name__)

#: Messages read from the ROUTER per poll wake-up before other work gets a turn.
RECV_BATCH = 512
#: Heartbeat socket of a worker: its routing id is the worker id plus this suffix.
HB_SUFFIX = b"h"
WORKER_ID_SIZE = 16
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)


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
        self._key = key
        self._session = session
        self._hb_interval = heartbeat_interval
        self._hb_timeout = heartbeat_timeout
        self._welcome = welcome_extra
        self._init_frames = initializer_frames
        self._init_ser = initializer_serializer
        self._on_joined = on_worker_joined
        self._seq = 0
        self._inbox: deque[Any] = deque()
        self._sleeping = False
        self._stop_when_idle = False
        self._stopping = False
        self.stopped = threading.Event()
        self.idle_event = threading.Event()
        self.crash: BaseException | None = None
        self.start_error: WorkerStartError | None = None
        self._contexts: dict[int, tuple[list[Any], int]] = {}  # ctx_id → (setup frames, ser)
        self._last_seq: dict[bytes, int] = {}
        self._seen_workers: set[bytes] = set()
        self._local: set[bytes] = set()  # workers on the Unix socket: Flag.LOCAL both ways
        self._initializing: set[bytes] = set()  # joined; initializer not yet done
        self._tags: dict[str, bytes] = {}  # launcher tag → worker id
        self.connected_tags: set[str] = set()  # read by the launcher thread
        self.ever_connected_tags: set[str] = set()
        self._drop_log = DropLog(logger, "a message")  # rate-limited, bounded memory
        self._last_stop_seq = 0  # STOP_WORKERS, END_RUN: highest seq accepted (replay guard)
        self.ended = False  # `impexec end` ended the run (read by the executor's submit)
        # status clients (impexec status --watch) and when they last asked: told at
        # teardown that the run ended, so that a watch can say so instead of timing out
        self._watchers: dict[bytes, float] = {}

        self._zctx = zmq.Context()
        self._router = self._zctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._router.setsockopt(zmq.SNDHWM, 0)
        # limits (MAXMSGSIZE, RCVHWM per peer), CURVE server + ZAP client check: _security
        self._guard = RouterGuard(self._router, curve_secret=curve_secret,
                                  curve_clients=curve_clients, max_message_size=max_message_size)
        try:
            if address.endswith((":0", ":*")):
                base = address.rsplit(":", 1)[0]
                port = self._router.bind_to_random_port(base)
                self.address = f"{base}:{port}"
            else:
                self._router.bind(address)
                self.address = self._router.getsockopt(zmq.LAST_ENDPOINT).decode()
            for extra in extra_binds:
                self._router.bind(extra)
            self._guard.start(self._zctx)
        except BaseException:  # address in use, bad address: nothing of ours may stay open
            self._guard.close()
            self._router.close(linger=0)
            self._zctx.term()
            raise
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._router_fd = self._router.getsockopt(zmq.FD)
        # Guards the scheduler, the ROUTER socket and the sequence counter. Caller threads
        # take it to dispatch their own tasks (no hop through this thread); this thread
        # holds it except while it sleeps in select(). Futures are resolved outside it.
        self._lock = threading.RLock()
        self._later: list[tuple[Any, ...]] = []  # (future, ok, value) or (future, msg)
        self._closed = False

    # -- called from other threads -----------------------------------------------------
    def enqueue(self, item: Any) -> None:
        """Hand a Task (or a zero-argument callable to run here) to the broker thread."""
        self._inbox.append(item)
        if self._sleeping:
            self._wake()

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
        Waiting for the lock cost the caller ~40 µs of CPU per task once every task
        found a free slot (many workers; issue 8: twice the client's CPU per task with
        1,000 workers).
        """
        if not self._lock.acquire(blocking=False):
            self.enqueue(task)
            if self.stopped.is_set():  # raced with teardown: nobody will read the inbox
                self._fail_orphans()
            return
        try:
            if self._closed:
                task.future.set_exception(BrokenClusterError("the executor's broker has stopped"))
                return
            self.scheduler.submit(task)
            self._dispatch()
            readable = self._router.getsockopt(_EVENTS) & _POLLIN
        finally:
            self._lock.release()
        if self._later:
            self._flush()
        if readable and self._sleeping:
            self._wake()

    def _fail_orphans(self) -> None:
        """After the thread stopped: fail queued tasks, run queued calls (nobody else will)."""
        while True:
            try:
                item = self._inbox.popleft()
            except IndexError:
                return
            if isinstance(item, Task):
                _resolve(item.future, False, BrokenClusterError("the executor's broker has stopped"))
            elif isinstance(item, _Call):
                item()  # state is no longer shared: run it here, as call() would

    def call(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run *fn* on the broker thread and return its result (or raise its error)."""
        if self.stopped.is_set():
            return fn()  # no broker any more: state is no longer shared
        run = _Call(fn)
        self.enqueue(run)
        if self.stopped.is_set():  # raced with teardown: nobody will read the inbox
            self._fail_orphans()
        return run.future.result(timeout)

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

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the executor turns this into BrokenClusterError
            logger.critical("impexec broker thread died", exc_info=True)
            self.crash = exc
        finally:
            self._teardown()

    def _loop(self) -> None:
        sched = self.scheduler
        next_house = time.monotonic() + self._hb_interval
        next_rebalance = 0.0
        fds = [self._router_fd, self._wake_r.fileno()]
        while True:
            wake_at = next_house
            with self._lock:
                if self._inbox:
                    self._drain_inbox()
                more = self._receive()
                if sched.n_pending:
                    self._dispatch()
                now = time.monotonic()
                if now >= next_house:
                    self._housekeeping(now)
                    next_house = now + self._hb_interval
                wake_at = next_house
                if sched.tasks and sched.has_idle_worker and not sched.n_pending:
                    # idle workers while tasks wait queued on busy ones: maybe recall some
                    if now >= next_rebalance:
                        self._rebalance()
                        next_rebalance = now + REBALANCE_INTERVAL_S
                    wake_at = min(wake_at, next_rebalance)
                if sched.idle() and not self._later:
                    self.idle_event.set()
                    if self._stop_when_idle and not self._inbox:
                        self._closed = True
                        return
                else:
                    self.idle_event.clear()
                more = more or bool(self._router.getsockopt(_EVENTS) & _POLLIN)
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

    def _flush(self) -> None:
        """Resolve the futures settled under the lock (their callbacks may submit)."""
        with self._lock:
            later, self._later = self._later, []
        for item in later:
            if len(item) == 2:
                _resolve_message(*item)
            else:
                _resolve(*item)

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

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send(self, ident: bytes, frames: list[Any]) -> bool:
        try:
            send_frames(self._router, [ident, *frames])
            return True
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return False  # the peer is gone; heartbeats will tell
            raise

    def _dispatch(self) -> None:
        batches: dict[bytes, list[list[Any]]] = {}
        key, session, local = self._key, self._session, self._local
        for a in self.scheduler.assign(_claim):
            task = a.task
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
            msg = encode(
                key, Kind.TASK, session, self._next_seq(), task_id=task.id, ctx_id=task.ctx_id,
                aux=task.attempts, flags=flags, serializer=task.ser, frames=frames,
                local=a.worker.ident in local,
            )
            batches.setdefault(a.worker.ident, []).append(msg)
        for ident, msgs in batches.items():  # one block frame per worker and round
            self._send(ident, join(msgs))

    def _finish(self, ident: bytes, task: Task, ok: bool, value: Any) -> None:
        done = self.scheduler.complete(ident, task.id, ok=ok)
        if done is not None:
            self._later.append((done.future, ok, value))

    # -- receiving ---------------------------------------------------------------------
    def _receive(self) -> bool:
        """Handle what has arrived; True if the batch limit left messages unread."""
        router = self._router
        for _ in range(RECV_BATCH):
            # read until empty (the FD is edge-triggered): one zmq.Again (~4 µs) per
            # wake-up is cheaper than asking ZMQ_EVENTS (~2 µs) before every message
            try:
                frames = recv_frames(router, _NOBLOCK)
            except zmq.Again:
                return False
            ident = frames[0].bytes
            try:
                for msg in decode(self._key, frames[1:], None, ident in self._local):
                    self._on_message(ident, msg)
            except ProtocolError as exc:
                self._dropped(ident, str(exc))
            except Exception:  # a bug handling one message must not take the broker down
                logger.exception("error while handling a message from %s", ident.hex()[:12])
        return True

    def _dropped(self, ident: bytes, why: str) -> None:
        self._drop_log(f"peer {ident.hex()[:12]}", why)

    def _on_message(self, ident: bytes, msg: Any) -> None:
        kind = msg.kind
        if kind == Kind.READY:
            self._on_ready(ident, msg)
            return
        if kind == Kind.STATUS or kind == Kind.STOP_WORKERS or kind == Kind.END_RUN:
            if msg.session != self._session and (  # a URL + key client knows no session:
                    msg.session != b"\0" * 8 or abs(msg.seq / 1e6 - time.time()) > 300):
                raise ProtocolError("status request from another session")  # or a stale one
            if kind != Kind.STATUS:  # clients number requests by the clock
                if msg.seq <= self._last_stop_seq:
                    raise ProtocolError(f"replayed {kind.name} (seq {msg.seq})")
                self._last_stop_seq = msg.seq
            self._on_status(ident, kind)
            return
        if msg.session != self._session:
            raise ProtocolError("message from another session (another executor, or a replay)")
        is_hb = len(ident) == WORKER_ID_SIZE + len(HB_SUFFIX) and ident.endswith(HB_SUFFIX)
        wid = ident[:WORKER_ID_SIZE] if is_hb else ident
        if wid not in self._seen_workers:  # keeps _last_seq bounded by real workers
            raise ProtocolError(f"{kind.name} from a peer that never sent READY (a replay?)")
        last = self._last_seq.get(ident, 0)
        if msg.seq <= last:
            raise ProtocolError(f"replayed or reordered message (seq {msg.seq} <= {last})")
        self._last_seq[ident] = msg.seq
        now = time.monotonic()
        w = self.scheduler.seen(wid, now)
        if kind == Kind.HEARTBEAT:
            if w is None:
                self._send(ident, encode(self._key, Kind.SHUTDOWN, self._session, self._next_seq()))
            else:
                if not is_hb and wid in self._initializing:  # its initializer succeeded
                    self._initializing.discard(wid)
                    self._worker_started(w)
                self._send(ident, encode(self._key, Kind.HEARTBEAT, self._session, self._next_seq()))
        elif kind == Kind.RESULT:
            self._on_result(wid, msg)
            if w is None:  # a worker we declared lost: its late result is taken, it goes
                self._send(ident, encode(self._key, Kind.SHUTDOWN, self._session, self._next_seq()))
        elif kind == Kind.GOODBYE:
            reason = (msg.json() or {}).get("reason", "")
            if w is not None:
                logger.info("worker %s is leaving (%s)", w.name, reason)
                self.scheduler.drain_worker(wid)
                self._release_drained(w)
        elif kind == Kind.START_FAILED:
            text = (msg.json() or {}).get("error", "")
            name = w.name if w else ident.hex()
            logger.error("worker %s could not start: %s", name, text)
            self._note_start_failure(WorkerStartError(f"worker {name} failed to start", text))
            if w is not None:
                self._forget(w, lost=False)
        else:
            raise ProtocolError(f"unexpected {kind.name} from a worker")

    def _on_ready(self, ident: bytes, msg: Any) -> None:
        info = msg.json() or {}
        if len(ident) != WORKER_ID_SIZE or info.get("worker") != ident.hex():
            raise ProtocolError("READY whose worker id does not match its socket")
        if ident in self._seen_workers:
            raise ProtocolError("READY from a worker id seen before (replay)")
        self._seen_workers.add(ident)
        self._last_seq[ident] = msg.seq
        if info.get("local") is True:  # it dialed our Unix socket (signed, so a key holder says so)
            self._local.add(ident)
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
        }
        frames: list[Any] = [json.dumps(welcome).encode()]
        flags = 0
        if self._init_frames is not None:
            frames += self._init_frames
            flags = Flag.HAS_SETUP
        self._send(ident, encode(self._key, Kind.WELCOME, self._session, self._next_seq(),
                                 flags=flags, serializer=self._init_ser, frames=frames,
                                 local=ident in self._local))
        logger.info("worker %s joined (tag %s, python %s)", name, tag or "-", info.get("python", "?"))
        if self._init_frames is None:
            self._worker_started(w)
        else:  # started once its initializer ran (it says so with a main-socket HEARTBEAT)
            self._initializing.add(ident)

    def _worker_started(self, w: WorkerRecord) -> None:
        """The worker is ready for work: launchers and the executor count it as started."""
        if w.tag:
            self.connected_tags.add(w.tag)
            self.ever_connected_tags.add(w.tag)
        self.start_error = None
        if self._on_joined is not None:
            self._on_joined(w)

    def _on_status(self, ident: bytes, kind: Kind) -> None:
        if kind == Kind.STOP_WORKERS:
            for w in list(self.scheduler.workers.values()):
                self._send(w.ident, encode(self._key, Kind.DRAIN, self._session, self._next_seq()))
                self.scheduler.drain_worker(w.ident)
                self._release_drained(w)
        elif kind == Kind.END_RUN:
            self._end_run()
        now = time.monotonic()
        self._watchers[ident] = now
        if len(self._watchers) > 64:  # bounded: forget those that stopped asking
            self._watchers = {i: t for i, t in self._watchers.items() if now - t < 60}
        self._send(ident, self._status_reply("ending" if self._stop_when_idle else "running"))

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
        return encode(self._key, Kind.STATUS_REPLY, self._session, self._next_seq(),
                      frames=[json.dumps(stats).encode()])

    def _end_run(self) -> None:
        """``impexec end``: no future may wait on a run that nobody will serve any more."""
        self.ended = True
        self.cancel_pending()
        ended = CancelledError("the run was ended by `impexec end` while this task was on a worker")
        for t in self.scheduler.fail_all():  # the held ones: their results are not awaited
            self._later.append((t.future, False, ended))
        for w in list(self.scheduler.workers.values()):
            self._send(w.ident, encode(self._key, Kind.SHUTDOWN, self._session, self._next_seq(),
                                       aux=1))
            self._forget(w, lost=False)
        self._stop_when_idle = True

    def _on_result(self, wid: bytes, msg: Any) -> None:
        if msg.flags & Flag.NEED_SETUP:
            self.scheduler.needs_setup(wid, msg.task_id)
            return
        if msg.flags & Flag.RELEASED:
            self.scheduler.release(wid, msg.task_id)
            return
        ok = bool(msg.flags & Flag.OK)
        task = self.scheduler.complete(wid, msg.task_id, ok=ok, run_s=msg.aux / 1e6, raised=msg.ctx_id)
        w = self.scheduler.workers.get(wid)
        if w is not None and w.draining:
            self._release_drained(w)
        if task is None:
            logger.debug("dropped a duplicate or late result for task %d", msg.task_id)
            return
        self._later.append((task.future, msg))  # unpickled outside the lock

    # -- worker loss -------------------------------------------------------------------
    def _release_drained(self, w: WorkerRecord) -> None:
        if w.draining and not w.assigned:
            self._send(w.ident, encode(self._key, Kind.SHUTDOWN, self._session, self._next_seq()))
            self._forget(w, lost=False)

    def _forget(self, w: WorkerRecord, *, lost: bool) -> None:
        for lt in self.scheduler.remove_worker(w.ident, lost=lost):
            names = ", ".join(lt.task.lost_on)
            self._later.append((lt.task.future, False, WorkerLostError(
                f"the task's worker was lost on each of its {lt.attempts} attempts "
                f"(max_retries={self.scheduler.max_retries}; workers: {names}); the task "
                "probably kills its worker (crash, os._exit, out of memory)",
                attempts=lt.attempts, workers=tuple(lt.task.lost_on),
            )))
        self._initializing.discard(w.ident)
        self._local.discard(w.ident)
        if w.tag:
            self.connected_tags.discard(w.tag)
            self._tags.pop(w.tag, None)

    def worker_lost(self, ident: bytes, why: str) -> None:
        """Broker thread: declare a worker lost and requeue its work."""
        w = self.scheduler.workers.get(ident)
        if w is None:
            return
        logger.warning("worker %s lost (%s); %d task(s) go back to the queue", w.name, why, len(w.assigned))
        # if it is only stopped, it learns on waking that it is no longer wanted
        self._send(ident, encode(self._key, Kind.SHUTDOWN, self._session, self._next_seq()))
        self._send(ident + HB_SUFFIX, encode(self._key, Kind.SHUTDOWN, self._session, self._next_seq()))
        self._forget(w, lost=True)

    def tag_exited(self, tag: str, why: str) -> None:
        """Broker thread: a launcher saw the process behind *tag* exit."""
        ident = self._tags.get(tag)
        if ident is not None:
            self.worker_lost(ident, why)

    def _note_start_failure(self, err: WorkerStartError) -> None:
        self.start_error = err

    def fail_open_tasks(self, err: BaseException) -> None:
        """Broker thread: no worker can start: every open future fails with *err*."""
        for t in self.scheduler.fail_all():
            self._later.append((t.future, False, err))

    def _rebalance(self) -> None:
        for w, n in self.scheduler.rebalance():
            logger.debug("asking worker %s to give back up to %d queued task(s)", w.name, n)
            self._send(w.ident, encode(self._key, Kind.RECALL, self._session, self._next_seq(), aux=n))

    def _housekeeping(self, now: float) -> None:
        for w in self.scheduler.expire(now):
            self.worker_lost(w.ident, f"no heartbeat for {now - w.last_seen:.1f} s")

    # -- context and shutdown commands (broker thread) ---------------------------------
    def drop_context(self, ctx_id: int) -> None:
        self._contexts.pop(ctx_id, None)
        for w in self.scheduler.drop_context(ctx_id):
            self._send(w.ident, encode(self._key, Kind.DROP_CONTEXT, self._session,
                                       self._next_seq(), ctx_id=ctx_id))

    def cancel_pending(self) -> None:
        for t in self.scheduler.cancel_pending():
            self._later.append((t.future, None, None))

    def _teardown(self) -> None:
        with self._lock:
            self._closed = True
            self._teardown_locked()
        self._flush()
        self.stopped.set()
        # what arrived while the sockets closed (after the drain in _teardown_locked):
        # from here on submit_now() and call() see `stopped` and clear the inbox themselves
        self._fail_orphans()
        self.idle_event.set()

    def _teardown_locked(self) -> None:
        try:
            now = time.monotonic()
            for ident, asked in self._watchers.items():
                if now - asked < 60:
                    self._send(ident, self._status_reply("ended"))
        except Exception:  # closing anyway; a watch then says it lost the executor
            logger.debug("could not tell the status watchers", exc_info=True)
        try:
            for ident in list(self.scheduler.workers):
                # main socket only: the worker finishes its loop and exits cleanly;
                # aux=1 says the executor is closing (exit status 0, not "dismissed")
                self._send(ident, encode(self._key, Kind.SHUTDOWN, self._session, self._next_seq(),
                                         aux=1))
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
            elif isinstance(item, _Call):
                item()  # a statistics() or other call() waits for it
        # give ZeroMQ a moment to flush the SHUTDOWNs, then close
        self._guard.close()  # ZAP and monitor threads, before the socket and the context
        self._router.close(linger=200)
        self._wake_r.close()
        self._wake_w.close()
        self._zctx.term()


class _Call:
    """A function to run on the broker thread for :meth:`Broker.call`, with its future."""

    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn
        self.future: Future[Any] = Future()

    def __call__(self) -> None:
        try:
            self.future.set_result(self.fn())
        except BaseException as exc:
            self.future.set_exception(exc)


def _claim(task: Task) -> bool:
    if task.claimed:  # a resubmitted task: claimed at its first dispatch
        return True
    task.claimed = True  # a plain attribute: Future.running() takes the future's lock
    return bool(task.future.set_running_or_notify_cancel())


def _resolve_message(future: Any, msg: Any) -> None:
    """Unpickle a RESULT's payload (its signature was verified) into its future."""
    ok = bool(msg.flags & Flag.OK)
    try:
        value = get_serializer(msg.serializer).loads(msg.frames)
    except (Exception, SystemExit) as exc:  # a SystemExit from a __reduce__: not the end of this thread
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
