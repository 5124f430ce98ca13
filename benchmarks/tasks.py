"""Task functions shipped to the workers.

They live in an importable module (``benchmarks.tasks``) so that every executor
(pickle, cloudpickle, dask, loky) sends them *by reference*: the worker imports this
module instead of receiving the function's code.  ``benchmarks/run.py`` puts the
repository root on ``PYTHONPATH`` so worker processes started from a fresh interpreter
can import it too.

Keep them trivial and dependency-free (numpy is imported lazily, only by the tasks that
handle arrays), so that what is measured is the executor, not the task.
"""

from __future__ import annotations

import os
import time


def noop(*args, **kwargs):
    """Do nothing, return None (used for throughput and latency)."""
    return None


def echo(x):
    """Return the argument (map throughput: results can be checked for order)."""
    return x


def identity(x):
    """Return the argument unchanged (large-payload round trip)."""
    return x


def sleep(seconds):
    """Sleep, return None (scheduling efficiency with short blocking tasks)."""
    time.sleep(seconds)
    return None


def getpid(*args):
    """Return the worker's process id (e.g. to find a worker to kill)."""
    return os.getpid()


def sleep_then_pid(seconds):
    """Sleep, then return the worker's process id."""
    time.sleep(seconds)
    return os.getpid()


# --- for workloads on the roadmap ---------------------------------------------------


def slow_setup(seconds=0.5, payload=1):
    """An expensive per-worker setup (``context`` benchmark): sleep, return a value."""
    time.sleep(seconds)
    return payload


def use_setup(value, x):
    """A task of a context: receives the setup's value first."""
    return value + x


def setup_in_task(x, seconds=0.5, payload=1):
    """The same work without a context: the setup is paid in every task."""
    return use_setup(slow_setup(seconds, payload), x)
