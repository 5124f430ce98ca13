"""SciPy's differential_evolution and emcee's EnsembleSampler take ClusterExecutor.

Both only need a ``map``: SciPy calls ``workers(func, iterable)`` once per generation
(with ``updating="deferred"``), emcee calls ``pool.map(log_prob, walkers)`` once per
half ensemble per step. Because ``ex.map`` yields results in input order, a seeded run
gives exactly the same numbers as the serial run with the same seed: that is the oracle
here.
"""

from __future__ import annotations

import numpy as np
import pytest

from impexec import ClusterExecutor

optimize = pytest.importorskip("scipy.optimize", reason="needs scipy (impexec[integrations])")
emcee = pytest.importorskip("emcee", reason="needs emcee (impexec[integrations])")

HEARTBEATS = {"heartbeat_interval": 0.2, "heartbeat_timeout": 10.0}


@pytest.fixture(scope="module")
def ex():
    executor = ClusterExecutor(workers=2, **HEARTBEATS)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


def rosenbrock(x):
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


def test_differential_evolution_with_workers_map(ex):
    bounds = [(-2.0, 2.0), (-2.0, 2.0)]
    options = {
        "seed": 3,
        "maxiter": 60,
        "popsize": 8,
        "tol": 1e-8,
        "updating": "deferred",
    }
    parallel = optimize.differential_evolution(rosenbrock, bounds, workers=ex.map, **options)
    serial = optimize.differential_evolution(rosenbrock, bounds, workers=1, **options)
    np.testing.assert_allclose(parallel.x, [1.0, 1.0], atol=1e-3)
    assert parallel.fun < 1e-6
    # the same seed through the executor's map gives the serial run's numbers exactly
    np.testing.assert_array_equal(parallel.x, serial.x)
    assert parallel.nfev == serial.nfev
    assert parallel.nit == serial.nit


def test_differential_evolution_chunked_map(ex):
    # a map with bigger chunks is still a map: SciPy sees the same results
    def chunked_map(fn, iterable):
        return ex.map(fn, iterable, chunksize="auto")

    bounds = [(-2.0, 2.0)] * 3
    options = {
        "seed": 5,
        "maxiter": 20,
        "popsize": 6,
        "polish": False,
        "updating": "deferred",
    }
    parallel = optimize.differential_evolution(rosenbrock, bounds, workers=chunked_map, **options)
    serial = optimize.differential_evolution(rosenbrock, bounds, **options)
    np.testing.assert_array_equal(parallel.x, serial.x)


def log_prob_gaussian(theta, mean, inv_cov):
    diff = theta - mean
    return -0.5 * float(diff @ inv_cov @ diff)


def run_emcee(pool, steps=150, walkers=12):
    mean = np.array([1.0, -2.0])
    cov = np.array([[1.0, 0.5], [0.5, 2.0]])
    sampler = emcee.EnsembleSampler(walkers, 2, log_prob_gaussian, args=(mean, np.linalg.inv(cov)), pool=pool)
    start = np.random.default_rng(11).normal(size=(walkers, 2))
    sampler.random_state = np.random.RandomState(17).get_state()
    sampler.run_mcmc(start, steps, progress=False)
    return sampler, mean, cov


def test_emcee_ensemble_sampler_with_pool(ex):
    # emcee asks the pool for nothing but .map (emcee/ensemble.py); the executor is one
    sampler, mean, _ = run_emcee(ex)
    chain = sampler.get_chain(discard=50, flat=True)
    np.testing.assert_allclose(chain.mean(axis=0), mean, atol=0.6)
    assert 0.5 < np.var(chain[:, 0]) < 2.0
    serial, _, _ = run_emcee(None)
    np.testing.assert_array_equal(sampler.get_chain(), serial.get_chain())
    np.testing.assert_array_equal(sampler.get_log_prob(), serial.get_log_prob())
