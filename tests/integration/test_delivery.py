"""End-to-end delivery with real workers: every future completes exactly once.

Network faults (reset, black hole, delay) through a relay are in tests/network; these are
the cases that need no relay.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import delivery_tasks as dt
from impexec import ClusterExecutor, SerializationError
from waiting import wait_until


def test_worker_that_ran_a_resubmitted_task_gets_work_again(tmp_path: Path) -> None:
    """The replacement runs the suspect task alone; afterwards it must take work again
    (it stayed out of every pool, and the next task waited forever)."""
    flag = tmp_path / "started"
    with ClusterExecutor(1, heartbeat_interval=0.2, heartbeat_timeout=2.0) as ex:
        f = ex.submit(dt.started_then_sleep, str(flag), 1.0)
        wait_until(flag.exists, 60, f"{flag.name} to appear")
        os.kill(ex.launchers[0].processes()[0].pid, signal.SIGKILL)
        f.result(timeout=60)  # ran again, on the replacement
        assert ex.statistics().resubmitted == 1
        assert ex.submit(abs, -1).result(timeout=30) == 1
        assert list(ex.map(abs, range(-20, 0), timeout=30)) == list(range(20, 0, -1))


def test_stranded_workers_after_repeated_kills_keep_taking_maps(tmp_path: Path) -> None:
    """Two workers, tiny tasks, one kill per map: every map completes."""
    with ClusterExecutor(2, heartbeat_interval=0.2, heartbeat_timeout=2.0) as ex:
        for round_ in range(3):
            flag = tmp_path / f"started-{round_}"
            slow = ex.submit(dt.started_then_sleep, str(flag), 0.5)
            it = ex.map(abs, range(-300, 0), timeout=90)
            wait_until(flag.exists, 60, f"{flag.name} to appear")
            procs = ex.launchers[0].processes()
            os.kill(procs[0].pid, signal.SIGKILL)
            assert list(it) == list(range(300, 0, -1))
            slow.result(timeout=60)


def test_a_result_that_raises_systemexit_when_unpickled_fails_only_its_future() -> None:
    """BaseException while the client unpickles a result: SerializationError in that
    future; the broker lives on (it died, and every later submit raised)."""
    with ClusterExecutor(1) as ex:
        f = ex.submit(dt.exit_when_unpickled)
        with pytest.raises(SerializationError, match="SystemExit"):
            f.result(timeout=60)
        assert ex._broker.is_alive()
        assert ex.submit(abs, -7).result(timeout=60) == 7


def test_queued_tasks_leave_a_busy_worker_while_its_task_runs(tmp_path: Path) -> None:
    """After a large map has taught the prefetch that tasks are tiny, a long task and
    short ones: the short ones queued behind the long one must move to the idle worker
    while it runs (the worker used to read RECALL only between tasks).

    The long task waits for every short one to have run and returns how many did: it
    can only see them all if none stayed queued behind it.
    """
    marks = tmp_path / "marks"
    marks.mkdir()
    n = 12
    with ClusterExecutor(2, heartbeat_interval=0.2, heartbeat_timeout=5.0) as ex:
        assert sum(ex.map(abs, range(3000))) == sum(range(3000))
        long = ex.submit(dt.wait_for_marks, str(marks), n, 20.0)
        short = [ex.submit(dt.mark, str(marks), f"m{i}") for i in range(n)]
        assert long.result(timeout=60) == n
        assert len({f.result(timeout=60) for f in short}) >= 1
        assert ex.statistics().rebalanced >= 1


def test_two_long_tasks_after_a_large_map_run_on_two_workers(tmp_path: Path) -> None:
    """Two long tasks on two workers run at once, even right after tiny tasks made the
    prefetch deep: each waits (bounded) for the other to start."""
    marks = tmp_path / "marks"
    marks.mkdir()
    with ClusterExecutor(2, heartbeat_interval=0.2, heartbeat_timeout=5.0) as ex:
        assert sum(ex.map(abs, range(3000))) == sum(range(3000))

        fs = [ex.submit(_mark_and_wait, str(marks), f"t{i}", 2, 20.0) for i in range(2)]
        seen = [f.result(timeout=60) for f in fs]
    assert seen == [2, 2]


def _mark_and_wait(directory: str, name: str, n: int, timeout: float) -> int:
    dt.mark(directory, name)
    return dt.wait_for_marks(directory, n, timeout)
