"""Scheduling policy, free of I/O: which worker holds which task, and what to send next.

The broker thread translates sockets into calls on :class:`Scheduler` and the calls'
return values back into messages; the scheduler never touches a socket, a future or the
wall clock (``now`` is passed in), so it is tested with a fake clock.

State of a task::

    pending ──assign──▶ assigned(worker) ──complete──▶ done
       ▲                    │
       └──worker lost───────┘   (the worker's first task is charged an attempt;
                                 past max_retries it is done with WorkerLostError)

A worker runs its tasks in the order they were sent, so the first task in
``WorkerRecord.assigned`` is the one it is running and the rest are queued there
(prefetched). That is what lets a lost worker's queued tasks go back without penalty.

Costs: ``assign`` and ``complete`` are O(1) in the number of workers (two ordered pools of
workers with free slots, :mod:`._pools`, and a bounded scan for context locality); ``expire`` is O(workers)
and runs once per heartbeat interval, not per task.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

from ._pools import LOCALITY_SCAN as LOCALITY_SCAN
from ._pools import Pools
from ._records import ASSIGNED as ASSIGNED  # the records' home before: importers keep them
from ._records import DONE as DONE
from ._records import PENDING as PENDING
from ._records import Assignment as Assignment
from ._records import LostTask as LostTask
from ._records import Task as Task
from ._records import WorkerRecord as WorkerRecord
from ._stats import Counters
from ._stats import Statistics as Statistics

#: Adaptive prefetch aims to keep this much work (seconds) queued on each worker, so
#: that the next task is there when the current one ends (hides the round trip).
PREFETCH_TARGET_S = 0.002
#: Upper bound of the adaptive prefetch (tasks queued beyond the running one).
MAX_PREFETCH = 64
#: Seconds between looks for idle workers that could take queued work from busy ones.
REBALANCE_INTERVAL_S = 0.05
#: Seconds after which a worker asked to give back tasks (RECALL) that has not answered
#: may be asked again (the request travels on the heartbeat link, which may drop it).
RECALL_RETRY_S = 1.0
#: Default number of contexts a worker keeps set up at once (least recently used go).
DEFAULT_MAX_CONTEXTS = 8
#: Large repeated payloads (blobs) a worker keeps, least recently used evicted; the
#: worker uses the same bound (it must, for the broker's mirror to stay exact).
MAX_BLOBS = 16


class Scheduler:
    """The policy: queue, placement, prefetch credits, context locality, retries."""

    def __init__(
        self,
        *,
        max_retries: int = 3,
        heartbeat_timeout: float = 10.0,
        prefetch: int | None = None,
        max_contexts: int = DEFAULT_MAX_CONTEXTS,
    ):
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if prefetch is not None and prefetch < 0:
            raise ValueError("prefetch must be >= 0")
        self.max_retries = max_retries
        self.heartbeat_timeout = heartbeat_timeout
        self.prefetch = prefetch
        self.max_contexts = max_contexts
        self.workers: dict[bytes, WorkerRecord] = {}
        self.tasks: dict[int, Task] = {}  # open tasks (pending or assigned)
        self._pending: deque[Task] = deque()
        self._n_pending = 0
        self._pools = Pools()
        self._mean_run_s = 0.0
        self._counts = Counters()

    # -- workers -----------------------------------------------------------------------
    def add_worker(
        self, ident: bytes, name: str, now: float, tag: str = "", info: dict[str, Any] | None = None
    ) -> WorkerRecord:
        w = WorkerRecord(ident, name, tag, info or {}, last_seen=now, joined=now)
        self.workers[ident] = w
        self._pools.join(w)
        self._counts.tasks["workers_joined"] += 1
        return w

    def seen(self, ident: bytes, now: float) -> WorkerRecord | None:
        """The worker showed it was alive at *now* (never moves its last sign back)."""
        w = self.workers.get(ident)
        if w is not None and now > w.last_seen:
            w.last_seen = now
        return w

    def expire(self, now: float) -> list[WorkerRecord]:
        """Workers silent for longer than the heartbeat timeout (not yet removed)."""
        limit = now - self.heartbeat_timeout
        return [w for w in self.workers.values() if w.last_seen < limit]

    def drain_worker(self, ident: bytes) -> None:
        """Send the worker nothing more; it leaves when it has finished what it holds."""
        w = self.workers.get(ident)
        if w is not None:
            w.draining = True
            self._pools.discard(ident)

    def remove_worker(self, ident: bytes, *, lost: bool, received_upto: int | None = None) -> list[LostTask]:
        """Forget a worker; requeue its tasks. Returns the tasks that ran out of attempts.

        With ``lost`` (it died, or went silent) the task it was running is charged one
        attempt; a clean goodbye charges nothing.

        *received_upto*: the highest message number the worker acknowledged. A task whose
        message it never acknowledged may never have reached it (sent to a worker that
        had already died): it goes back free, as a suspect. Run alone next time, it is
        charged whatever the acknowledgements say, so a task that kills its worker before
        any acknowledgement leaves still runs out of attempts.
        """
        w = self.workers.pop(ident, None)
        if w is None:
            return []
        self._pools.discard(ident)
        if lost:
            self._counts.tasks["workers_lost"] += 1
        failed: list[LostTask] = []
        requeue: list[Task] = []
        for i, task in enumerate(w.assigned.values()):
            if task.state != ASSIGNED or task.worker != ident:
                continue  # already completed by a late result
            task.worker = None
            unseen = received_upto is not None and not w.isolated and task.sent_seq > received_upto
            if i == 0 and lost and not unseen:
                task.attempts += 1
                task.lost_on.append(w.name)
                if task.attempts > self.max_retries:
                    task.state = DONE
                    self.tasks.pop(task.id, None)
                    self._counts.closed(task, "failed")
                    failed.append(LostTask(task, task.attempts))
                    continue
            requeue.append(task)
        for task in reversed(requeue):  # back to the front, in their original order
            task.suspect = True
            task.state = PENDING
            self._pending.appendleft(task)
            self._n_pending += 1
            self._counts.resubmitted(task)
        w.assigned.clear()
        return failed

    # -- tasks -------------------------------------------------------------------------
    def submit(self, task: Task) -> None:
        task.state = PENDING
        self.tasks[task.id] = task
        self._pending.append(task)
        self._n_pending += 1
        self._counts.items["open"] += task.items

    def _capacity(self) -> int:
        if self.prefetch is not None:
            return 1 + self.prefetch
        if self._mean_run_s <= 0:
            # nothing has finished yet, so the tasks may be long: no prefetch, or the
            # first worker would hold tasks that a second, just starting, could run
            return 1
        extra = math.ceil(PREFETCH_TARGET_S / self._mean_run_s)
        return 1 + max(1, min(MAX_PREFETCH, extra))

    def _refile(self, w: WorkerRecord, capacity: int) -> None:
        """Put *w* in the pool that matches how many tasks it holds (and so end its
        isolation once it holds nothing)."""
        if w.isolated and not w.assigned:
            w.isolated = False
        self._pools.refile(w, capacity)

    def assign(self, claim: Callable[[Task], bool]) -> list[Assignment]:
        """Hand pending tasks to workers with free slots.

        ``claim(task)`` is asked just before a task is placed; False means it was
        cancelled and is dropped here (it never runs).
        """
        out: list[Assignment] = []
        if not self._pending:
            return out
        capacity = self._capacity()
        # a worker that filled up under an earlier, smaller capacity may take more now
        pending = self._pending
        pools = self._pools
        while pending and (pools.idle or pools.partial):
            task = pending[0]
            if task.state != PENDING:
                pending.popleft()  # completed meanwhile by a late result
                continue
            w: WorkerRecord | None
            if task.suspect:
                if not pools.idle:
                    break  # it runs alone: it waits for an idle worker
                w = self._isolate(task)
            else:
                w = pools.pick(task.ctx_id)
            assert w is not None
            pending.popleft()
            self._n_pending -= 1
            if not claim(task):
                task.state = DONE
                self.tasks.pop(task.id, None)
                self._counts.closed(task, "cancelled")
                continue
            out.append(self._hand(w, task, capacity))
        return out

    def _isolate(self, task: Task) -> WorkerRecord:
        """The idle worker a suspect task runs on, alone (one holding its context if any).

        A task that was on a worker when it died runs alone on an idle worker, so that if
        it kills this one too, the blame is certain. (With tasks queued behind or ahead of
        it, the broker cannot tell which one ran: a result sent just before the crash may
        never leave the process.)
        """
        w = self._pools.pick_idle(task.ctx_id)
        w.isolated = True
        return w

    def _hand(self, w: WorkerRecord, task: Task, capacity: int) -> Assignment:
        """Give *task* to *w*: mirror the context and blobs it will hold, refile *w*."""
        with_setup = bool(task.ctx_id) and w.hold_context(task.ctx_id, self.max_contexts)
        missing = w.hold_blobs(task, MAX_BLOBS) if task.blobs else frozenset()
        task.state = ASSIGNED
        task.worker = w.ident
        task.sent_setup, task.sent_blobs = with_setup, missing
        w.assigned[task.id] = task
        self._refile(w, capacity)
        return Assignment(w, task)

    def refresh_pools(self) -> None:
        """Return full workers to a pool after the adaptive capacity rose.

        Only the full ones can move: a worker in a pool holds fewer tasks than the old
        capacity, hence than the new one. Scanning the full ones instead of every worker keeps
        ``complete`` O(1) in the number of workers (with a thousand workers and no-op
        tasks the capacity rises often, and a scan of every worker showed in the broker
        thread's profile).
        """
        capacity = self._capacity()
        for w in list(self._pools.full.values()):
            self._refile(w, capacity)

    def complete(
        self, ident: bytes, task_id: int, *, ok: bool, run_s: float = 0.0, raised: int = 0
    ) -> Task | None:
        """A result arrived. Returns the task if it was still open (first result wins).

        *raised*: calls of a ``return_exceptions`` chunk that raised (its result is ok)."""
        w = self.workers.get(ident)
        if w is not None and (held := w.assigned.pop(task_id, None)) is not None:
            w.completed += 1
            w.items_done += held.items
            w.recalling = 0.0
            before = self._capacity()
            if run_s > 0:
                m = self._mean_run_s
                self._mean_run_s = run_s if m <= 0 else 0.8 * m + 0.2 * run_s
            capacity = self._capacity()
            # refile this worker in any case: it may be out of every pool (it ran a
            # suspect task alone), where refresh_pools, which looks only at full
            # workers, would never find it again
            self._refile(w, capacity)
            if capacity > before:
                self.refresh_pools()
        task = self.tasks.pop(task_id, None)
        if task is None:
            return None  # a duplicate, or the answer of a worker declared lost, too late
        if task.state == PENDING:
            self._n_pending -= 1  # it stays in the deque; assign skips it
        task.state = DONE
        self._counts.closed(task, "done" if ok else "failed", min(raised, task.items))
        return task

    def rebalance(self, now: float = 0.0) -> list[tuple[WorkerRecord, int]]:
        """Idle workers while others hold queued tasks and nothing waits here: recall.

        Returns (worker, n) pairs: ask that worker to give back up to n of the tasks queued
        on it (not started). Prefetched work would otherwise wait behind a long task while
        a worker that joined late, or finished early, sits idle. O(workers), so the
        broker calls it at most every REBALANCE_INTERVAL_S, and only when it can help.
        """
        if self._n_pending or not self._pools.idle:
            return []
        idle = len(self._pools.idle)
        retry = now - RECALL_RETRY_S
        donors = sorted(
            (
                w
                for w in self.workers.values()
                if len(w.assigned) >= 2 and not w.draining and (not w.recalling or w.recalling < retry)
            ),
            key=lambda w: len(w.assigned),
            reverse=True,
        )
        # one donor per idle worker, busiest first; each gives back half of what it holds
        # (never the running task), so queues even out within a round or two
        out = []
        for w in donors[:idle]:
            w.recalling = now or 1e-9
            out.append((w, len(w.assigned) // 2))
        return out

    def release(self, ident: bytes, task_id: int) -> Task | None:
        """The worker gave back an unstarted task (RECALL): queue it again, uncharged."""
        w = self.workers.get(ident)
        if w is None:
            return None
        task = w.assigned.pop(task_id, None)
        w.recalling = 0.0
        if task is None or task.state != ASSIGNED or task.worker != ident:
            self._refile(w, self._capacity())
            return None
        # the worker never read this task: forget the setup and blobs that came with it
        # (not those it held before, which would only travel again and be ignored; if
        # a task queued behind this one relied on them, that worker answers NEED_SETUP)
        w.forget(task, sent_only=True)
        task.state, task.worker = PENDING, None
        self._pending.appendleft(task)
        self._n_pending += 1
        self._counts.tasks["rebalanced"] += 1
        self._refile(w, self._capacity())
        return task

    def needs_setup(self, ident: bytes, task_id: int) -> None:
        """The worker lacks the context of a task we sent without setup: resend with it."""
        w = self.workers.get(ident)
        task = self.tasks.get(task_id)
        if w is None or task is None or task.worker != ident:
            return
        w.assigned.pop(task_id, None)
        w.forget(task, sent_only=False)
        task.state, task.worker = PENDING, None
        self._pending.appendleft(task)
        self._n_pending += 1
        self._refile(w, self._capacity())

    def cancel_pending(self) -> list[Task]:
        """Remove every task not yet sent (shutdown with cancel_futures)."""
        out = [t for t in self._pending if t.state == PENDING]
        self._pending.clear()
        self._n_pending = 0
        for t in out:
            t.state = DONE
            self.tasks.pop(t.id, None)
            self._counts.closed(t, "cancelled")
        return out

    def fail_all(self) -> list[Task]:
        """Close every open task (pending or assigned), e.g. when no worker can start."""
        out = list(self.tasks.values())
        for t in out:
            t.state = DONE
            self._counts.closed(t, "failed")
        self.tasks.clear()
        self._pending.clear()
        self._n_pending = 0
        for w in self.workers.values():
            w.assigned.clear()
            self._refile(w, self._capacity())
        return out

    def drop_context(self, ctx_id: int) -> list[WorkerRecord]:
        """Forget that workers hold *ctx_id*; returns those that did (to tell them)."""
        holders = [w for w in self.workers.values() if ctx_id in w.contexts]
        for w in holders:
            del w.contexts[ctx_id]
        return holders

    # -- introspection -----------------------------------------------------------------
    @property
    def has_idle_worker(self) -> bool:
        return bool(self._pools.idle)

    @property
    def n_pending(self) -> int:
        return self._n_pending

    def idle(self) -> bool:
        """No open task at all."""
        return not self.tasks

    def statistics(self) -> Statistics:
        # a task a lost worker's late result completed stays held by the worker that reruns
        # it (it gets nothing else meanwhile) but no longer runs for the user
        running = sum(t.state == ASSIGNED for w in self.workers.values() for t in w.assigned.values())
        items_running = sum(
            t.items for w in self.workers.values() for t in w.assigned.values() if t.state == ASSIGNED
        )
        return self._counts.snapshot(len(self.workers), self._n_pending, running, items_running)

    def check_invariants(self) -> None:
        """Raise AssertionError if the scheduler's state is inconsistent (for tests).

        After :meth:`assign`: a connected worker with a free slot is in a pool, and no
        task waits here while a worker could take it (a suspect task waits only for an
        idle worker, since it runs alone).
        """
        capacity = self._capacity()
        for ident, w in self.workers.items():
            self._pools.check(w, capacity)
            if w.draining or w.isolated:
                continue
            for tid, t in w.assigned.items():
                # DONE: a lost worker's late result completed it while this one reruns it
                assert t.state == DONE or (t.worker == ident and self.tasks.get(tid) is t), t
        waiting = [t for t in self._pending if t.state == PENDING]
        assert len(waiting) == self._n_pending, (len(waiting), self._n_pending)
        for t in waiting:
            assert t.worker is None and self.tasks.get(t.id) is t, t
        if waiting:
            assert not self._pools.idle, "a task waits while a worker is idle"
            if not waiting[0].suspect:
                assert not self._pools.partial, "a task waits while a worker has a free slot"
        for t in self.tasks.values():
            assert t.state in (PENDING, ASSIGNED), t
            if t.state == ASSIGNED:
                assert t.worker in self.workers and t.id in self.workers[t.worker].assigned, t
