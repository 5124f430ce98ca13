"""Queued (prefetched) work moves to a worker that joins late or goes idle (RECALL)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import fault_tasks as ft
from impexec import ClusterExecutor

TESTS_DIR = str(Path(__file__).resolve().parents[1])
FAST = {"heartbeat_interval": 0.05, "heartbeat_timeout": 2.0}


def _worker(conn_file: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "impexec", "worker", "--connect", conn_file], env=env)


def _wait_workers(ex: ClusterExecutor, n: int) -> None:
    deadline = time.monotonic() + 30
    while ex.statistics().workers < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ex.statistics().workers == n


def test_late_joiner_takes_tasks_prefetched_by_a_busy_worker():
    with ClusterExecutor(None, prefetch=5, **FAST) as ex:
        first = _worker(ex.connection_file())
        second = None
        try:
            _wait_workers(ex, 1)
            futs = [ex.submit(ft.slow_whoami, 0.5) for _ in range(6)]
            deadline = time.monotonic() + 30  # all six sit on the only worker (1 + 5 prefetched)
            while ex.statistics().running < 6 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert ex.statistics().queued == 0
            second = _worker(ex.connection_file())
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
