"""pyABC runs ABC-SMC on ClusterExecutor unchanged (both executor-based samplers).

The model: ten draws from N(mu, 1), summarized by their mean; prior mu ~ N(0, 2²); the
observed mean is 1.5. The exact posterior is normal with precision 1/4 + 10 = 10.25,
mean 10 * 1.5 / 10.25 ≈ 1.463 and sd ≈ 0.312; a few ABC-SMC generations of 100
particles get its mean to within a few hundredths.

How pyABC drives the executor (pyabc/sampler/eps_mixin.py): ConcurrentFutureSampler
keeps up to 200 futures submitted, polls ``done()`` every 10 ms, and once it has enough
accepted particles ``cancel()``s the futures of later jobs without waiting for them.
Here those cancelled tasks are shown never to run, and the time the next task waits
after such a mass cancellation is measured (printed; run with ``-s`` to see it).
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
import uuid
from concurrent.futures import wait

import numpy as np
import pytest

pyabc = pytest.importorskip("pyabc", reason="needs pyabc (pip install -e '.[integrations]')")

from impexec import ClusterExecutor  # noqa: E402

# not a fault test: generous heartbeats so a loaded CI machine does not lose workers
HEARTBEATS = {"heartbeat_interval": 0.2, "heartbeat_timeout": 10.0}
OBSERVED = 1.5
N_DRAWS = 10
PRIOR_SD = 2.0
POSTERIOR_PRECISION = 1 / PRIOR_SD**2 + N_DRAWS
POSTERIOR_MEAN = N_DRAWS * OBSERVED / POSTERIOR_PRECISION
POSTERIOR_SD = POSTERIOR_PRECISION**-0.5
GENERATIONS = 3


class GaussianMean:
    """The mean of ``N_DRAWS`` draws from N(mu, 1); drops a marker file per run."""

    def __init__(self, markers: str | None = None):
        self.markers = markers

    def __call__(self, parameter):
        if self.markers:
            open(os.path.join(self.markers, uuid.uuid4().hex), "w").close()
        return {"y": parameter["mu"] + np.random.normal() / math.sqrt(N_DRAWS)}


def distance(x, y):
    return abs(x["y"] - y["y"])


@pytest.fixture(autouse=True)
def _quiet_pyabc():
    logger = logging.getLogger("ABC")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture
def ex():
    executor = ClusterExecutor(workers=2, **HEARTBEATS)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


def run_abc(sampler, tmp_path, model=None, generations=GENERATIONS):
    prior = pyabc.Distribution(mu=pyabc.RV("norm", 0, PRIOR_SD))
    abc = pyabc.ABCSMC(model or GaussianMean(), prior, distance, population_size=100, sampler=sampler)
    abc.new("sqlite:///" + str(tmp_path / "abc.db"), {"y": OBSERVED})
    return abc.run(max_nr_populations=generations)


def check_posterior(history, generations=GENERATIONS):
    assert history.max_t == generations - 1
    df, w = history.get_distribution(m=0)
    mean = float(np.sum(df["mu"] * w))
    sd = float(np.sqrt(np.sum(w * (df["mu"] - mean) ** 2)))
    assert abs(mean - POSTERIOR_MEAN) < 0.25, (mean, POSTERIOR_MEAN)
    # ABC's tolerance widens the posterior a little; it must not be the prior's width
    assert 0.5 * POSTERIOR_SD < sd < 3 * POSTERIOR_SD, (sd, POSTERIOR_SD)


def settle(ex, timeout=60.0):
    """Wait until the broker holds no task (pyABC leaves late futures running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = ex.statistics()
        if stats.queued == 0 and stats.running == 0:
            return stats
        time.sleep(0.05)
    pytest.fail(f"tasks still held after {timeout} s: {ex.statistics()}")


def test_concurrent_future_sampler(ex, tmp_path, record_property):
    markers = tmp_path / "runs"
    markers.mkdir()
    sampler = pyabc.sampler.ConcurrentFutureSampler(cfuture_executor=ex)
    history = run_abc(sampler, tmp_path, GaussianMean(str(markers)))
    check_posterior(history)

    # pyABC counts every job it submitted (nr_evaluations_), cancelled or not
    pops = history.get_all_populations()
    submitted = int(pops.samples.sum())
    stats = settle(ex)
    assert stats.cancelled > 0, "pyABC cancelled nothing: this test shows nothing"
    assert stats.done + stats.cancelled == submitted
    # each job runs the model once: a marker per task that ran, none for a cancelled one
    assert len(os.listdir(markers)) == stats.done
    assert stats.failed == 0

    # Measurement (printed, not asserted): ms per evaluation in each generation. A
    # backlog of cancelled tasks slowing the next generation would show as a rise here.
    if "wall_time" in pops.columns:
        walls = pops.wall_time
    else:  # pyABC < 0.13 (the newest on Python 3.10): from the generations' end times
        walls = pops.population_end_time.diff().dt.total_seconds()
    rows = [
        (int(t), int(n), float(wall), 1000 * float(wall) / int(n))
        for t, n, wall in zip(pops.t, pops.samples, walls, strict=True)
        if t >= 0
    ]
    print(
        f"\nConcurrentFutureSampler: {submitted} jobs, {stats.done} ran, "
        f"{stats.cancelled} cancelled before dispatch"
    )
    print(" t  submitted  wall_s  ms/evaluation")
    for row in rows:
        print(" {}  {:9d}  {:6.2f}  {:13.2f}".format(*row))
    record_property("pyabc_generations", rows)


def test_mapping_sampler(ex, tmp_path):
    history = run_abc(pyabc.sampler.MappingSampler(map_=ex.map), tmp_path)
    check_posterior(history)
    stats = settle(ex)
    assert stats.done > 0
    assert stats.cancelled == 0


def sleepy(i, directory):
    time.sleep(0.02)
    open(os.path.join(directory, str(i)), "w").close()
    return i


def noop():
    return None


def round_trips(ex, n=5):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        ex.submit(noop).result(timeout=30)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def test_a_mass_cancel_leaves_nothing_behind(ex, tmp_path, record_property):
    # pyABC's end-of-generation pattern in isolation: 200 futures out, a few done,
    # cancel the rest without waiting, submit the next generation's work at once.
    runs = tmp_path / "runs"
    runs.mkdir()
    ex.submit(noop).result(timeout=60)  # the workers are up (and have imported this module)
    before = round_trips(ex)
    futures = [ex.submit(sleepy, i, str(runs)) for i in range(200)]
    futures[1].result(timeout=30)
    cancelled = {i for i, f in enumerate(futures) if f.cancel()}
    t0 = time.perf_counter()
    ex.submit(noop).result(timeout=30)
    first_after = time.perf_counter() - t0
    after = round_trips(ex)
    _, not_done = wait(futures, timeout=30)
    assert not not_done
    # all but what the workers had taken (running, or prefetched: no longer cancellable)
    assert cancelled
    ran = {int(name) for name in os.listdir(runs)}
    assert ran == set(range(200)) - cancelled
    # the first task after the cancel also waits for the tasks the workers still hold
    print(
        f"\n{len(cancelled)} of 200 cancelled, {200 - len(cancelled)} already held by "
        f"workers ran; round trip: {1000 * before:.2f} ms before, "
        f"{1000 * first_after:.2f} ms for the first task after the cancel (behind the "
        f"held tasks), "
        f"{1000 * after:.2f} ms after"
    )
    record_property("round_trip_ms", (before * 1000, first_after * 1000, after * 1000))
