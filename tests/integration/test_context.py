"""Contexts on real worker processes: setup once per worker, LRU eviction, failures, close.

Setups come from ``context_tasks``: each call appends ``<name> <pid>`` to a log in the
test's tmp_path (so the tests count setups per worker), and each cached value leaves a
``dropped-<name>-<pid>`` marker when the worker lets go of it (so the tests see drops and
evictions happen on the worker itself, not in the client's bookkeeping).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import context_tasks as ct
import impexec
from waiting import wait_until

#: Seconds any single wait in these tests may take.
TIMEOUT = 30.0


def wait_for_workers(ex: impexec.ClusterExecutor, n: int = 2) -> None:
    wait_until(lambda: ex.statistics().workers >= n, TIMEOUT, f"{n} workers to connect")


def wait_for_files(paths: list[Path]) -> None:
    wait_until(lambda: all(p.exists() for p in paths), TIMEOUT, f"{[p.name for p in paths]} to appear")


def dropped(log_dir: Path, name: str, pid: int) -> Path:
    return log_dir / f"dropped-{name}-{pid}"


def worker_pids(ex: impexec.ClusterExecutor) -> list[int]:
    """The pids of the live local worker processes."""
    return [p.pid for launcher in ex.launchers for p in launcher.processes()]


def pids_of(counts: Any, name: str) -> set[int]:
    return {pid for (n, pid) in counts if n == name}


@pytest.fixture
def ex(make_executor: Callable[..., Any]) -> impexec.ClusterExecutor:
    ex = make_executor(2)
    wait_for_workers(ex)
    return ex  # type: ignore[no-any-return]


# -- setup once per worker -------------------------------------------------------------------
def test_setup_runs_once_per_worker_not_per_task(ex: impexec.ClusterExecutor, tmp_path: Path) -> None:
    with ex.context(ct.setup, str(tmp_path), "model") as ctx:
        futs = [ctx.submit(ct.whoami, i) for i in range(200)]
        results = [f.result(timeout=TIMEOUT) for f in futs]
    assert [r[3] for r in results] == list(range(200))
    # every task got the value built in its own process
    assert all(name == "model" and built_by == ran_on for name, built_by, ran_on, _ in results)
    counts = ct.setup_counts(tmp_path)
    assert set(counts.values()) == {1}, counts  # exactly once on each worker that ran one
    assert len(counts) <= 2
    assert {r[2] for r in results} == pids_of(counts, "model")


def test_setup_arguments_and_keywords_reach_the_setup(ex: impexec.ClusterExecutor, tmp_path: Path) -> None:
    with ex.context(ct.setup, str(tmp_path), "kw", delay=0.01) as ctx:
        assert ctx.submit(ct.whoami, "x").result(timeout=TIMEOUT)[0] == "kw"
    assert sum(counts for (n, _), counts in ct.setup_counts(tmp_path).items() if n == "kw") == 1


def test_contexts_interleave_on_two_workers(ex: impexec.ClusterExecutor, tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    ctxs = {n: ex.context(ct.setup, str(tmp_path), n) for n in names}
    futs = [(n, i, ctxs[n].submit(ct.whoami, i, sleep=0.002)) for i in range(30) for n in names]
    for n, i, f in futs:
        name, built_by, ran_on, x = f.result(timeout=TIMEOUT)
        assert (name, x) == (n, i)
        assert built_by == ran_on
    for ctx in ctxs.values():
        ctx.close()
    counts = ct.setup_counts(tmp_path)
    # three contexts fit in the default cache (8): never set up twice on one worker
    assert set(counts.values()) == {1}, counts
    assert {n for n, _ in counts} == set(names)


def test_locality_does_not_starve_an_idle_worker(ex: impexec.ClusterExecutor, tmp_path: Path) -> None:
    # a worker that does not hold the context gets work (and sets up) rather than the
    # holder queueing everything; after a burst of tiny tasks (which makes adaptive
    # prefetch deep) the prefetched tasks still spread over both workers
    wait_for_workers(ex)  # both connected (no late joiner here)
    list(ex.map(abs, range(50)))
    with ex.context(ct.setup, str(tmp_path), "spread") as ctx:
        futs = [ctx.submit(ct.whoami, i, sleep=0.1) for i in range(10)]
        ran_on = collections.Counter(f.result(timeout=TIMEOUT)[2] for f in futs)
    assert len(ran_on) == 2
    assert min(ran_on.values()) >= 3, ran_on
    assert pids_of(ct.setup_counts(tmp_path), "spread") == set(ran_on)


# -- eviction ------------------------------------------------------------------------------
def test_eviction_with_one_slot_sets_up_again(make_executor: Callable[..., Any], tmp_path: Path) -> None:
    ex = make_executor(1, max_contexts=1)
    a = ex.context(ct.setup, str(tmp_path), "a")
    b = ex.context(ct.setup, str(tmp_path), "b")
    pid = a.submit(ct.whoami).result(timeout=TIMEOUT)[2]
    assert b.submit(ct.whoami).result(timeout=TIMEOUT)[0] == "b"
    wait_for_files([dropped(tmp_path, "a", pid)])  # b evicted a on the worker
    for _ in range(2):
        assert a.submit(ct.whoami).result(timeout=TIMEOUT)[0] == "a"
        assert b.submit(ct.whoami).result(timeout=TIMEOUT)[0] == "b"
    assert ct.setup_counts(tmp_path) == {("a", pid): 3, ("b", pid): 3}
    a.close()
    b.close()


def test_eviction_is_least_recently_used(make_executor: Callable[..., Any], tmp_path: Path) -> None:
    ex = make_executor(1, max_contexts=2)
    ctx = {n: ex.context(ct.setup, str(tmp_path), n) for n in "abc"}

    def run(order: str) -> None:
        # queued together, on purpose: the worker must evict in the order the tasks run
        futs = [ctx[n].submit(ct.whoami, n) for n in order]
        assert [f.result(timeout=TIMEOUT)[0] for f in futs] == list(order)

    run("abab")  # a, b set up; a is now the least recently used
    run("c")  # evicts a
    run("b")  # still cached
    run("a")  # set up again, evicts c
    run("b")
    pid = ctx["a"].submit(ct.whoami).result(timeout=TIMEOUT)[2]
    assert ct.setup_counts(tmp_path) == {("a", pid): 2, ("b", pid): 1, ("c", pid): 1}
    for c in ctx.values():
        c.close()


# -- failures --------------------------------------------------------------------------------
def test_setup_failure_fails_only_that_contexts_tasks(ex: impexec.ClusterExecutor, tmp_path: Path) -> None:
    bad = ex.context(ct.setup, str(tmp_path), "bad", fail=True)
    good = ex.context(ct.setup, str(tmp_path), "good")
    bad_futs = [bad.submit(ct.whoami, i) for i in range(20)]
    good_futs = [good.submit(ct.whoami, i) for i in range(20)]
    plain_futs = [ex.submit(ct.plain_pid) for _ in range(20)]
    for f in bad_futs:
        exc = f.exception(timeout=TIMEOUT)
        assert type(exc) is ValueError
        assert str(exc) == "setup of bad failed on purpose"
        cause = exc.__cause__
        assert type(cause).__name__ == "RemoteTraceback"
        assert "in the context's setup" in str(cause)
        assert "context_tasks.py" in str(cause)  # the worker-side frames of the setup
    assert [f.result(timeout=TIMEOUT)[3] for f in good_futs] == list(range(20))
    plain_pids = {f.result(timeout=TIMEOUT) for f in plain_futs}
    counts = ct.setup_counts(tmp_path)
    # the failure is cached: at most one attempt per worker, not one per task
    assert all(counts[("bad", pid)] == 1 for pid in pids_of(counts, "bad"))
    bad.close()
    good.close()
    # the workers survived: none lost, and those that ran the failing setup still work
    stats = ex.statistics()
    assert stats.workers == 2
    assert stats.workers_lost == 0
    assert pids_of(counts, "bad") | plain_pids <= set(worker_pids(ex))


def test_setup_that_cannot_be_serialized_raises_at_creation(ex: impexec.ClusterExecutor) -> None:
    import threading

    lock = threading.Lock()
    with pytest.raises(impexec.SerializationError, match="setup"):
        ex.context(ct.setup, lock, "x")


# -- close -----------------------------------------------------------------------------------
def test_close_waits_and_drops_the_cache_on_every_worker(ex: impexec.ClusterExecutor, tmp_path: Path) -> None:
    with ex.context(ct.setup, str(tmp_path), "closing") as ctx:
        futs = [ctx.submit(ct.whoami, i, sleep=0.05) for i in range(10)]
        holders = pids_of(ct.setup_counts(tmp_path), "closing")
        # nothing is dropped while the context is open
        assert not any(dropped(tmp_path, "closing", pid).exists() for pid in holders)
    assert all(f.done() for f in futs)  # leaving the block waited for the tasks
    holders = pids_of(ct.setup_counts(tmp_path), "closing")
    assert holders == {f.result()[2] for f in futs}
    wait_for_files([dropped(tmp_path, "closing", pid) for pid in holders])
    assert ctx.closed
    with pytest.raises(RuntimeError):
        ctx.submit(ct.whoami)
    with pytest.raises(RuntimeError):
        ctx.map(ct.whoami, [1])
    # the executor and its workers go on
    assert ex.submit(ct.plain_pid).result(timeout=TIMEOUT) in worker_pids(ex)


def test_close_is_idempotent_and_shutdown_without_wait_drops_later(
    ex: impexec.ClusterExecutor, tmp_path: Path
) -> None:
    ctx = ex.context(ct.setup, str(tmp_path), "later")
    fut = ctx.submit(ct.whoami, sleep=0.3)
    ctx.shutdown(wait=False)
    with pytest.raises(RuntimeError):
        ctx.submit(ct.whoami)
    pid = fut.result(timeout=TIMEOUT)[2]
    wait_for_files([dropped(tmp_path, "later", pid)])
    ctx.close()
    ctx.close()
    assert ct.setup_counts(tmp_path) == {("later", pid): 1}


def test_a_context_garbage_collected_unclosed_is_dropped(ex: impexec.ClusterExecutor, tmp_path: Path) -> None:
    ctx = ex.context(ct.setup, str(tmp_path), "forgotten")
    pid = ctx.submit(ct.whoami).result(timeout=TIMEOUT)[2]
    del ctx
    gc.collect()
    wait_for_files([dropped(tmp_path, "forgotten", pid)])


# -- the Executor interface ------------------------------------------------------------------
def total_via_executor(executor: cf.Executor, xs: list[int]) -> tuple[list[Any], list[Any], list[Any]]:
    """Code that knows only concurrent.futures.Executor."""
    futs = [executor.submit(ct.scaled, x, factor=2) for x in xs]
    _, not_done = cf.wait(futs, timeout=TIMEOUT)
    assert not not_done
    mapped = list(executor.map(ct.scaled, xs, xs, timeout=TIMEOUT))
    completed = [f.result() for f in cf.as_completed(futs, timeout=TIMEOUT)]
    return [f.result() for f in futs], mapped, completed


def test_context_is_an_executor_for_code_that_knows_only_executors(
    ex: impexec.ClusterExecutor, tmp_path: Path
) -> None:
    xs = list(range(12))
    with ex.context(ct.setup, str(tmp_path), "iface") as ctx:
        assert isinstance(ctx, cf.Executor)
        submitted, mapped, completed = total_via_executor(ctx, xs)
    assert [(n, v) for n, v, _ in submitted] == [("iface", 2 * x) for x in xs]
    assert [(n, v) for n, v, _ in mapped] == [("iface", x * x) for x in xs]
    assert sorted(v for _, v, _ in completed) == [2 * x for x in xs]
    assert set(ct.setup_counts(tmp_path).values()) == {1}


def test_map_with_chunks_and_unordered(ex: impexec.ClusterExecutor, tmp_path: Path) -> None:
    xs = list(range(100))
    with ex.context(ct.setup, str(tmp_path), "chunks") as ctx:
        for chunksize in (1, 7, "auto", "static"):
            out = list(ctx.map(ct.scaled, xs, timeout=TIMEOUT, chunksize=chunksize))
            assert [v for _, v, _ in out] == xs
        out = list(ctx.map_unordered(ct.scaled, xs, [3] * len(xs), chunksize=9, timeout=TIMEOUT))
        assert sorted(v for _, v, _ in out) == [3 * x for x in xs]
        assert {n for n, _, _ in out} == {"chunks"}
        # a map through a generator (no length) works too
        out = list(ctx.map(ct.scaled, (x for x in xs), chunksize=5, buffersize=2))
        assert [v for _, v, _ in out] == xs
    assert set(ct.setup_counts(tmp_path).values()) == {1}


def test_cancel_futures_on_close(make_executor: Callable[..., Any], tmp_path: Path) -> None:
    ex = make_executor(1, prefetch=0)
    wait_for_workers(ex, 1)
    ctx = ex.context(ct.setup, str(tmp_path), "cancel")
    first = ctx.submit(ct.whoami, sleep=0.5)
    wait_for_files([tmp_path / ct.SETUP_LOG])  # the first task is on the worker
    rest = [ctx.submit(ct.whoami, i) for i in range(10)]
    ctx.shutdown(wait=True, cancel_futures=True)
    assert first.result(timeout=TIMEOUT)[0] == "cancel"
    assert all(f.cancelled() for f in rest)


# -- executor-level initializer ----------------------------------------------------------------
def test_initializer_runs_once_per_worker_process(make_executor: Callable[..., Any], tmp_path: Path) -> None:
    ex = make_executor(2, initializer=ct.initializer, initargs=(str(tmp_path), 7, "seven"))
    wait_for_workers(ex)
    results = [ex.submit(ct.initialized).result(timeout=TIMEOUT) for _ in range(40)]
    assert {values for _, values in results} == {(7, "seven")}
    inits = ct.init_counts(tmp_path)
    assert set(inits.values()) == {1}
    assert {pid for pid, _ in results} <= set(inits)
    # contexts see the initializer's effects too
    with ex.context(ct.setup, str(tmp_path), "after-init") as ctx:
        assert ctx.submit(ct.whoami).result(timeout=TIMEOUT)[2] in inits


def test_failing_initializer_surfaces_as_worker_start_error(
    make_executor: Callable[..., Any], tmp_path: Path
) -> None:
    # the fixture, not "from conftest import": a full run has several conftest modules
    ex = make_executor(impexec.LocalWorkers(2, echo_stderr=False), initializer=ct.failing_initializer)
    fut = ex.submit(ct.plain_pid)
    exc = fut.exception(timeout=60)
    assert isinstance(exc, impexec.WorkerStartError)
    assert "initializer failed on purpose" in exc.output
    with pytest.raises(impexec.WorkerStartError):
        ex.submit(ct.plain_pid)
    with pytest.raises(impexec.WorkerStartError):
        ex.context(ct.setup, str(tmp_path), "never")


def test_setup_that_kills_its_worker_fails_with_worker_lost(
    make_executor: Callable[..., Any], tmp_path: Path
) -> None:
    ex = make_executor(2, max_retries=1)
    wait_for_workers(ex)
    crashing = ex.context(ct.crashing_setup)
    fut = crashing.submit(ct.whoami)
    exc = fut.exception(timeout=TIMEOUT)
    assert isinstance(exc, impexec.WorkerLostError)
    assert exc.attempts == 2
    # the launcher replaced the workers; other contexts run
    with ex.context(ct.setup, str(tmp_path), "after-crash") as ctx:
        assert ctx.submit(ct.whoami).result(timeout=TIMEOUT)[0] == "after-crash"


# -- protocol: a worker that lacks a context asks for the setup --------------------------------
def test_worker_without_the_context_gets_the_task_again_with_setup(
    make_executor: Callable[..., Any], raw_socket: Callable[..., Any]
) -> None:
    """A hand-driven worker (real sockets, real broker) answers NEED_SETUP once."""
    import os

    import zmq

    from impexec._protocol import Flag, Kind
    from impexec._serialize import get_serializer
    from security_tasks import FakeWorker

    key = os.urandom(32)
    ex = make_executor(None, key=key, heartbeat_interval=0.5, heartbeat_timeout=20.0)
    wid = os.urandom(16)
    sock = raw_socket(zmq.DEALER, identity=wid, rcvtimeo_ms=int(TIMEOUT * 1000))
    sock.connect(ex.address)
    # signs with this worker's key, numbers its main-link messages, acknowledges the broker's
    hand = FakeWorker(sock, key, wid)
    hand.join(TIMEOUT)
    ser = get_serializer("cloudpickle")

    def receive(kind: Kind) -> Any:
        return hand.expect(kind, TIMEOUT)

    def answer(task: Any, value: Any = None, flags: int = Flag.OK) -> None:
        frames = ser.dumps(value) if flags & Flag.OK else []
        hand.send(Kind.RESULT, task_id=task.task_id, flags=flags, serializer=task.serializer, frames=frames)

    ctx = ex.context(ct.setup, "/nonexistent", "hand")
    first = ctx.submit(ct.whoami, 1)
    task = receive(Kind.TASK)
    assert task.flags & Flag.HAS_SETUP  # a new worker gets the setup with the first task
    setup, args, _ = ser.loads([task.frames[0]])
    assert (setup, args) == (ct.setup, ("/nonexistent", "hand"))
    answer(task, "one")
    assert first.result(timeout=TIMEOUT) == "one"

    second = ctx.submit(ct.whoami, 2)
    task = receive(Kind.TASK)
    assert not task.flags & Flag.HAS_SETUP  # the broker believes we hold it
    answer(task, flags=Flag.NEED_SETUP)  # ... but we lost it
    again = receive(Kind.TASK)
    assert again.task_id == task.task_id
    assert again.flags & Flag.HAS_SETUP
    answer(again, "two")
    assert second.result(timeout=TIMEOUT) == "two"
    ctx.close()
    assert receive(Kind.DROP_CONTEXT).ctx_id == ctx.id
