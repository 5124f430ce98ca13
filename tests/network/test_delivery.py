"""Delivery over real sockets through a fault-injecting relay, with real worker processes.

Each worker reaches the broker through a relay of its own (conftest.RelayedCluster), so a
test can reset, black-hole, delay or half-open one worker's link while the worker process
itself lives on. Heartbeats are 0.2 s / 2.0 s: a 0.5 s outage is not a lost worker.

What every test asks: each future completes (no wait here is unbounded: a hang is a
TimeoutError), with the right value, and a task runs once unless its worker was lost.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future, wait
from pathlib import Path

import net_tasks as nt
import pytest
from relay import DOWN, UP

from waiting import wait_until

HB_INTERVAL, HB_TIMEOUT = 0.2, 2.0
#: Seconds a future may take after the link came back (a lost message never completes).
RESULT_S = 15.0


def started_pid(logdir: Path, i: int, timeout: float = 30.0) -> int:
    """Wait until task ``i`` of :func:`net_tasks.started_then_sleep` runs; its worker's pid."""
    path = logdir / f"{i}.started"
    wait_until(lambda: path.exists() and path.read_text().strip(), timeout, f"task {i} started")
    return int(path.read_text().split()[0])


def slot_of(cluster, pid: int) -> int:
    return next(i for i, p in enumerate(cluster.procs) if p is not None and p.pid == pid)


def results(futures: list[Future], timeout: float) -> list:
    _, not_done = wait(futures, timeout)
    assert not not_done, f"{len(not_done)} of {len(futures)} futures still pending after {timeout} s"
    return [f.result(0) for f in futures]


def assert_ran_once(logdir: Path, ids) -> None:
    counts = {i: len(nt.runs(logdir, i)) for i in ids}
    wrong = {i: n for i, n in counts.items() if n != 1}
    assert not wrong, f"tasks that did not run exactly once (task: runs): {wrong}"


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    d = tmp_path / "runs"
    d.mkdir()
    return d


# -- a reset link: the worker lives on and reconnects ----------------------------------
def test_task_sent_while_the_link_is_reset_completes(relayed_cluster):
    cluster = relayed_cluster(1)
    cluster.wait_workers(1)
    ex = cluster.ex
    assert ex.submit(nt.square, 3).result(timeout=RESULT_S) == 9
    assert cluster.relays[0].reset(0.5) == 2  # the worker's main and heartbeat connections
    sent = time.monotonic()
    fut = ex.submit(nt.square, 4)  # sent by the broker while the worker is cut off
    assert fut.result(timeout=RESULT_S) == 16
    print(f"task sent during a 0.5 s reset: done {time.monotonic() - sent:.2f} s after submit")
    stats = ex.statistics()
    assert (stats.done, stats.workers_lost, stats.workers) == (2, 0, 1), stats


def test_stream_of_tasks_spanning_a_reset_completes(relayed_cluster, logdir):
    """Tasks submitted before, during and after an outage, to a worker with free slots."""
    cluster = relayed_cluster(1)
    cluster.wait_workers(1)
    ex = cluster.ex
    futures = []
    reset_at, n = 30, 120
    for i in range(n):
        if i == reset_at:
            assert cluster.relays[0].reset(0.5) == 2
        futures.append(ex.submit(nt.record, i, str(logdir)))
        time.sleep(0.01)
    values = results(futures, 30.0)
    assert [v for v, _ in values] == [i * i for i in range(n)]
    assert_ran_once(logdir, range(n))
    stats = ex.statistics()
    assert (stats.done, stats.workers_lost) == (n, 0), stats


@pytest.mark.parametrize("how", ["ends-while-down", "stuck-in-flight"])
def test_result_of_a_task_ending_during_the_outage_is_not_lost(relayed_cluster, logdir, how):
    """ends-while-down: the link is reset and stays down while the result is sent;
    stuck-in-flight: the result is written into a stalled link, which then resets."""
    cluster = relayed_cluster(1)
    cluster.wait_workers(1)
    ex = cluster.ex
    fut = ex.submit(nt.started_then_sleep, 7, str(logdir), 0.4)
    started_pid(logdir, 7)
    if how == "ends-while-down":
        cluster.relays[0].reset(1.0)
    else:
        cluster.relays[0].half_open(UP, 1.0, then="reset")
    cut = time.monotonic()
    value, _ = fut.result(timeout=RESULT_S)
    print(
        f"result {how}: done {time.monotonic() - cut:.2f} s after the cut (the task ends 0.4 s "
        "after it started)"
    )
    assert value == 49
    assert_ran_once(logdir, [7])
    stats = ex.statistics()
    assert (stats.done, stats.workers_lost) == (1, 0), stats


