"""The scheduling policy, without sockets or processes; time from ``fake_clock``."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest

from impexec._scheduler import (
    LOCALITY_SCAN,
    MAX_PREFETCH,
    Assignment,
    LostTask,
    Scheduler,
    Task,
)

ALWAYS = lambda task: True  # noqa: E731  (claim: nothing was cancelled)


def make(n_workers: int = 2, now: float = 0.0, **options: Any) -> Scheduler:
    s = Scheduler(**options)
    for i in range(n_workers):
        s.add_worker(f"w{i}".encode(), f"w{i}", now)
    return s


def submit(s: Scheduler, *ids: int, ctx: int = 0) -> list[Task]:
    out = [Task(i, [b"fn", b"args"], ctx_id=ctx) for i in ids]
    for t in out:
        s.submit(t)
    return out


def placed(assignments: list[Assignment]) -> list[tuple[int, bytes]]:
    return [(a.task.id, a.worker.ident) for a in assignments]


def finish(s: Scheduler, task: Task, ok: bool = True, run_s: float = 0.0) -> Task | None:
    assert task.worker is not None
    return s.complete(task.worker, task.id, ok=ok, run_s=run_s)


# -- dispatch order and credits --------------------------------------------------------
def test_tasks_dispatched_in_submit_order_idle_workers_first() -> None:
    s = make(2, prefetch=1)
    submit(s, 1, 2, 3, 4, 5)
    out = placed(s.assign(ALWAYS))
    # each idle worker gets one before any gets a second (prefetched) task
    assert out == [(1, b"w0"), (2, b"w1"), (3, b"w0"), (4, b"w1")]
    assert s.n_pending == 1
    st = s.statistics()
    assert (st.queued, st.running, st.workers) == (1, 4, 2)


def test_prefetch_zero_holds_one_task_per_worker() -> None:
    s = make(2, prefetch=0)
    tasks = submit(s, 1, 2, 3)
    assert placed(s.assign(ALWAYS)) == [(1, b"w0"), (2, b"w1")]
    assert s.assign(ALWAYS) == []
    assert finish(s, tasks[1]) is tasks[1]
    assert placed(s.assign(ALWAYS)) == [(3, b"w1")]  # the freed credit goes to w1


def test_prefetch_credit_bounds_tasks_per_worker() -> None:
    s = make(1, prefetch=3)
    submit(s, *range(1, 11))
    assert len(s.assign(ALWAYS)) == 4  # the running one + 3 prefetched
    assert len(s.workers[b"w0"].assigned) == 4


def test_adaptive_prefetch_grows_for_short_tasks() -> None:
    s = make(1)
    tasks = submit(s, *range(1, 201))
    first = s.assign(ALWAYS)
    assert len(first) == 1  # nothing known yet (tasks may be long): no prefetch
    finish(s, tasks[0], run_s=1e-6)  # very short tasks: hold more to hide the round trip
    more = s.assign(ALWAYS)
    assert len(s.workers[b"w0"].assigned) == 1 + MAX_PREFETCH
    assert len(more) == 1 + MAX_PREFETCH


def test_adaptive_prefetch_stays_low_for_long_tasks() -> None:
    s = make(1)
    tasks = submit(s, *range(1, 10))
    s.assign(ALWAYS)
    finish(s, tasks[0], run_s=5.0)
    s.assign(ALWAYS)
    assert len(s.workers[b"w0"].assigned) == 2


# -- contexts --------------------------------------------------------------------------
def test_context_locality_prefers_the_worker_holding_it() -> None:
    s = make(3, prefetch=0)
    (t1,) = submit(s, 1, ctx=7)
    (a,) = s.assign(ALWAYS)
    assert a.with_setup  # first task of the context there: send the setup along
    holder = a.worker.ident
    finish(s, t1)
    submit(s, 2, ctx=7)
    (b,) = s.assign(ALWAYS)
    assert b.worker.ident == holder
    assert not b.with_setup


def test_needs_setup_resends_with_setup() -> None:
    s = make(1, prefetch=0)
    (t1,) = submit(s, 1, ctx=5)
    s.assign(ALWAYS)
    finish(s, t1)
    (t2,) = submit(s, 2, ctx=5)
    (a,) = s.assign(ALWAYS)
    assert not a.with_setup
    s.needs_setup(b"w0", 2)  # the worker evicted it meanwhile
    assert t2.state == "pending"
    (again,) = s.assign(ALWAYS)
    assert again.task is t2
    assert again.with_setup


def test_drop_context_forgets_holders() -> None:
    s = make(2, prefetch=0)
    submit(s, 1, 2, ctx=3)
    s.assign(ALWAYS)
    holders = s.drop_context(3)
    assert sorted(w.ident for w in holders) == [b"w0", b"w1"]
    assert s.drop_context(3) == []


def test_contexts_per_worker_are_bounded_lru() -> None:
    s = make(1, prefetch=0, max_contexts=2)
    for ctx in (1, 2, 3):
        (t,) = submit(s, ctx, ctx=ctx)
        s.assign(ALWAYS)
        finish(s, t)
    assert list(s.workers[b"w0"].contexts) == [2, 3]


# -- heartbeats and lost workers -------------------------------------------------------
def test_heartbeat_expiry_with_fake_clock(fake_clock: Any) -> None:
    s = make(2, now=fake_clock(), heartbeat_timeout=0.5)
    fake_clock.advance(0.4)
    assert s.expire(fake_clock()) == []
    s.seen(b"w1", fake_clock())
    fake_clock.advance(0.2)
    assert [w.ident for w in s.expire(fake_clock())] == [b"w0"]
    fake_clock.advance(1.0)
    assert sorted(w.ident for w in s.expire(fake_clock())) == [b"w0", b"w1"]
    assert s.seen(b"unknown", fake_clock()) is None


def test_lost_worker_requeues_queued_without_penalty_and_charges_running() -> None:
    s = make(2, prefetch=2)
    tasks = submit(s, 1, 2, 3, 4, 5, 6)
    s.assign(ALWAYS)
    on_w0 = list(s.workers[b"w0"].assigned.values())
    assert len(on_w0) == 3
    assert on_w0[0].id == 1  # the one w0 runs; the other two are queued there
    assert s.remove_worker(b"w0", lost=True) == []
    assert [t.attempts for t in on_w0] == [1, 0, 0]  # only the running one is charged
    assert all(t.state == "pending" for t in on_w0)
    assert on_w0[0].lost_on == ["w0"]
    st = s.statistics()
    assert (st.workers, st.workers_lost, st.resubmitted, st.queued) == (1, 1, 3, 3)
    on_w1 = [t for t in tasks if t not in on_w0]
    assert all(t.state == "assigned" and t.worker == b"w1" for t in on_w1)  # w1 keeps its own


def test_goodbye_charges_nothing() -> None:
    s = make(1, prefetch=1)
    tasks = submit(s, 1, 2)
    s.assign(ALWAYS)
    s.remove_worker(b"w0", lost=False)
    assert [t.attempts for t in tasks] == [0, 0]
    assert s.statistics().workers_lost == 0


def test_requeued_tasks_go_first_in_original_order() -> None:
    s = make(1, prefetch=1)
    submit(s, 1, 2, 3)
    s.assign(ALWAYS)
    s.remove_worker(b"w0", lost=False)
    s.add_worker(b"w8", "w8", 0.0)
    s.add_worker(b"w9", "w9", 0.0)
    # back at the front, in order; each alone on a worker (it was on one that left)
    assert placed(s.assign(ALWAYS)) == [(1, b"w8"), (2, b"w9")]


def test_suspect_task_runs_alone() -> None:
    s = make(2, prefetch=3)
    submit(s, 1)
    s.assign(ALWAYS)
    s.remove_worker(b"w0", lost=True)
    submit(s, 2, 3)
    out = placed(s.assign(ALWAYS))
    assert out[0] == (1, b"w1")
    assert all(w != b"w1" for tid, w in out[1:])  # nothing else joins it on w1


def test_max_retries_then_lost_task() -> None:
    s = make(0, max_retries=1, prefetch=0)
    (t,) = submit(s, 1)
    for attempt, name in enumerate((b"a", b"b")):
        s.add_worker(name, name.decode(), 0.0)
        (a,) = s.assign(ALWAYS)
        assert a.task is t
        lost = s.remove_worker(name, lost=True)
        if attempt == 0:
            assert lost == []
    assert lost == [LostTask(t, 2)]
    assert t.state == "done"
    assert t.lost_on == ["a", "b"]
    assert s.idle()
    assert s.statistics().failed == 1


def test_other_tasks_go_on_after_a_lost_task() -> None:
    s = make(2, max_retries=0, prefetch=0)
    a, b = submit(s, 1, 2)
    s.assign(ALWAYS)
    assert [lt.task for lt in s.remove_worker(a.worker, lost=True)] == [a]  # type: ignore[arg-type]
    assert finish(s, b) is b


def test_late_duplicate_result_is_ignored() -> None:
    s = make(2, prefetch=0)
    (t,) = submit(s, 1)
    s.assign(ALWAYS)
    first = t.worker
    s.remove_worker(first, lost=True)  # type: ignore[arg-type]
    s.assign(ALWAYS)
    assert t.worker == b"w1"
    assert finish(s, t) is t
    assert s.complete(first, 1, ok=True) is None  # type: ignore[arg-type]  # the lost one answers late
    assert s.complete(b"w1", 1, ok=True) is None  # and a duplicate of the winner
    st = s.statistics()
    assert (st.done, st.failed) == (1, 0)


def test_result_from_a_worker_thought_lost_completes_the_requeued_task() -> None:
    s = make(1, prefetch=0)
    (t,) = submit(s, 1)
    s.assign(ALWAYS)
    s.remove_worker(b"w0", lost=True)
    assert t.state == "pending"
    assert s.complete(b"w0", 1, ok=True) is t  # first result wins, even from it
    s.add_worker(b"w1", "w1", 0.0)
    assert s.assign(ALWAYS) == []  # the finished task is not sent again
    assert s.idle()


# -- cancel, drain, shutdown -----------------------------------------------------------
def test_claim_false_drops_a_cancelled_task() -> None:
    s = make(2, prefetch=0)
    submit(s, 1, 2, 3)
    out = placed(s.assign(lambda task: task.id != 2))
    assert out == [(1, b"w0"), (3, b"w1")]
    assert 2 not in s.tasks
    assert s.statistics().cancelled == 1


def test_cancel_pending_removes_only_unsent() -> None:
    s = make(1, prefetch=0)
    submit(s, 1, 2, 3)
    s.assign(ALWAYS)
    assert [t.id for t in s.cancel_pending()] == [2, 3]
    assert list(s.tasks) == [1]
    assert s.statistics().cancelled == 2


def test_drained_worker_gets_nothing_more() -> None:
    s = make(2, prefetch=0)
    s.drain_worker(b"w0")
    submit(s, 1, 2)
    assert placed(s.assign(ALWAYS)) == [(1, b"w1")]


def test_fail_all_closes_every_open_task() -> None:
    s = make(1, prefetch=0)
    submit(s, 1, 2)
    s.assign(ALWAYS)
    assert sorted(t.id for t in s.fail_all()) == [1, 2]
    assert s.idle()
    assert s.statistics().failed == 2


def test_invalid_options() -> None:
    with pytest.raises(ValueError):
        Scheduler(max_retries=-1)
    with pytest.raises(ValueError):
        Scheduler(prefetch=-1)


# -- cost ------------------------------------------------------------------------------
class _CountingContexts(OrderedDict):  # type: ignore[type-arg]
    lookups = 0

    def __contains__(self, key: object) -> bool:
        _CountingContexts.lookups += 1
        return super().__contains__(key)


def test_assign_does_not_scan_every_worker() -> None:
    n = 5000
    s = make(n, prefetch=0)
    for w in s.workers.values():
        w.contexts = _CountingContexts()
    _CountingContexts.lookups = 0
    submit(s, 1, ctx=42)  # a context no worker holds: the locality scan must give up early
    (a,) = s.assign(ALWAYS)
    assert _CountingContexts.lookups <= 2 * (LOCALITY_SCAN + 2)
    # a full round: every worker gets one task; every step stays bounded
    submit(s, *range(2, n + 1), ctx=42)
    _CountingContexts.lookups = 0
    assert len(s.assign(ALWAYS)) == n - 1
    assert _CountingContexts.lookups <= (n - 1) * 2 * (LOCALITY_SCAN + 2)
    assert a.with_setup


# -- the pool invariant ------------------------------------------------------------------
def test_a_worker_that_ran_a_suspect_task_returns_to_a_pool() -> None:
    """The replacement of a dead worker runs the suspect task alone (isolated). When the
    task ends and the adaptive capacity rises (its first measured run time), the worker
    must be back in a pool: it stayed out of every pool, and nothing ran again."""
    s = make(1)
    s.check_invariants()
    (t,) = submit(s, 1)
    s.assign(ALWAYS)
    s.check_invariants()
    s.remove_worker(b"w0", lost=True)  # it died running t
    s.add_worker(b"w1", "w1", 1.0)  # the launcher's replacement
    assert placed(s.assign(ALWAYS)) == [(1, b"w1")]
    s.check_invariants()
    assert s.workers[b"w1"].isolated
    assert finish(s, t, run_s=1.0) is t  # capacity 1 -> 2
    s.check_invariants()
    submit(s, 2)
    assert placed(s.assign(ALWAYS)) == [(2, b"w1")]
    s.check_invariants()


def test_invariant_holds_through_a_random_run() -> None:
    """Random submits, completions, kills, joins, recalls and drains on a fake clock:
    the pool invariant is checked after every transition."""
    import random

    rng = random.Random(12)
    s = make(3)
    next_id, next_w, now = 1, 3, 0.0
    for _ in range(5000):
        now += 0.01
        roll = rng.random()
        if roll < 0.35:
            submit(s, next_id, ctx=rng.choice((0, 0, 1, 2)))
            next_id += 1
        elif roll < 0.7:
            held = [t for w in s.workers.values() for t in w.assigned.values()]
            if held:
                t = rng.choice(held)
                s.complete(t.worker, t.id, ok=True, run_s=rng.choice((0.0, 1e-4, 0.5)))
        elif roll < 0.75 and s.workers:
            s.remove_worker(rng.choice(list(s.workers)), lost=rng.random() < 0.8)
        elif roll < 0.8:
            s.add_worker(f"w{next_w}".encode(), f"w{next_w}", now)
            next_w += 1
        elif roll < 0.9:
            for w, n in s.rebalance(now):
                for tid in list(w.assigned)[-n:]:
                    s.release(w.ident, tid)
        elif roll < 0.92 and len(s.workers) > 1:
            s.drain_worker(rng.choice(list(s.workers)))
        elif roll < 0.95:
            held = [t for w in s.workers.values() for t in list(w.assigned.values())[1:]]
            if held:
                t = rng.choice(held)
                s.needs_setup(t.worker, t.id)
        s.assign(ALWAYS)
        s.check_invariants()
    assert s.statistics().done > 500


def test_a_recall_that_got_no_answer_is_asked_again_later() -> None:
    s = make(2, prefetch=4)
    submit(s, *range(1, 6))
    s.assign(ALWAYS)
    w0 = s.workers[b"w0"]
    for tid in list(s.workers[b"w1"].assigned):
        s.complete(b"w1", tid, ok=True)
    s.assign(ALWAYS)
    first = s.rebalance(10.0)
    assert [(w.ident, n) for w, n in first] == [(b"w0", len(w0.assigned) // 2)]
    assert s.rebalance(10.5) == []  # asked, no answer yet: not again at once
    assert [w.ident for w, _ in s.rebalance(11.5)] == [b"w0"]  # the RECALL may be lost


def test_a_task_its_dead_worker_never_acknowledged_goes_back_free_then_runs_alone() -> None:
    """A task sent to a worker that had already died (it never acknowledged the message)
    is not charged; as a suspect it runs alone next, and is charged if that worker dies
    too (a task that kills its worker before any acknowledgement still fails in the end)."""
    s = make(1, max_retries=1)
    (t,) = submit(s, 1)
    s.assign(ALWAYS)
    t.sent_seq = 5  # the broker's number of that TASK message
    assert s.remove_worker(b"w0", lost=True, received_upto=4) == []  # never acknowledged
    assert t.attempts == 0 and t.suspect
    s.add_worker(b"w1", "w1", 1.0)
    s.assign(ALWAYS)
    assert s.workers[b"w1"].isolated
    t.sent_seq = 2
    assert s.remove_worker(b"w1", lost=True, received_upto=1) == []  # alone: charged anyway
    assert t.attempts == 1
    s.add_worker(b"w2", "w2", 2.0)
    s.assign(ALWAYS)
    t.sent_seq = 2
    (lost,) = s.remove_worker(b"w2", lost=True, received_upto=1)
    assert lost.task is t and lost.attempts == 2  # max_retries=1: out of attempts
