"""statistics() counts calls (items) as well as tasks: a map chunk holds many calls."""

from __future__ import annotations

from impexec._scheduler import Scheduler, Task

ALWAYS = lambda task: True  # noqa: E731


def chunk(task_id: int, items: int) -> Task:
    return Task(task_id, [b"fn", b"args"], items=items)


def figures(s: Scheduler) -> tuple[int, ...]:
    st = s.statistics()
    return st.queued, st.running, st.done, st.failed, st.resubmitted, st.cancelled


def test_items_follow_their_chunks_through_every_outcome() -> None:
    s = Scheduler(prefetch=0, max_retries=0)
    s.add_worker(b"w0", "w0", 0.0)
    s.add_worker(b"w1", "w1", 0.0)
    tasks = [chunk(i, 10 * i) for i in range(1, 6)]  # 10, 20, 30, 40, 50 calls
    for t in tasks:
        s.submit(t)
    assert figures(s) == (150, 0, 0, 0, 0, 0)
    s.assign(ALWAYS)  # chunks 1 and 2 run (prefetch 0: one each)
    assert figures(s) == (120, 30, 0, 0, 0, 0)
    s.complete(b"w0", 1, ok=True)  # 10 calls done
    s.complete(b"w1", 2, ok=True, raised=3)  # return_exceptions: 3 of 20 raised
    assert figures(s) == (120, 0, 27, 3, 0, 0)
    s.assign(ALWAYS)  # chunks 3 (w1, the most recently idle) and 4 (w0)
    lost = s.remove_worker(b"w1", lost=True)  # max_retries=0: chunk 3 fails for good
    assert [lt.task.id for lt in lost] == [3]
    assert figures(s) == (50, 40, 27, 33, 0, 0)
    s.complete(b"w0", 4, ok=False)  # a chunk that raised: none of its 40 calls gives a result
    assert figures(s) == (50, 0, 27, 73, 0, 0)
    assert [t.id for t in s.cancel_pending()] == [5]
    assert figures(s) == (0, 0, 27, 73, 0, 50)
    st = s.statistics()
    assert (st.tasks_done, st.tasks_failed, st.tasks_cancelled) == (2, 2, 1)


def test_resubmitted_items_are_counted_once_per_return_to_the_queue() -> None:
    s = Scheduler(prefetch=0, max_retries=2)
    s.add_worker(b"w0", "w0", 0.0)
    s.submit(chunk(1, 8))
    s.assign(ALWAYS)
    s.remove_worker(b"w0", lost=True)
    st = s.statistics()
    assert (st.queued, st.running, st.resubmitted, st.tasks_resubmitted) == (8, 0, 8, 1)
