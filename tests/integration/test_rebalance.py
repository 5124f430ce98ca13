"""Queued (prefetched) work moves to a worker that joins late or goes idle (RECALL)."""

from __future__ import annotations

import fault_tasks as ft
from impexec import ClusterExecutor
from processes import start_worker
from waiting import wait_until

FAST = {"heartbeat_interval": 0.05, "heartbeat_timeout": 2.0}


def test_late_joiner_takes_tasks_prefetched_by_a_busy_worker():
    with ClusterExecutor(None, prefetch=5, **FAST) as ex:
        first = start_worker(ex.connection_file())
        second = None
        try:
            wait_until(lambda: ex.statistics().workers == 1, 30, "the first worker to join")
            futs = [ex.submit(ft.slow_whoami, 0.5) for _ in range(6)]
            wait_until(
                lambda: ex.statistics().running == 6,
                30,
                "all six tasks on the only worker (1 running + 5 prefetched)",
            )
            assert ex.statistics().queued == 0
            second = start_worker(ex.connection_file())
            pids = [f.result(timeout=60) for f in futs]
            stats = ex.statistics()
        finally:
            ex.shutdown(wait=True)
            for p in (first, second):
                if p is not None:
                    assert p.wait(timeout=30) == 0
    # without RECALL all six would run on the first worker
    assert set(pids) == {first.pid, second.pid}
    assert stats.rebalanced >= 1
    assert stats.done == 6 and stats.failed == 0


def test_rebalance_keeps_results_exact_under_load():
    # many short tasks with a big fixed prefetch on 2 workers: recalls happen at the tail;
    # every result must still arrive once and be right
    with ClusterExecutor(2, prefetch=20, **FAST) as ex:
        futs = [ex.submit(ft.sleep_double, i, 0.002 * (i % 7)) for i in range(300)]
        assert [f.result(timeout=60) for f in futs] == [2 * i for i in range(300)]
        assert ex.statistics().done == 300
