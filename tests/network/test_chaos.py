"""Network chaos: many tasks on 4 relayed workers while links reset and workers die.

Every 0.5 s one random worker's link is reset (its process lives on and reconnects);
every 2 s one random worker is killed with SIGKILL and a new one started in its slot,
except in slot 0: its worker lives through the whole run, as most workers of a real
cluster do. Without it, every worker would die within seconds, and its death would
resubmit whatever a reset had lost on it: the chaos would hide the faults it is about.
Asked at the end: no future lost (an exception) or hung (not done within the bound), no
result wrong, and no task delivered twice: a task may run again only because a worker
that ran it died (killed, or declared lost and dismissed), never twice on one process
nor on two workers that both lived on.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import wait

import net_tasks as nt
import pytest

N_TASKS = 10_000
N_WORKERS = 4
TASK_S = 0.01  # per task: 10,000 tasks keep 4 workers busy ~25 s, under the chaos
RESET_EVERY_S, KILL_EVERY_S = 0.5, 2.0
#: Seconds every future must be done in, from the first submit.
BOUND_S = 150.0


class Chaos:
    """A thread that resets links and kills workers of a RelayedCluster until stopped."""

    def __init__(self, cluster, seed: int):
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.resets = 0
        self.kills = 0
        self.restarts = 0
        self.lost_pids: set[int] = set()  # processes that died or were dismissed
        self.exit_codes: Counter[int] = Counter()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the chaos thread did not stop"

    def _run(self) -> None:
        try:
            now = time.monotonic()
            next_reset, next_kill = now + RESET_EVERY_S, now + KILL_EVERY_S
            while not self._stop.wait(0.05):
                self._restart_exited()
                now = time.monotonic()
                if now >= next_reset:
                    next_reset += RESET_EVERY_S
                    self.cluster.relays[self.rng.randrange(N_WORKERS)].reset(self.rng.uniform(0.1, 0.5))
                    self.resets += 1
                if now >= next_kill:
                    next_kill += KILL_EVERY_S
                    slot = self.rng.randrange(1, N_WORKERS)  # slot 0 lives on (docstring)
                    proc = self.cluster.kill_worker(slot)
                    if proc is not None:
                        self.kills += 1
                        self.lost_pids.add(proc.pid)
                        self.cluster.start_worker(slot)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _restart_exited(self) -> None:
        """A worker that left by itself (declared lost, or lost the broker) is replaced too."""
        for slot, proc in enumerate(self.cluster.procs):
            if proc is not None and proc.poll() is not None:
                self.exit_codes[proc.returncode] += 1
                self.lost_pids.add(proc.pid)
                self.cluster.start_worker(slot)
                self.restarts += 1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_network_chaos(relayed_cluster, tmp_path):
    logdir = tmp_path / "runs"
    logdir.mkdir()
    cluster = relayed_cluster(N_WORKERS, max_retries=5)
    cluster.wait_workers(N_WORKERS)
    ex = cluster.ex
    chaos = Chaos(cluster, seed=12)
    started = time.monotonic()
    chaos.start()
    try:
        futures = [ex.submit(nt.record, i, str(logdir), TASK_S) for i in range(N_TASKS)]
        _, hung = wait(futures, max(1.0, BOUND_S - (time.monotonic() - started)))
    finally:
        chaos.stop()
    seconds = time.monotonic() - started
    stats = ex.statistics()
    failed = {i: f.exception(0) for i, f in enumerate(futures) if f.done() and f.exception(0)}
    wrong = [i for i, f in enumerate(futures) if f.done() and not f.exception(0) and f.result(0)[0] != i * i]
    twice, reruns = [], 0
    for i in range(N_TASKS):
        pids = nt.runs(logdir, i)
        reruns += max(0, len(pids) - 1)
        survivors = [p for p in pids if p not in chaos.lost_pids]
        if len(set(pids)) < len(pids) or len(survivors) > 1:
            twice.append((i, pids))
    print(
        f"network chaos: {N_TASKS} tasks on {N_WORKERS} workers in {seconds:.1f} s; "
        f"{chaos.resets} link resets, {chaos.kills} kills, {chaos.restarts} other exits "
        f"{dict(chaos.exit_codes)}; {stats.resubmitted} resubmissions, {reruns} reruns, "
        f"{stats.workers_lost} workers lost; {stats}"
    )
    assert chaos.error is None, f"the chaos thread failed: {chaos.error!r}"
    assert not hung, f"{len(hung)} futures not done within {BOUND_S} s: {stats}"
    assert not failed, f"{len(failed)} tasks lost, e.g. {list(failed.items())[:3]}"
    assert not wrong, f"wrong results for tasks {wrong[:10]}"
    assert not twice, f"{len(twice)} tasks delivered twice (task, pids that ran it): {twice[:10]}"
    assert (stats.done, stats.failed) == (N_TASKS, 0), stats
    assert chaos.resets >= 10 and chaos.kills >= 3, "too little chaos to prove anything"
