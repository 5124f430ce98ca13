"""ClusterExecutor behaviour beyond the shared Executor contract.

statistics(), connection_file(), the three serializers, results and exceptions that
cannot travel, SerializationError at submit, large NumPy arrays, and cancelled tasks
that never run.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import impexec
import tasks
from impexec import ClusterExecutor, SerializationError
from processes import start_worker
from waiting import wait_until

TIMEOUT = 60


# -- statistics and connection files ---------------------------------------------------
def test_statistics_counts(executor: ClusterExecutor) -> None:
    assert [f.result(timeout=TIMEOUT) for f in [executor.submit(tasks.square, i) for i in range(5)]] == [
        0,
        1,
        4,
        9,
        16,
    ]
    with pytest.raises(ValueError):
        executor.submit(tasks.raise_value_error).result(timeout=TIMEOUT)
    wait_until(lambda: executor.statistics().workers == 2, TIMEOUT, "2 workers")
    st = executor.statistics()
    assert isinstance(st, impexec.Statistics)
    assert (st.done, st.failed, st.queued, st.running, st.resubmitted) == (
        5,
        1,
        0,
        0,
        0,
    )
    assert st.workers_joined >= 2
    assert set(st.as_dict()) >= {
        "workers",
        "queued",
        "running",
        "done",
        "failed",
        "resubmitted",
    }


def test_statistics_after_shutdown(executor: ClusterExecutor) -> None:
    executor.submit(tasks.square, 2).result(timeout=TIMEOUT)
    executor.shutdown(wait=True)
    assert executor.statistics().done == 1


def test_connection_file_is_private(executor: ClusterExecutor, tmp_path: Path) -> None:
    default = Path(executor.connection_file())
    assert stat.S_IMODE(default.stat().st_mode) == 0o600
    chosen = Path(executor.connection_file(tmp_path / "conn.json"))
    assert chosen == tmp_path / "conn.json"
    assert stat.S_IMODE(chosen.stat().st_mode) == 0o600
    data = json.loads(chosen.read_text())
    assert data["address"] == executor.address
    assert len(bytes.fromhex(data["key"])) >= 16
    assert data.get("server_key") is None  # no encryption asked for


def test_worker_count_before_and_after_connect(make_executor: Any) -> None:
    ex = make_executor(3)
    assert ex.worker_count() in (
        1,
        2,
        3,
    )  # requested before any connect, then connected
    wait_until(lambda: ex.worker_count() == 3, TIMEOUT, "3 workers")
    assert "ClusterExecutor" in repr(ex)


def test_max_workers_is_the_launchers_target_from_the_start(make_executor: Any) -> None:
    # libraries size their queue of tasks by it (dask reads _max_workers once per
    # compute): it must not be the 0 or 1 worker connected so far
    ex = make_executor([impexec.LocalWorkers(2), impexec.LocalWorkers(1)])
    assert ex.max_workers == ex._max_workers == 3
    wait_until(lambda: ex.statistics().workers == 3, TIMEOUT, "3 workers")
    assert ex.max_workers == ex._max_workers == 3


def test_max_workers_counts_workers_that_joined_by_themselves(make_executor: Any) -> None:
    ex = make_executor(None)
    assert ex.max_workers == 1  # nothing yet: still a pool that can take a task
    proc = start_worker(ex.connection_file(), "--processes", "2", stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: ex.statistics().workers == 2, TIMEOUT, "2 joined workers")
        assert ex.max_workers == ex._max_workers == 2
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


def test_no_workers_yet_means_tasks_wait(make_executor: Any) -> None:
    ex = make_executor(None)
    fut = ex.submit(tasks.square, 3)
    time.sleep(0.2)
    assert not fut.done()
    assert ex.statistics().queued == 1
    fut.cancel()  # shutdown below must not wait for workers that never come


# -- serializers -----------------------------------------------------------------------
@pytest.mark.parametrize("serializer", ["cloudpickle", "pickle", "dill"])
def test_serializers(make_executor: Any, serializer: str) -> None:
    ex = make_executor(1, serializer=serializer)
    assert ex.submit(tasks.add, 2, 3).result(timeout=TIMEOUT) == 5
    assert list(ex.map(tasks.square, range(5), chunksize=2, timeout=TIMEOUT)) == [
        0,
        1,
        4,
        9,
        16,
    ]
    with pytest.raises(ValueError, match="boom"):
        ex.submit(tasks.raise_value_error).result(timeout=TIMEOUT)
    if serializer == "pickle":
        with pytest.raises(SerializationError, match="callable"):
            ex.submit(lambda: 1)
    else:
        assert ex.submit(lambda x: x * 2, 21).result(timeout=TIMEOUT) == 42


def test_unknown_serializer_rejected() -> None:
    with pytest.raises(ValueError, match="serializer"):
        ClusterExecutor(0, serializer="marshal")


# -- what cannot travel ----------------------------------------------------------------
@pytest.mark.parametrize(
    "task",
    [
        tasks.return_unpicklable,
        tasks.raise_unpicklable,
        tasks.return_error_at_pickle,
        tasks.return_error_at_unpickle,
    ],
)
def test_result_that_cannot_travel_fails_only_its_future(make_executor: Any, task: Any) -> None:
    ex = make_executor(1)
    before = ex.submit(tasks.pid).result(timeout=TIMEOUT)
    fut = ex.submit(task)
    with pytest.raises(Exception) as info:
        fut.result(timeout=TIMEOUT)
    assert not isinstance(info.value, impexec.WorkerLostError)
    if task is not tasks.return_error_at_unpickle:  # that one pickles; the client fails to load it
        assert isinstance(info.value, SerializationError)
    # the same worker lives on and takes more work
    assert ex.submit(tasks.pid).result(timeout=TIMEOUT) == before
    assert ex.statistics().workers_lost == 0


def test_submit_raises_naming_the_unpicklable_argument(
    executor: ClusterExecutor,
) -> None:
    lock = threading.Lock()
    with pytest.raises(SerializationError) as info:
        executor.submit(tasks.identity, [1, 2, lock])
    assert isinstance(info.value, pickle.PicklingError)
    assert "argument 0[2]" in str(info.value)
    assert "lock" in str(info.value)
    with pytest.raises(SerializationError, match="keyword argument 'value'"):
        executor.submit(tasks.sleep_then, 0, value=tasks.ErrorAtPickle())
    with pytest.raises(SerializationError, match="callable"):
        executor.submit(tasks.ErrorAtPickle())
    # nothing was queued by the failed submits, and the executor still works
    assert executor.submit(tasks.square, 5).result(timeout=TIMEOUT) == 25
    assert executor.statistics().done == 1


def test_map_raises_naming_an_unpicklable_item(executor: ClusterExecutor) -> None:
    with pytest.raises(SerializationError, match="lock"):
        list(executor.map(tasks.identity, [1, threading.Lock()], timeout=TIMEOUT))


@pytest.mark.parametrize("chunksize", [1, 7, "static"])
def test_map_over_one_input_passes_each_item_whole(executor: ClusterExecutor, chunksize: Any) -> None:
    """One input travels as a list of items (Flag.BARE), not of 1-tuples: a tuple item is
    still one argument, and None, lists and nested tuples arrive as they were."""
    items = [(1, 2), None, [3, 4], ((5,),), (), "s", 6]
    assert list(executor.map(tasks.identity, items, chunksize=chunksize, timeout=60)) == items
    assert list(
        executor.map_unordered(len, [(1, 2), (3,), ()], chunksize=chunksize, timeout=60)
    ) in _permutations([2, 1, 0])
    # two inputs are still zipped into argument pairs
    assert list(executor.map(tasks.add, [1, 2], [10, 20], chunksize=chunksize, timeout=60)) == [11, 22]


def _permutations(values: list[Any]) -> list[list[Any]]:
    import itertools

    return [list(p) for p in itertools.permutations(values)]


def test_argument_failing_to_unpickle_on_the_worker_fails_its_future(
    make_executor: Any,
) -> None:
    ex = make_executor(1)
    fut = ex.submit(tasks.identity, tasks.ErrorAtUnpickle())
    with pytest.raises(RuntimeError, match="ErrorAtUnpickle"):
        fut.result(timeout=TIMEOUT)
    assert ex.submit(tasks.square, 3).result(timeout=TIMEOUT) == 9


# -- data ------------------------------------------------------------------------------
@pytest.mark.parametrize("serializer", ["cloudpickle", "pickle"])
def test_large_numpy_array_round_trip(make_executor: Any, serializer: str) -> None:
    np = pytest.importorskip("numpy")
    ex = make_executor(1, serializer=serializer)
    array = np.random.default_rng(0).random(4 * 1024 * 1024 // 8 * 8)  # 32 MB of float64
    back = ex.submit(tasks.identity, array).result(timeout=TIMEOUT)
    assert back.dtype == array.dtype
    assert np.array_equal(back, array)
    assert ex.submit(tasks.nbytes, array).result(timeout=TIMEOUT) == array.nbytes
    views = ex.submit(tasks.identity, [array[:10], array[10:20]]).result(timeout=TIMEOUT)
    assert np.array_equal(views[1], array[10:20])


def test_bytes_payloads(executor: ClusterExecutor) -> None:
    blob = os.urandom(3 * 1024 * 1024)
    assert executor.submit(tasks.identity, blob).result(timeout=TIMEOUT) == blob
    assert executor.submit(tasks.identity, bytearray(blob)).result(timeout=TIMEOUT) == bytearray(blob)


# -- cancel ----------------------------------------------------------------------------
def test_cancelled_tasks_never_run(make_executor: Any, tmp_path: Path) -> None:
    ex = make_executor(1, prefetch=0)
    release = tmp_path / "release"
    started = tmp_path / "started"
    blocker = ex.submit(tasks.announce_then_wait, str(started), str(release))
    wait_until(started.exists, TIMEOUT, "the blocking task to start")
    markers = [tmp_path / f"marker{i}" for i in range(6)]
    futs = [ex.submit(tasks.write_marker, str(m)) for m in markers]
    cancelled = futs[::2]
    assert all(f.cancel() for f in cancelled)
    release.touch()
    assert blocker.result(timeout=TIMEOUT) is True
    for f in futs[1::2]:
        assert f.result(timeout=TIMEOUT) == "ran"
    ex.shutdown(wait=True)
    assert [m.exists() for m in markers] == [False, True] * 3
    assert ex.statistics().cancelled == 3


def test_abandoned_map_does_not_block_shutdown(make_executor: Any, tmp_path: Path) -> None:
    ex = make_executor(2)
    it = ex.map(tasks.sleep_then, [0.05] * 1000, range(1000), buffersize=4)
    assert next(it) == 0
    del it
    ex.shutdown(wait=True)  # under the fixture's deadline; unsent chunks were cancelled
    assert ex.statistics().done < 1000


def test_initializer_runs_in_every_worker(make_executor: Any, tmp_path: Path) -> None:
    ex = make_executor(2, initializer=tasks.write_marker, initargs=(str(tmp_path / "init"),))
    assert ex.submit(tasks.square, 2).result(timeout=TIMEOUT) == 4
    assert (tmp_path / "init").read_text() == "ran"
