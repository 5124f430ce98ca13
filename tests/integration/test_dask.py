"""dask runs its graphs on a ClusterExecutor, with every worker busy.

dask accepts any ``concurrent.futures.Executor`` two ways: ``scheduler=ex`` (its
Executor scheduler) and ``dask.config.set(scheduler="processes", pool=ex)``. Both read
the pool's ``_max_workers`` once per compute to decide how many tasks to keep in flight
(the first falls back to the client's CPU count without it, the second fails). The
tests count running tasks with a barrier of files that N tasks reach only when N run at
once, on a client that reports a single core: without the pool size, dask sends one task
at a time and the barrier is never full.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import barrier_tasks
import tasks
from waiting import wait_until

dask = pytest.importorskip("dask", reason="needs dask (impexec[integrations])")
dask_base = pytest.importorskip("dask.base", reason="needs dask (impexec[integrations])")

TIMEOUT = 60
WORKERS = 3
#: Seconds a task waits at the barrier for the others; a failing run waits this long.
BARRIER_S = 15.0


@pytest.fixture
def one_core_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client (a login node, this 2-core machine) has fewer cores than the pool
    has workers. dask's own core count is what it falls back to; we cannot take cores
    from the machine, so the test lowers the value dask read at import."""
    monkeypatch.setattr(dask_base, "CPU_COUNT", 1)
    assert dask.config.get("num_workers", None) is None, "a num_workers setting would hide it"


@pytest.fixture
def pool(make_executor: Any) -> Iterator[Any]:
    ex = make_executor(WORKERS)
    # all workers connected first, so the barrier measures dask's concurrency only
    wait_until(lambda: ex.statistics().workers >= WORKERS, TIMEOUT, f"{WORKERS} workers to connect")
    yield ex


def _barrier_graph(directory: Path) -> list[Any]:
    task = dask.delayed(barrier_tasks.arrive_and_wait, pure=False)
    return [task(str(directory), WORKERS, BARRIER_S) for _ in range(WORKERS)]


def test_scheduler_executor_runs_as_many_tasks_as_the_pool_has_workers(
    pool: Any, one_core_client: None, tmp_path: Path
) -> None:
    arrived = dask.compute(*_barrier_graph(tmp_path), scheduler=pool)
    assert arrived == (WORKERS,) * WORKERS


def test_processes_scheduler_with_pool_runs_as_many_tasks_as_the_pool_has_workers(
    pool: Any, one_core_client: None, tmp_path: Path
) -> None:
    # chunksize=1: one dask task per submit (its default of 6 would put all three in
    # one batch, which runs on one worker whatever the pool size)
    with dask.config.set(scheduler="processes", pool=pool, chunksize=1):
        arrived = dask.compute(*_barrier_graph(tmp_path))
    assert arrived == (WORKERS,) * WORKERS
    assert pool.statistics().done >= WORKERS  # it ran on our workers, not a pool of dask's


@pytest.mark.parametrize("how", ["scheduler", "pool"])
def test_a_dask_array_computes_the_same_on_the_pool(pool: Any, how: str) -> None:
    np = pytest.importorskip("numpy", reason="needs numpy (impexec[test])")
    import dask.array as da

    x = da.arange(10_000, chunks=1_000)
    expected = int(np.arange(10_000).dot(np.arange(10_000)))
    if how == "scheduler":
        result = x.dot(x).compute(scheduler=pool)
    else:
        with dask.config.set(scheduler="processes", pool=pool):
            result = x.dot(x).compute()
    assert int(result) == expected


def test_a_task_exception_reaches_the_dask_caller(pool: Any) -> None:
    bad = dask.delayed(tasks.raise_value_error)("from a dask task")
    with pytest.raises(ValueError, match="from a dask task"):
        dask.compute(bad, scheduler=pool)
    assert os.getpid() not in dask.compute(dask.delayed(tasks.pid)(), scheduler=pool)
