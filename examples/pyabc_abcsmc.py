"""pyABC's ABC-SMC on impexec workers, with both of pyABC's executor-based samplers.

    python examples/pyabc_abcsmc.py

The model draws ten values from N(mu, 1) and reports their mean; the prior is
mu ~ N(0, 2²) and the observed mean is 1.5, so the exact posterior mean is
10 * 1.5 / 10.25 ≈ 1.46. Four generations of 100 particles get close to it.

``ConcurrentFutureSampler(cfuture_executor=ex)`` submits one job per particle proposal
and cancels the late ones at the end of each generation (cancelled jobs never run);
``MappingSampler(map_=ex.map)`` evaluates one batch per round through ``ex.map``. To run
on a cluster, change ``workers=2`` into a launcher, e.g. ``SlurmWorkers(64,
time="2:00:00")``, or start workers elsewhere with ``impexec-worker --connect FILE``.
"""

# ci: needs pyabc  (pip install -e '.[integrations]')

import logging
import math
import os
import tempfile
import time

import numpy as np
import pyabc

from impexec import ClusterExecutor

OBSERVED = {"y": 1.5}
EXACT_MEAN = 10 * 1.5 / (1 / 4 + 10)


def model(parameter):
    return {"y": parameter["mu"] + np.random.normal() / math.sqrt(10)}


def distance(x, y):
    return abs(x["y"] - y["y"])


def run(sampler, db_dir: str, name: str) -> float:
    prior = pyabc.Distribution(mu=pyabc.RV("norm", 0, 2))
    abc = pyabc.ABCSMC(model, prior, distance, population_size=100, sampler=sampler)
    abc.new("sqlite:///" + os.path.join(db_dir, f"{name}.db"), OBSERVED)
    history = abc.run(max_nr_populations=4)
    df, w = history.get_distribution(m=0)
    return float(np.sum(df["mu"] * w))


def main() -> None:
    logging.getLogger("ABC").setLevel(logging.WARNING)  # pyABC logs every generation
    with tempfile.TemporaryDirectory() as db_dir, ClusterExecutor(workers=2) as ex:
        samplers = {
            "ConcurrentFutureSampler": pyabc.sampler.ConcurrentFutureSampler(cfuture_executor=ex),
            "MappingSampler": pyabc.sampler.MappingSampler(map_=ex.map),
        }
        for name, sampler in samplers.items():
            t0 = time.perf_counter()
            mean = run(sampler, db_dir, name)
            print(
                f"{name:<24} posterior mean {mean:.3f} (exact {EXACT_MEAN:.3f}) "
                f"in {time.perf_counter() - t0:.1f} s"
            )
            if abs(mean - EXACT_MEAN) > 0.3:
                raise SystemExit(f"{name}: posterior mean {mean} is off")
        stats = ex.statistics()
        print(f"tasks run: {stats.done}, cancelled before they ran: {stats.cancelled}")


if __name__ == "__main__":
    main()
