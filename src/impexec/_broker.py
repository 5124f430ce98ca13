"""The broker thread: turns messages into Scheduler calls and Scheduler answers into messages.

Threading model::

    caller threads ── submit: Task → inbox deque (+ a wake-up byte if the broker sleeps) ──┐
                      or, when the lock is free, queue and dispatch it themselves           │
    launcher thread ─ worker exited / start failed → inbox (as a command) ─────────────────┤
                                                                                            ▼
    broker thread:  poll(ROUTER, pipes, wake-up) → RouterLink (verify, number, acknowledge)
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

import logging
import math
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import zmq

from ._errors import BrokenClusterError
from ._events import WorkerEvents
from ._outcomes import claim, resolve, settle
from ._peers import Peer
from ._protocol import Flag, Kind
from ._router import HB_SUFFIX, WORKER_ID_SIZE, RouterLink
from ._scheduler import REBALANCE_INTERVAL_S, Scheduler, Statistics, Task, WorkerRecord

logger = logging.getLogger(__name__)

__all__ = ["HB_SUFFIX", "RECV_BATCH", "WORKER_ID_SIZE", "Broker"]

#: Messages read from the ROUTER per poll wake-up before other work gets a turn.
RECV_BATCH = 512
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_BROKEN = "the executor's broker has stopped"


class Broker(WorkerEvents):
    """Runs the scheduler against real sockets on a thread of its own (module docstring).

    It holds its thread rather than subclassing ``threading.Thread``: a subclass shares
    the Thread's attribute namespace, and Python 3.13's ``Thread.__init__`` sets
    ``self._handle``, which replaced a method of that name here and broke every message.

    ``_lock`` guards the scheduler, the socket and the peer table. Caller threads take it
    to dispatch their own tasks (no hop through this thread); this thread holds it except
    while it sleeps in poll(). Futures are resolved outside it.
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
        self._init_events(welcome_extra, initializer_frames, initializer_serializer, on_worker_joined)
        self._inbox: deque[Any] = deque()
        self._sleeping = False
        self._stop_when_idle = False
        self.stopped = threading.Event()
        self.crash: BaseException | None = None
        self._link = RouterLink(
            key=key,
            session=session,
            address=address,
            rto=max(2 * heartbeat_interval, 0.2),
            max_rto=heartbeat_timeout,
            curve_secret=curve_secret,
            curve_clients=curve_clients,
            max_message_size=max_message_size,
            extra_binds=extra_binds,
        )
        self.address = self._link.address
        self._guard = self._link.guard
        self._drop_log = self._link.drop_log
        self._peers = self._link.peers
        self._wake_r, self._wake_w = _wakeup_pair()
        self._lock = threading.RLock()  # see the class docstring
        self._later: list[tuple[Any, ...]] = []  # (future, ok, value) or (future, msg)
        self._closed = False
        self._next_house = 0.0
        self._next_rebalance = 0.0
        self._polled: list[tuple[int, int]] = []  # the last poll's events, pipes among them

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
            # (and output a pipe kept: only this thread asks the poll for POLLOUT)
            readable = self._link.sock.getsockopt(_EVENTS) & _POLLIN or self._link.pipes.dirty
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
                resolve(item.future, False, BrokenClusterError(_BROKEN))
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

    def attach_pipe(self, sock: socket.socket) -> None:
        """Take the broker's end of a local worker's pipe (:mod:`._pipe`); any thread."""

        def add() -> None:
            if self._closed:
                sock.close()
            else:
                self._link.add_pipe(sock)

        self.enqueue(add)

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
        pipes = self._link.pipes
        poller, wake_fd = pipes.poller, self._wake_r.fileno()
        poller.register(self._link.sock.getsockopt(zmq.FD), select.POLLIN)
        poller.register(wake_fd, select.POLLIN)
        while True:
            with self._lock:
                state = self._turn()
                if state is None:
                    self._closed = True
                    return
                more, wake_at = state
                pipes.sync()
                self._sleeping = True
            if self._later:
                self._flush()
            if more or self._inbox:
                self._sleeping = False
                continue
            timeout = max(0.0, wake_at - time.monotonic())
            events = poller.poll(math.ceil(timeout * 1000))
            self._sleeping = False
            self._polled = events  # the pipes' part is taken under the lock (_turn)
            if any(fd == wake_fd for fd, _ in events):
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
        if self._polled:
            polled, self._polled = self._polled, []
            self._link.pipes.polled(polled)
        more = self._link.receive(self._on_message, RECV_BATCH)
        more = self._link.receive_pipes(self._on_message, RECV_BATCH) or more
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
        settle(later)

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
        for a in self.scheduler.assign(claim):
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
            msg = link.encode_main(
                peer,
                Kind.TASK,
                now,
                task_id=task.id,
                ctx_id=task.ctx_id,
                aux=task.attempts,
                flags=flags,
                serializer=task.ser,
                frames=frames,
            )
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


def _wakeup_pair() -> tuple[socket.socket, socket.socket]:
    """A socketpair other threads poke (one byte) to wake the broker from poll()."""
    r, w = socket.socketpair()
    r.setblocking(False)
    w.setblocking(False)
    return r, w
