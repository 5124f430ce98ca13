"""Fault tolerance on real worker processes: crashes, kills, hangs, late results.

The crash matrix follows loky's shape: where a task fails x how → what its future gets.
Heartbeats are sub-second here so that loss is detected in well under a second.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

import fault_tasks as ft
from impexec import ClusterExecutor, LocalWorkers, SerializationError, WorkerLostError
from processes import start_worker
from waiting import wait_until

TESTS_DIR = str(Path(__file__).resolve().parents[1])
FAST = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.5}


def make_executor(n=2, **kw):
    opts = {**FAST, "max_retries": 2, **kw}
    return ClusterExecutor(LocalWorkers(n, env={"PYTHONPATH": TESTS_DIR}), **opts)


@pytest.fixture
def ex():
    executor = make_executor()
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


LOST = WorkerLostError
CRASH_MATRIX = [
    # where, how, expected exception type
    ("unpickle-args", "raise", RuntimeError),
    ("unpickle-args", "exit", LOST),
    ("unpickle-args", "kill", LOST),
    ("run", "raise", RuntimeError),
    ("run", "exit", LOST),
    ("run", "segv", LOST),
    ("run", "kill", LOST),
    ("run", "stop", LOST),
    ("pickle-result", "raise", SerializationError),
    ("pickle-result", "exit", LOST),
    ("unpickle-result", "raise", SerializationError),
    ("setup", "raise", RuntimeError),
    ("setup", "exit", LOST),
]


@pytest.mark.parametrize(
    ("where", "how", "expected"), CRASH_MATRIX, ids=[f"{w}-{h}" for w, h, _ in CRASH_MATRIX]
)
def test_crash_matrix(ex, where, how, expected):
    if where == "unpickle-args":
        fut = ex.submit(ft.double, ft.DieAtUnpickle(how))
    elif where == "run":
        fut = ex.submit(ft.crash_task, how)
    elif where == "pickle-result":
        fut = ex.submit(ft.return_die_at_pickle, how)
    elif where == "unpickle-result":
        fut = ex.submit(ft.return_raise_at_client_unpickle)
    else:
        ctx = ex.context(ft.setup_dies, how)
        fut = ctx.submit(ft.use_setup, 1)
    with pytest.raises(expected) as info:
        fut.result(timeout=60)
    if expected is LOST:
        assert info.value.attempts == 3  # max_retries=2 → 3 attempts
        assert len(info.value.workers) == 3
    elif expected is RuntimeError:
        assert "RemoteTraceback" in type(info.value.__cause__).__name__
    # the executor goes on: other work still completes
    assert list(ex.map(ft.double, range(20), timeout=60)) == [2 * i for i in range(20)]


def test_poison_task_fails_alone_while_others_succeed(ex):
    poison = ex.submit(ft.crash_task, "exit")
    others = [ex.submit(ft.sleep_double, i, 0.005) for i in range(100)]
    with pytest.raises(WorkerLostError, match="3 attempts"):
        poison.result(timeout=60)
    assert [f.result(timeout=60) for f in others] == [2 * i for i in range(100)]
    stats = ex.statistics()
    assert stats.failed == 1
    assert stats.done == 100
    # its three charged attempts killed a worker each, and no innocent task was blamed. A
    # loss before the worker acknowledged the task is not charged (the task may never have
    # reached it) and the task runs alone next: a task that kills its worker at once may
    # therefore take one worker more than its attempts
    assert 3 <= stats.workers_lost <= 4


def test_killed_worker_tasks_resubmitted_and_replaced(ex):
    futs = [ex.submit(ft.sleep_double, i, 0.02) for i in range(100)]
    futs[0].result(timeout=60)  # workers are connected and busy
    wait_until(lambda: ex.statistics().workers >= 2, 30, "both workers to join")
    victim = ex.launchers[0].processes()[0]
    os.kill(victim.pid, signal.SIGKILL)
    assert [f.result(timeout=60) for f in futs] == [2 * i for i in range(100)]
    stats = ex.statistics()
    assert stats.workers_lost >= 1
    assert stats.resubmitted >= 1
    # the launcher replaced the dead worker
    wait_until(lambda: ex.statistics().workers >= 2, 30, "the launcher to replace the killed worker")
    assert ex.statistics().workers == 2


def test_sigstopped_worker_detected_and_its_late_result_dropped(caplog, tmp_path):
    caplog.set_level(logging.DEBUG, logger="impexec._broker")
    started = tmp_path / "started"
    with ClusterExecutor(None, **FAST) as ex:
        stopped = start_worker(ex.connection_file())
        try:
            wait_until(lambda: ex.statistics().workers >= 1, 30, "the first worker to join")
            assert ex.statistics().workers == 1
            fut = ex.submit(ft.slow_whoami, 1.0, str(started))
            wait_until(started.exists, 30, "the task to start on the only worker")
            os.kill(stopped.pid, signal.SIGSTOP)
            helper = start_worker(ex.connection_file())
            try:
                # detected by heartbeat, finished elsewhere
                assert fut.result(timeout=60) == helper.pid
                stats = ex.statistics()
                assert stats.workers_lost == 1 and stats.resubmitted == 1
                os.kill(stopped.pid, signal.SIGCONT)
                # resumed: it finishes its task, its answer is dropped, it is sent away
                assert stopped.wait(timeout=30) == 6  # EXIT_DISMISSED
                assert fut.result(timeout=1) == helper.pid
                assert ex.statistics().done == 1
                # its result did arrive (a stopped worker whose task had ended sends it
                # as soon as it resumes) and was dropped, not counted or set a second time
                # (the broker thread handles it after the worker has gone: wait for it)
                wait_until(
                    lambda: [
                        r
                        for r in caplog.records
                        if r.name == "impexec._broker" and "late result for task" in r.getMessage()
                    ],
                    10,
                    "the stopped worker's late result to reach the broker",
                )
            finally:
                helper.terminate()
                helper.wait(10)
        finally:
            if stopped.poll() is None:
                os.kill(stopped.pid, signal.SIGCONT)
                stopped.kill()
            stopped.wait(10)


def test_busy_worker_sends_no_heartbeats_and_is_never_declared_lost():
    """While tasks and results flow on a worker's main socket, its heartbeat thread skips
    its beats (the broker counts results as signs of life); idle, it beats again."""
    from impexec._protocol import Kind

    with ClusterExecutor(1, heartbeat_interval=0.1, heartbeat_timeout=0.6) as ex:
        broker = ex._broker
        beats: list[float] = []
        handle = broker._on_message

        def counting(ident, peer, is_hb, msg):  # runs on the broker thread
            if msg.kind == Kind.HEARTBEAT and is_hb:
                beats.append(time.monotonic())
            handle(ident, peer, is_hb, msg)

        broker._on_message = counting
        assert ex.submit(abs, -1).result(timeout=60) == 1
        start = time.monotonic()
        while time.monotonic() - start < 1.5:  # 15 heartbeat intervals of back-to-back work
            assert ex.submit(ft.sleep_double, 1, 0.005).result(timeout=60) == 2
        end = time.monotonic()
        busy = [t for t in beats if start + 0.25 < t < end]
        time.sleep(0.6)  # idle: the beats come back
        idle = [t for t in beats if t > end + 0.15]
        stats = ex.statistics()
    assert len(busy) <= 1, f"{len(busy)} heartbeats while busy"
    assert len(idle) >= 3, f"only {len(idle)} heartbeats while idle"
    assert stats.workers_lost == 0 and stats.resubmitted == 0


def test_workers_exit_when_broker_is_gone():
    ex = ClusterExecutor(None, **FAST)
    worker = start_worker(ex.connection_file())
    try:
        wait_until(lambda: ex.statistics().workers >= 1, 30, "the worker to join")
        assert ex.statistics().workers == 1
        # the broker vanishes without a goodbye (as if its host died)
        ex._broker.enqueue(lambda: (_ for _ in ()).throw(SystemExit))
        ex._broker.join(10)
        assert worker.wait(timeout=30) in (0, 5)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        ex.shutdown(wait=True)


def test_late_joiner_gets_queued_work():
    with ClusterExecutor(None, **FAST) as ex:
        futs = [ex.submit(ft.double, i) for i in range(50)]
        time.sleep(0.2)
        assert not any(f.done() for f in futs)
        worker = start_worker(ex.connection_file())
        try:
            assert [f.result(timeout=60) for f in futs] == [2 * i for i in range(50)]
        finally:
            ex.shutdown(wait=True)
            assert worker.wait(timeout=30) == 0


def test_bad_python_reports_worker_start_error():
    from impexec import WorkerStartError

    ex = ClusterExecutor(LocalWorkers(2, python="/nonexistent/python3"), **FAST)
    try:
        fut = ex.submit(ft.double, 1)
        with pytest.raises(WorkerStartError, match="nonexistent"):
            fut.result(timeout=30)
        with pytest.raises(WorkerStartError):
            ex.submit(ft.double, 2)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def test_worker_crashing_on_import_reports_its_stderr():
    from impexec import WorkerStartError

    ex = ClusterExecutor(
        LocalWorkers(1, python=[sys.executable, "-c", "import sys; sys.exit('boom: cannot import model')"]),
        **FAST,
    )
    try:
        fut = ex.submit(ft.double, 1)
        with pytest.raises(WorkerStartError, match="boom: cannot import model"):
            fut.result(timeout=30)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def test_chaos_ten_thousand_tasks_random_sigkill():
    """≥ 10,000 short tasks while a random worker is SIGKILLed every ~0.5 s."""
    n = 10_000
    ex = make_executor(2, max_retries=10)
    stop = threading.Event()
    kills = []

    def killer():
        rng = random.Random(1)
        while not stop.wait(0.5):
            procs = ex.launchers[0].processes()
            if procs:
                victim = rng.choice(procs)
                try:
                    os.kill(victim.pid, signal.SIGKILL)
                    kills.append(victim.pid)
                except ProcessLookupError:
                    pass

    thread = threading.Thread(target=killer, daemon=True)
    try:
        futs = [ex.submit(ft.sleep_double, i, 0.0005) for i in range(n)]
        thread.start()
        results = [f.result(timeout=300) for f in futs]
        stop.set()
        thread.join(5)
        assert results == [2 * i for i in range(n)]
        stats = ex.statistics()
        assert stats.done == n and stats.failed == 0
        assert stats.workers_lost >= 3 and len(kills) >= 3
    finally:
        stop.set()
        ex.shutdown(wait=True, cancel_futures=True)