def test_task_in_flight_when_a_short_black_hole_resets_is_not_lost(relayed_cluster, logdir):
    """The broker wrote the task into a link that was already dead (TCP took the bytes), and
    the link then reset: sent as far as the broker can tell, yet never received."""
    cluster = relayed_cluster(1)
    cluster.wait_workers(1)
    ex = cluster.ex
    assert ex.submit(nt.square, 2).result(timeout=RESULT_S) == 4
    cluster.relays[0].blackhole(1.0)  # shorter than the heartbeat timeout; then reset
    time.sleep(0.2)
    sent = time.monotonic()
    fut = ex.submit(nt.record, 3, str(logdir))
    assert fut.result(timeout=RESULT_S)[0] == 9
    print(f"task in flight in a 1 s black hole: done {time.monotonic() - sent:.2f} s after submit")
    assert_ran_once(logdir, [3])
    stats = ex.statistics()
    assert (stats.done, stats.workers_lost) == (2, 0), stats


def test_worker_whose_welcome_is_lost_still_joins(relayed_cluster):
    """The link resets while the broker's WELCOME is on its way: the worker asked to join,
    the broker counts it as joined, and the worker never heard so."""
    cluster = relayed_cluster(1, start=False)
    relay = cluster.relays[0]
    relay.delay(0.5, DOWN)  # what the broker sends takes 0.5 s to arrive
    cluster.start_worker(0)
    # beyond the ZeroMQ handshake (a 64-byte greeting and a READY command, ~110 bytes) the
    # broker sends nothing before the WELCOME: once more came, the WELCOME is in the relay
    wait_until(lambda: relay.stats().bytes_down > 160, 60.0, "the broker answered the worker")
    relay.reset(0.1)
    relay.delay(0.0)
    sent = time.monotonic()
    assert cluster.ex.submit(nt.square, 7).result(timeout=RESULT_S) == 49
    print(f"WELCOME lost: the first task done {time.monotonic() - sent:.2f} s after the reset")
    stats = cluster.ex.statistics()
    assert (stats.workers, stats.done) == (1, 1), stats


def test_tasks_keep_running_once_through_repeated_resets(relayed_cluster, logdir):
    """Exactly once: no worker is lost, so no task may run twice or be lost."""
    cluster = relayed_cluster(2)
    cluster.wait_workers(2)
    ex = cluster.ex
    n = 300
    futures = [ex.submit(nt.record, i, str(logdir), 0.01) for i in range(n)]
    resets = 0
    while resets < 6 and not all(f.done() for f in futures):
        time.sleep(0.4)
        cluster.relays[resets % 2].reset(0.3)
        resets += 1
    values = results(futures, 40.0)
    assert [v for v, _ in values] == [i * i for i in range(n)]
    assert_ran_once(logdir, range(n))
    stats = ex.statistics()
    assert (stats.done, stats.failed, stats.workers_lost) == (n, 0, 0), stats
    assert resets >= 2, "the tasks ended before the link was reset twice: the test proved nothing"


