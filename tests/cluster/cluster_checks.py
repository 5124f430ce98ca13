"""Checks shared by test_slurm.py and test_sge.py (the same story on two schedulers)."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import pytest

import impexec
from waiting import wait_until

#: Heartbeats for cluster tests: quick to notice a loss, lenient with a loaded machine.
HEARTBEAT = {"heartbeat_interval": 0.25, "heartbeat_timeout": 5.0}
#: Seconds for anything a real scheduler does (queue, start, cancel, replace).
SCHEDULER_WAIT = 60.0


def where_am_i(x: int) -> tuple[int, str]:
    time.sleep(0.05)
    return x * x, os.environ.get("SLURM_ARRAY_TASK_ID") or os.environ.get("SGE_TASK_ID") or ""


def slow_square(x: int) -> int:
    time.sleep(0.4)
    return x * x


def array_runs_map(make_executor: Any, launcher: impexec.Launcher, n: int) -> Any:
    ex = make_executor(launcher, **HEARTBEAT)
    results = list(ex.map(where_am_i, range(60), timeout=SCHEDULER_WAIT))
    assert [r[0] for r in results] == [x * x for x in range(60)]
    assert {r[1] for r in results} <= {str(i) for i in range(n + 1)}
    assert "" not in {r[1] for r in results}  # every task ran inside an array task
    return ex


def cancelled_task_is_replaced(make_executor: Any, launcher: Any, cancel: list[str]) -> Any:
    ex = make_executor(launcher, **HEARTBEAT)
    futures = [ex.submit(slow_square, x) for x in range(24)]
    wait_until(lambda: ex.statistics().workers == 2, SCHEDULER_WAIT, "2 workers to connect")
    wait_until(lambda: ex.statistics().done >= 2, SCHEDULER_WAIT, "the first results")
    first_job = launcher.jobs[0]
    subprocess.run(
        [*cancel, launcher.task_keys(first_job, 1)[0]],
        check=True,
        timeout=30,
        capture_output=True,
    )
    assert [f.result(timeout=SCHEDULER_WAIT) for f in futures] == [x * x for x in range(24)]
    stats = ex.statistics()
    assert stats.resubmitted >= 1  # the cancelled worker's running task ran again
    wait_until(lambda: len(launcher.jobs) >= 2, SCHEDULER_WAIT, "a replacement job")
    return ex


def bad_python_is_a_start_error(make_executor: Any, launcher: Any) -> Any:
    ex = make_executor(launcher, **HEARTBEAT)
    fut = ex.submit(pow, 2, 10)
    err = fut.exception(timeout=SCHEDULER_WAIT)
    assert isinstance(err, impexec.WorkerStartError), err
    assert "/nonexistent/python" in err.output  # the job's own error text
    assert "before its worker connected" in str(err)
    with pytest.raises(impexec.WorkerStartError):
        ex.submit(pow, 2, 10)
    return ex
