"""impexec.compat.imp: IMP.parallel-shaped code runs on ClusterExecutor unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import imp_tasks
import impexec
from impexec.compat import imp as parallel

TESTS_DIR = str(Path(__file__).resolve().parents[1])
FAST = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.5}


@pytest.fixture
def markers(tmp_path, monkeypatch):
    """Workers import imp_tasks from tests/ and drop a marker file per setup or task."""
    directory = tmp_path / "markers"
    directory.mkdir()
    path = os.pathsep.join(p for p in (TESTS_DIR, os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("IMP_TASKS_MARKERS", str(directory))
    return directory


@pytest.fixture
def manager(markers):
    m = parallel.Manager(**FAST)
    yield m
    m.shutdown()


def runs(directory: Path, kind: str) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(kind + "-")]


def test_the_documented_usage_pattern(manager, markers):
    # IMP.parallel's local_distance.py example, with the import line changed.
    manager.add_slave(parallel.LocalSlave())
    manager.add_slave(parallel.LocalSlave())
    c = manager.get_context(imp_tasks.setup)
    for dist in range(10):
        c.add_task(imp_tasks.Task(dist))
    results = sorted(c.get_results_unordered())
    assert results == [(d, 0.5 * 2.0 * (d - 1.0) ** 2) for d in range(10)]
    # setup ran at most once per worker process; every task ran exactly once
    setups = runs(markers, "setup")
    assert 1 <= len(setups) <= 2
    assert len({name.split("-")[1] for name in setups}) == len(setups)
    assert len(runs(markers, "task")) == 10


def test_a_context_runs_its_setup_once_per_worker_across_calls(manager, markers):
    manager.add_worker(parallel.LocalWorker())
    c = manager.get_context(imp_tasks.setup)
    c.add_task(imp_tasks.Task(3))
    assert list(c.get_results_unordered()) == [(3, 4.0)]
    # a second batch in the same context reuses the worker's setup; only new tasks run
    c.add_task(imp_tasks.Task(1))
    c.add_task(imp_tasks.Task(2))
    assert sorted(c.get_results_unordered()) == [(1, 0.0), (2, 1.0)]
    assert len(runs(markers, "setup")) == 1
    assert len(runs(markers, "task")) == 3
    assert list(c.get_results_unordered()) == []


@pytest.mark.parametrize(
    ("startup", "task", "expected"),
    [
        (None, imp_tasks.count_arguments, 0),  # no setup: no arguments
        (imp_tasks.setup, imp_tasks.count_arguments, 2),  # tuple: splatted
        (
            imp_tasks.one_value,
            imp_tasks.count_arguments,
            3,
        ),  # list: splatted too (as IMP)
        (imp_tasks.returns_none, imp_tasks.count_arguments, 0),  # None: nothing to pass
        (imp_tasks.returns_number, imp_tasks.add_one, 42),  # one value: one argument
    ],
)
def test_setup_values_are_splatted_into_the_task(manager, startup, task, expected):
    manager.add_worker(parallel.LocalWorker())
    c = manager.get_context(startup)
    c.add_task(task)
    assert list(c.get_results_unordered()) == [expected]


def test_contexts_share_the_workers(manager):
    manager.add_worker(parallel.LocalWorker())
    manager.add_worker(parallel.LocalWorker())
    plain = manager.get_context()
    for _ in range(4):
        plain.add_task(imp_tasks.no_arguments)
    pids = set(plain.get_results_unordered())
    modelled = manager.get_context(imp_tasks.setup)
    modelled.add_task(imp_tasks.Task(0))
    assert list(modelled.get_results_unordered()) == [(0, 1.0)]
    assert 1 <= len(pids) <= 2
    assert os.getpid() not in pids


@pytest.mark.parametrize(
    ("startup", "task", "original"),
    [
        (None, imp_tasks.fails, ValueError),
        (imp_tasks.failing_setup, imp_tasks.count_arguments, KeyError),
    ],
)
def test_a_remote_exception_is_a_remote_error(manager, startup, task, original):
    manager.add_worker(parallel.LocalWorker())
    c = manager.get_context(startup)
    c.add_task(task)
    with pytest.raises(parallel.RemoteError) as info:
        list(c.get_results_unordered())
    err = info.value
    assert isinstance(err, parallel.Error)
    assert isinstance(err.exc, original)
    assert err.__cause__ is err.exc
    assert "Traceback" in err.traceback
    assert "Remote traceback" in str(err)


def test_stopping_early_cancels_the_rest(manager, markers):
    manager.add_worker(parallel.LocalWorker())
    c = manager.get_context(imp_tasks.setup)
    for dist in range(200):
        c.add_task(imp_tasks.Task(dist))
    results = c.get_results_unordered()
    first = next(results)
    results.close()
    assert first[0] in range(200)
    manager.shutdown()  # waits for what the worker already held
    assert 1 <= len(runs(markers, "task")) < 200


def test_no_workers_and_late_workers_are_errors(manager):
    c = manager.get_context()
    c.add_task(imp_tasks.no_arguments)
    with pytest.raises(parallel.NoMoreWorkersError, match="no workers"):
        list(c.get_results_unordered())
    manager.add_worker(parallel.LocalWorker())
    # the task waited for a worker
    assert len(list(c.get_results_unordered())) == 1
    with pytest.raises(RuntimeError, match="before the first"):
        manager.add_worker(parallel.LocalWorker())
    with pytest.raises(TypeError, match="not a worker"):
        parallel.Manager().add_worker("localhost")
    with pytest.raises(TypeError, match="callable"):
        c.add_task(42)


def test_manager_is_a_context_manager_over_a_cluster_executor(markers):
    with parallel.Manager(**FAST) as m:
        m.add_worker(parallel.LocalWorker())
        assert isinstance(m.executor, impexec.ClusterExecutor)
        ex = m.executor
    with pytest.raises(RuntimeError):
        ex.submit(int)


def test_old_spellings_are_aliases():
    assert parallel.LocalSlave is parallel.LocalWorker
    assert parallel.SGEQsubSlaveArray is parallel.SGEQsubWorkerArray
    assert parallel.Manager.add_slave is parallel.Manager.add_worker
    assert parallel.Slave is parallel.Worker


def test_sge_array_maps_to_sge_workers_or_says_what_is_missing():
    try:
        from impexec.launchers.sge import SGEWorkers
    except ImportError:
        with pytest.raises(ImportError, match=r"impexec\.launchers\.sge"):
            parallel.SGEQsubWorkerArray(4, "-q all.q")
        return
    array = parallel.SGEQsubSlaveArray(4, "-q long.q -l h_rt=1:00:00")
    launcher = array._launcher("python3 -u")
    assert isinstance(launcher, SGEWorkers)
    assert launcher.n == 4
    assert launcher.python == ["python3", "-u"]
    assert launcher.extra == ["-q long.q -l h_rt=1:00:00"]
    assert parallel.SGEQsubWorkerArray(2)._launcher(None).extra == []
