"""The Executor contract, run on ProcessPoolExecutor (the oracle) and ClusterExecutor.

Every test takes ``ex``, parametrized over both; a test of something only impexec has
takes ``cluster`` (the ClusterExecutor alone). Where ProcessPoolExecutor lacks a feature
on this Python (``map(buffersize=)`` before 3.14) the oracle case is skipped, naming it.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import multiprocessing
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import impexec
import tasks
from waiting import wait_until

TIMEOUT = 60  # seconds: generous, every wait has one; the machine is shared


def _process_pool() -> cf.ProcessPoolExecutor:
    # forkserver: fast starts, and no fork of a process that runs impexec threads
    methods = multiprocessing.get_all_start_methods()
    method = "forkserver" if "forkserver" in methods else "spawn"
    return cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method))


@pytest.fixture(params=["ProcessPoolExecutor", "ClusterExecutor"])
def ex(
    request: pytest.FixtureRequest, make_executor: Any, shutdown_with_deadline: Any
) -> Iterator[cf.Executor]:
    if request.param == "ClusterExecutor":
        yield make_executor(2)
        return
    pool = _process_pool()
    yield pool
    shutdown_with_deadline(pool)


@pytest.fixture
def cluster(make_executor: Any) -> impexec.ClusterExecutor:
    return make_executor(2)


class Released:
    """Tasks ``tasks.wait_for_file(path)`` block until the test calls ``release()``."""

    def __init__(self, tmp_path: Path):
        self.dir = tmp_path
        self.path = str(tmp_path / "release")

    def release(self) -> None:
        Path(self.path).touch()


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Released]:
    g = Released(tmp_path)
    yield g
    g.release()  # never leave workers blocked, whatever the test did


def _block_workers(ex: cf.Executor, gate: Released, n: int = 2) -> list[cf.Future[Any]]:
    """Occupy every worker, and wait until each blocker runs, so later tasks queue."""
    if isinstance(ex, impexec.ClusterExecutor):
        # a worker may hold a prefetched task behind its running one: place the blockers
        # only once both workers are there, so that each later task finds an idle one
        _wait_for_workers(ex, 2)
    started = [gate.dir / f"started{i}" for i in range(n)]
    futs = [ex.submit(tasks.announce_then_wait, str(s), gate.path) for s in started]
    wait_until(lambda: all(s.exists() for s in started), TIMEOUT, "the blocking tasks to start")
    return futs


def _wait_for_workers(ex: impexec.ClusterExecutor, n: int = 2) -> None:
    """Wait until *n* workers are connected (placement depends on who is there)."""
    wait_until(lambda: ex.statistics().workers >= n, TIMEOUT, f"{n} workers to connect")


# -- submit and results ----------------------------------------------------------------
def test_submit_returns_result(ex: cf.Executor) -> None:
    assert ex.submit(tasks.add, 2, 3).result(timeout=TIMEOUT) == 5
    assert ex.submit(pow, 2, 10).result(timeout=TIMEOUT) == 1024


def test_submit_passes_keyword_arguments(ex: cf.Executor) -> None:
    assert ex.submit(tasks.sleep_then, 0, value="kw").result(timeout=TIMEOUT) == "kw"


def test_future_is_a_concurrent_futures_future(ex: cf.Executor) -> None:
    fut = ex.submit(tasks.identity, 1)
    assert isinstance(fut, cf.Future)
    fut.result(timeout=TIMEOUT)


def test_exception_keeps_type_and_remote_traceback(ex: cf.Executor) -> None:
    fut = ex.submit(tasks.raise_value_error, "bad input")
    with pytest.raises(ValueError, match="bad input") as info:
        fut.result(timeout=TIMEOUT)
    cause = info.value.__cause__
    assert cause is not None
    text = str(cause)
    assert "raise_value_error" in text  # the function that raised, from the remote side
    assert "ValueError: bad input" in text
    assert isinstance(fut.exception(timeout=TIMEOUT), ValueError)


def test_exception_in_one_task_leaves_others_alone(ex: cf.Executor) -> None:
    bad = ex.submit(tasks.raise_value_error)
    good = [ex.submit(tasks.square, i) for i in range(5)]
    with pytest.raises(ValueError):
        bad.result(timeout=TIMEOUT)
    assert [f.result(timeout=TIMEOUT) for f in good] == [0, 1, 4, 9, 16]


# -- map -------------------------------------------------------------------------------
def test_map_keeps_input_order(ex: cf.Executor) -> None:
    # uneven run times: completion order differs from input order
    delays = [0.03 * (i % 3) for i in range(12)]
    assert list(ex.map(tasks.sleep_then, delays, range(12), timeout=TIMEOUT)) == list(range(12))


def test_map_several_iterables_stops_at_shortest(ex: cf.Executor) -> None:
    out = list(ex.map(tasks.add, range(10), range(100, 105), timeout=TIMEOUT))
    assert out == [100, 102, 104, 106, 108]


def test_map_empty_input(ex: cf.Executor) -> None:
    assert list(ex.map(tasks.square, [], timeout=TIMEOUT)) == []


@pytest.mark.parametrize("chunksize", [1, 7])
def test_map_chunksize(ex: cf.Executor, chunksize: int) -> None:
    out = list(ex.map(tasks.square, range(50), chunksize=chunksize, timeout=TIMEOUT))
    assert out == [i * i for i in range(50)]


@pytest.mark.parametrize("chunksize", ["static", "auto", 1, 3, 1000])
def test_map_chunksize_impexec(cluster: impexec.ClusterExecutor, chunksize: Any) -> None:
    out = list(cluster.map(tasks.square, range(101), chunksize=chunksize, timeout=TIMEOUT))
    assert out == [i * i for i in range(101)]


def test_map_exception_raised_at_its_position(ex: cf.Executor) -> None:
    it = ex.map(tasks.identity, [1, 2, cf.CancelledError], timeout=TIMEOUT)
    assert next(it) == 1
    assert next(it) == 2
    assert next(it) is cf.CancelledError  # a value that happens to be a class, not raised
    it2 = ex.map(tasks.raise_value_error, ["first"], timeout=TIMEOUT)
    with pytest.raises(ValueError, match="first"):
        next(it2)


def test_map_timeout_raises_timeout_error(ex: cf.Executor, gate: Released) -> None:
    it = ex.map(tasks.wait_for_file, [gate.path], timeout=0.3)
    # cf.TimeoutError is the builtin only from Python 3.11 on
    with pytest.raises(cf.TimeoutError):
        list(it)
    gate.release()


def test_map_unordered_timeout_raises_the_same_class_as_map(
    cluster: impexec.ClusterExecutor, gate: Released
) -> None:
    it = cluster.map_unordered(tasks.wait_for_file, [gate.path], timeout=0.3)
    with pytest.raises(cf.TimeoutError):
        list(it)
    gate.release()


class Counting:
    """An infinite input that counts how far it was read."""

    def __init__(self) -> None:
        self.consumed = 0

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count():
            self.consumed = i + 1
            yield i


def _needs_buffersize(ex: cf.Executor) -> None:
    if isinstance(ex, cf.ProcessPoolExecutor) and sys.version_info < (3, 14):
        pytest.skip("ProcessPoolExecutor.map has no buffersize before Python 3.14")


def test_map_buffersize_reads_infinite_input_lazily(ex: cf.Executor) -> None:
    _needs_buffersize(ex)
    source = Counting()
    it = ex.map(tasks.square, source, buffersize=4, timeout=TIMEOUT)
    first = list(itertools.islice(it, 10))
    assert first == [i * i for i in range(10)]
    # 10 yielded + at most buffersize in flight (+1 read while refilling)
    assert source.consumed <= 10 + 4 + 1
    it.close()  # abandoning the iterator cancels what was read ahead


def test_map_buffersize_validation(ex: cf.Executor) -> None:
    _needs_buffersize(ex)
    with pytest.raises(ValueError):
        ex.map(tasks.square, range(3), buffersize=0)
    with pytest.raises(TypeError):
        ex.map(tasks.square, range(3), buffersize=2.0)  # type: ignore[arg-type]


def test_map_buffersize_with_chunks_impexec(cluster: impexec.ClusterExecutor) -> None:
    source = Counting()
    it = cluster.map(tasks.square, source, chunksize=5, buffersize=3, timeout=TIMEOUT)
    assert list(itertools.islice(it, 12)) == [i * i for i in range(12)]
    assert source.consumed <= (3 + 3 + 1) * 5
    it.close()


def test_map_unordered_yields_every_result(cluster: impexec.ClusterExecutor) -> None:
    out = list(cluster.map_unordered(tasks.square, range(40), chunksize=3, timeout=TIMEOUT))
    assert sorted(out) == [i * i for i in range(40)]


def test_map_unordered_yields_in_completion_order(
    cluster: impexec.ClusterExecutor,
) -> None:
    _wait_for_workers(cluster)
    # the slow first call does not hold back the fast ones behind it
    it = cluster.map_unordered(tasks.sleep_then, [1.5, 0.0], ["slow", "fast"], timeout=TIMEOUT)
    assert next(it) == "fast"
    assert next(it) == "slow"


def test_map_unordered_lazy_on_infinite_input(cluster: impexec.ClusterExecutor) -> None:
    source = Counting()
    it = cluster.map_unordered(tasks.square, source, buffersize=4, timeout=TIMEOUT)
    assert len(list(itertools.islice(it, 10))) == 10
    assert source.consumed <= 10 + 4 + 1
    it.close()


def test_map_static_needs_a_length(cluster: impexec.ClusterExecutor) -> None:
    with pytest.raises(TypeError, match="length"):
        cluster.map(tasks.square, iter(range(5)), chunksize="static")


# -- futures helpers -------------------------------------------------------------------
def test_as_completed_and_wait(ex: cf.Executor) -> None:
    futs = [ex.submit(tasks.sleep_then, 0.02 * i, i) for i in range(6)]
    assert {f.result() for f in cf.as_completed(futs, timeout=TIMEOUT)} == set(range(6))
    done, not_done = cf.wait(futs, timeout=TIMEOUT)
    assert done == set(futs)
    assert not not_done


def test_wait_first_exception(ex: cf.Executor, gate: Released) -> None:
    (blocked,) = _block_workers(ex, gate, 1)
    bad = ex.submit(tasks.raise_value_error)
    done, not_done = cf.wait([blocked, bad], timeout=TIMEOUT, return_when=cf.FIRST_EXCEPTION)
    assert bad in done
    assert blocked in not_done
    gate.release()
    assert blocked.result(timeout=TIMEOUT) is True


def test_done_callback_runs_once(ex: cf.Executor) -> None:
    called: list[cf.Future[Any]] = []
    ran = threading.Event()

    def callback(f: cf.Future[Any]) -> None:
        called.append(f)
        ran.set()

    fut = ex.submit(tasks.square, 7)
    fut.add_done_callback(callback)
    assert fut.result(timeout=TIMEOUT) == 49
    assert ran.wait(TIMEOUT)
    assert called == [fut]
    late: list[cf.Future[Any]] = []
    fut.add_done_callback(late.append)  # on a done future: runs at once, in this thread
    assert late == [fut]


# -- cancel ----------------------------------------------------------------------------
def test_cancel_undispatched_task_never_runs(ex: cf.Executor, gate: Released, tmp_path: Path) -> None:
    blockers = _block_workers(ex, gate)
    markers = [tmp_path / f"marker{i}" for i in range(20)]
    futs = [ex.submit(tasks.write_marker, str(m)) for m in markers]
    # the tail is certainly still queued in the executor (both executors hold at most a
    # few tasks beyond the running ones)
    assert all(f.cancel() for f in futs[10:])
    assert all(f.cancelled() for f in futs[10:])
    with pytest.raises(cf.CancelledError):
        futs[-1].result(timeout=TIMEOUT)
    gate.release()
    assert all(f.result(timeout=TIMEOUT) for f in blockers)
    assert all(f.result(timeout=TIMEOUT) == "ran" for f in futs[:10])
    ex.shutdown(wait=True)
    assert [m.exists() for m in markers] == [True] * 10 + [False] * 10


def test_cancel_done_or_running_future_fails(ex: cf.Executor, gate: Released) -> None:
    done = ex.submit(tasks.identity, 1)
    assert done.result(timeout=TIMEOUT) == 1
    assert not done.cancel()
    running = ex.submit(tasks.wait_for_file, gate.path)
    # wait until it is running; neither executor cancels a running task
    cf.wait([running], timeout=0.5)
    gate.release()
    assert running.result(timeout=TIMEOUT) is True
    assert not running.cancel()


# -- shutdown --------------------------------------------------------------------------
def test_shutdown_wait_completes_pending(ex: cf.Executor) -> None:
    futs = [ex.submit(tasks.sleep_then, 0.02, i) for i in range(10)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futs)
    assert [f.result(timeout=0) for f in futs] == list(range(10))


def test_shutdown_cancel_futures_cancels_queued(ex: cf.Executor, gate: Released, tmp_path: Path) -> None:
    blockers = _block_workers(ex, gate)
    markers = [tmp_path / f"m{i}" for i in range(20)]
    futs = [ex.submit(tasks.write_marker, str(m)) for m in markers]
    ex.shutdown(wait=False, cancel_futures=True)
    gate.release()
    assert all(f.result(timeout=TIMEOUT) for f in blockers)
    # not cf.wait: a future cancelled by shutdown is not yet "notified" in every Python
    wait_until(lambda: all(f.done() for f in futs), TIMEOUT, "the futures pending at shutdown to finish")
    for f, m in zip(futs, markers, strict=True):
        assert f.done()
        if f.cancelled():
            assert not m.exists()
        else:
            assert f.result(timeout=0) == "ran"
    assert all(f.cancelled() for f in futs[10:])  # certainly still queued at shutdown


def test_submit_after_shutdown_raises(ex: cf.Executor) -> None:
    ex.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        ex.submit(tasks.square, 2)
    with pytest.raises(RuntimeError):
        ex.map(tasks.square, [1, 2])
    ex.shutdown(wait=True)  # a second shutdown is harmless


def test_context_manager_waits_and_shuts_down(ex: cf.Executor) -> None:
    with ex as same:
        assert same is ex
        fut = ex.submit(tasks.sleep_then, 0.05, "done")
    assert fut.done()
    assert fut.result(timeout=0) == "done"
    with pytest.raises(RuntimeError):
        ex.submit(tasks.square, 1)


def test_lambdas_and_closures_with_cloudpickle(
    cluster: impexec.ClusterExecutor,
) -> None:
    offset = 10
    assert cluster.submit(lambda x: x + offset, 5).result(timeout=TIMEOUT) == 15
    assert list(cluster.map(lambda x: x - offset, [10, 11], timeout=TIMEOUT)) == [0, 1]
