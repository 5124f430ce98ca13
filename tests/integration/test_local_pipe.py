"""Local workers' main link on a pipe from the client (impexec._pipe), with real workers.

The broker's side is looked at through ``ex._broker._link.pipes`` (which worker ids it
routes to a pipe); everything else is what a user sees.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap

import pytest

import tasks
from impexec import LocalWorkers
from waiting import wait_until


def _pipes(ex):
    return ex._broker._link.pipes


def _worker_ids(ex) -> set[bytes]:
    return set(ex._broker.call(lambda: list(ex._broker.scheduler.workers), timeout=10))


def test_local_workers_carry_their_main_link_on_a_pipe(executor):
    assert list(executor.map(tasks.square, range(50), timeout=30)) == [x * x for x in range(50)]
    wait_until(lambda: len(_worker_ids(executor)) == 2, 30, "2 workers")
    routed = executor._broker.call(lambda: set(_pipes(executor).by_ident), timeout=10)
    assert routed == _worker_ids(executor), "every local worker's main link is its pipe"
    # the variable that named the pipe is gone: a task's own subprocesses do not see it
    assert executor.submit(os.environ.get, "IMPEXEC_MAIN_FD").result(timeout=30) is None


def test_large_payloads_cross_the_pipe_both_ways(executor):
    blob = os.urandom(24 << 20)  # far larger than the socket buffers: kept and flushed
    got = executor.submit(tasks.identity, blob).result(timeout=60)
    assert got == blob
    sizes = list(executor.map(len, [blob[: n << 20] for n in (1, 3, 7)], timeout=60))
    assert sizes == [1 << 20, 3 << 20, 7 << 20]


def test_switched_off_local_workers_use_zeromq(make_executor, monkeypatch):
    monkeypatch.setenv("IMPEXEC_LOCAL_PIPE", "0")
    ex = make_executor(2)
    assert list(ex.map(tasks.square, range(20), timeout=30)) == [x * x for x in range(20)]
    assert ex._broker.call(lambda: dict(_pipes(ex).by_ident), timeout=10) == {}


def test_a_killed_workers_pipe_is_closed_and_its_task_runs_again(executor):
    wait_until(lambda: len(executor.launchers[0].processes()) == 2, 30, "2 worker processes")
    wait_until(lambda: len(_worker_ids(executor)) == 2, 30, "2 workers")
    before = executor._broker.call(lambda: set(_pipes(executor).by_ident), timeout=10)
    fut = executor.submit(tasks.sleep_then, 0.5, "done")
    victim = wait_until(
        lambda: next((p for p in executor.launchers[0].processes() if _runs_a_task(executor, p.pid)), None),
        30,
        "the task to start",
    )
    os.kill(victim.pid, signal.SIGKILL)
    assert fut.result(timeout=30) == "done"
    wait_until(
        lambda: (
            executor._broker.call(lambda: len(_pipes(executor).by_ident), timeout=10) == 2
            and executor._broker.call(lambda: set(_pipes(executor).by_ident), timeout=10) != before
        ),
        30,
        "the dead worker's pipe to be gone and its replacement's to be there",
    )
    assert executor.statistics().workers_lost == 1


def _runs_a_task(ex, pid: int) -> bool:
    def running() -> bool:
        sched = ex._broker.scheduler
        return any(rec.info.get("pid") == pid and rec.assigned for rec in sched.workers.values())

    return bool(ex._broker.call(running, timeout=10))


def test_a_worker_whose_pipe_is_closed_by_the_client_leaves_and_is_replaced(executor):
    """The worker's side of end of file: it exits (not a wait for heartbeats)."""
    wait_until(lambda: len(_worker_ids(executor)) == 2, 30, "2 workers")
    pids = {p.pid for p in executor.launchers[0].processes()}
    pipes = _pipes(executor)

    def cut_one() -> bytes:
        wid, pipe = next(iter(pipes.by_ident.items()))
        pipes._drop(pipe, "")
        return wid

    cut = executor._broker.call(cut_one, timeout=10)
    wait_until(lambda: cut not in _worker_ids(executor), 30, "the cut-off worker to be gone")
    wait_until(
        lambda: len({p.pid for p in executor.launchers[0].processes()} - pids) == 1,
        30,
        "a replacement process",
    )
    assert list(executor.map(tasks.square, range(10), timeout=30)) == [x * x for x in range(10)]


def test_a_wrapper_that_closes_the_pipe_leaves_the_worker_on_zeromq(make_executor, tmp_path, capfd):
    """``python=`` may be a wrapper: if the pipe's fd does not reach the worker, it says
    so and connects to the broker's socket as any worker does."""
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(
        textwrap.dedent(
            """
            import os, sys
            os.closerange(3, 4096)  # what a careful daemonizer or container runtime does
            os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
            """
        )
    )
    ex = make_executor(LocalWorkers(1, python=[sys.executable, str(wrapper)]))
    assert ex.submit(tasks.square, 7).result(timeout=60) == 49
    assert ex._broker.call(lambda: dict(_pipes(ex).by_ident), timeout=10) == {}
    assert "no pipe from the client" in capfd.readouterr().err


@pytest.mark.parametrize("n", [1, 3])
def test_results_come_back_in_any_order_from_several_pipes(make_executor, n):
    ex = make_executor(n)
    futs = [ex.submit(tasks.sleep_then, 0.01 * (i % 5), i) for i in range(200)]
    assert sorted(f.result(timeout=60) for f in futs) == list(range(200))


def test_workers_told_to_leave_exit_cleanly_though_the_pipe_closes_right_after(make_executor):
    """Teardown sends SHUTDOWN and then closes the pipes: a worker reads both at once and
    must obey the SHUTDOWN (exit 0), not treat the end of file as its client's death
    (exit 4, and a second of trying to remove the private directory of a live client)."""
    ex = make_executor(3)
    # all joined: a worker still starting at shutdown is killed, by design
    wait_until(lambda: ex.statistics().workers == 3, 60, "3 workers to join")
    assert list(ex.map(tasks.square, range(30), timeout=30)) == [x * x for x in range(30)]
    procs = ex.launchers[0].processes()
    assert len(procs) == 3
    ex.shutdown(wait=True)
    assert [p.wait(timeout=10) for p in procs] == [0, 0, 0]