# -- a dead path: the worker is lost, its task runs elsewhere ---------------------------
def test_blackholed_worker_is_lost_and_its_task_reruns(relayed_cluster, logdir):
    cluster = relayed_cluster(2, max_retries=3)
    cluster.wait_workers(2)
    ex = cluster.ex
    calls = []
    fut = ex.submit(nt.started_then_sleep, 1, str(logdir), 1.0)
    fut.add_done_callback(calls.append)
    victim = slot_of(cluster, started_pid(logdir, 1))
    survivor = cluster.procs[1 - victim]
    cut = time.monotonic()
    cluster.relays[victim].blackhole(HB_TIMEOUT + 2.0)  # then reset
    value, pid = fut.result(timeout=RESULT_S + HB_TIMEOUT)
    rerun_after = time.monotonic() - cut
    print(f"black hole: the 1 s task's rerun done {rerun_after:.2f} s after the cut")
    assert value == 1
    # the run on the cut-off worker may have finished, but its result could not arrive
    assert pid == survivor.pid
    stats = ex.statistics()
    assert (stats.workers_lost, stats.done, stats.resubmitted) == (1, 1, 1), stats
    assert rerun_after < HB_TIMEOUT + 1.0 + 2.0, f"rerun done {rerun_after:.1f} s after the cut"
    # the survivor, which ran the resubmitted task, keeps getting work
    assert ex.submit(nt.square, 5).result(timeout=RESULT_S) == 25
    # the cut-off process leaves (it no longer hears the broker); a new one takes its place
    old = cluster.procs[victim]
    old.wait(HB_TIMEOUT + 10.0)
    cluster.start_worker(victim)
    cluster.wait_workers(2)
    values = results([ex.submit(nt.record, i, str(logdir), 0.01) for i in range(10, 30)], RESULT_S)
    assert [v for v, _ in values] == [i * i for i in range(10, 30)]
    assert len(calls) == 1
    stats = ex.statistics()
    assert (stats.done, stats.workers_lost) == (22, 1), stats


# -- latency -------------------------------------------------------------------------------
def test_delayed_links_deliver_everything_once_without_spurious_loss(relayed_cluster, logdir):
    cluster = relayed_cluster(2)
    cluster.wait_workers(2)
    ex = cluster.ex
    for r in cluster.relays:
        r.delay(0.05)  # each way: 100 ms more round trip
    n = 200
    futures = [ex.submit(nt.record, i, str(logdir), 0.002) for i in range(n)]
    futures += [ex.submit(nt.record, i, str(logdir), 0.5) for i in range(n, n + 4)]
    values = results(futures, 60.0)
    assert [v for v, _ in values] == [i * i for i in range(n + 4)]
    time.sleep(HB_TIMEOUT + 0.5)  # idle longer than the heartbeat timeout, over the slow links
    assert ex.submit(nt.square, 6).result(timeout=RESULT_S) == 36
    assert_ran_once(logdir, range(n + 4))
    stats = ex.statistics()
    assert (stats.done, stats.workers_lost, stats.resubmitted, stats.workers) == (n + 5, 0, 0, 2), stats


# -- half-open: one direction dead, neither end told ---------------------------------------
@pytest.mark.parametrize("stalled", [UP, DOWN], ids=["worker-to-broker", "broker-to-worker"])
def test_half_open_link_is_detected_and_recovered(relayed_cluster, logdir, stalled):
    cluster = relayed_cluster(2, max_retries=3)
    cluster.wait_workers(2)
    ex = cluster.ex
    fut = ex.submit(nt.started_then_sleep, 1, str(logdir), 1.0)
    victim_pid = started_pid(logdir, 1)
    victim = slot_of(cluster, victim_pid)
    survivor = cluster.procs[1 - victim]
    cut = time.monotonic()
    cluster.relays[victim].half_open(stalled, math.inf)  # until healed
    wait_until(lambda: ex.statistics().workers_lost >= 1, HB_TIMEOUT + 8.0, "worker declared lost")
    detected = time.monotonic() - cut
    print(f"half-open {stalled}: worker declared lost {detected:.2f} s after the cut")
    assert detected < HB_TIMEOUT + 1.5, f"half-open link noticed after {detected:.1f} s"
    value, pid = fut.result(timeout=RESULT_S)
    assert value == 1
    if stalled == UP:  # the cut-off worker's result cannot arrive: the task ran again
        assert pid == survivor.pid
    else:  # its result can: it ends before the loss is noticed, and counts (once)
        assert pid in (victim_pid, survivor.pid)
        if pid == victim_pid:
            assert_ran_once(logdir, [1])
    assert ex.submit(nt.square, 5).result(timeout=RESULT_S) == 25  # the survivor still works
    cluster.relays[victim].heal()
    cluster.procs[victim].wait(HB_TIMEOUT + 10.0)  # told to leave, or it lost the broker
    cluster.start_worker(victim)
    cluster.wait_workers(2)
    values = results([ex.submit(nt.record, i, str(logdir), 0.01) for i in range(10, 30)], RESULT_S)
    assert [v for v, _ in values] == [i * i for i in range(10, 30)]
    stats = ex.statistics()
    assert (stats.done, stats.workers_lost) == (22, 1), stats
