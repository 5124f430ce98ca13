"""The workloads: what is measured, one repetition at a time.

Interface (see README.md, "Adding a workload")::

    class MyWorkload(Workload):
        name = "mine"                      # --workloads name, JSON key
        title = "what it does"             # shown in --list and the README
        metrics = (Metric("key", "row label", "unit", HIGHER),)   # one table row each
        requires = frozenset({CONTEXT})    # capability flags; else the cell is "n/a"
        fresh_executor = False             # True: measure() gets ex=None, opens its own
        default = True                     # part of the default run?
        budget = 30.0                      # s of repetitions, then stop early

        def params(self, quick):           # sizes; stored in the JSON
            return {"n": 100 if quick else 1000}

        def warmup(self, ex, ctx):         # optional; default: every worker runs a task
            ...

        def measure(self, ex, ctx):        # ONE repetition -> {metric key: value}
            ...
            return {"key": value}

    WORKLOADS.append(MyWorkload())   # or add it to the tuple below

The runner opens a fresh executor per (executor, workload) cell (in a child process of
its own unless --in-process), calls ``warmup`` once, then ``measure`` ``--repeats``
times (fewer if ``budget`` seconds are used up; at least once) and reports each
metric's median.  ``ctx`` is a :class:`Ctx`: ``result``/``wait_all``/``remaining``
bound every wait by the cell's deadline (``--timeout``), raising :class:`TimeoutError`,
which the table shows as "timeout"; any other exception becomes "error: ...".  Raise
:class:`NotApplicable` for "n/a".  ``ctx.note(text)`` adds a footnote to the cell.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field

from benchmarks import tasks
from benchmarks.executors import (
    CONTEXT,
    LOCAL_PROCESSES,
    MAP_CHUNKSIZE,
    MAP_STATIC,
    ExecutorSpec,
)

HIGHER = "higher"
LOWER = "lower"


class NotApplicable(Exception):
    """Raised by a workload that cannot run on this executor (cell reads "n/a")."""


@dataclass(frozen=True)
class Metric:
    key: str  #: key in measure()'s dict and in the JSON
    label: str  #: row label in the table
    unit: str
    better: str  #: HIGHER or LOWER
    fmt: str = "{:,.0f}"  #: format of the value in the table
    show: bool = True  #: False: only in the JSON


@dataclass
class Ctx:
    """What a workload sees besides the executor."""

    spec: ExecutorSpec
    workers: int
    params: dict
    deadline: float  #: time.monotonic() by which the cell must be done
    quick: bool = False
    notes: list[str] = field(default_factory=list)
    worker_pids: set[int] = field(default_factory=set)  #: seen by the warm-up

    # -- bounded waiting ---------------------------------------------------------
    def remaining(self) -> float:
        """Seconds left before the cell's deadline; TimeoutError if none."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("cell deadline reached")
        return left

    def result(self, fut: cf.Future):
        """``fut.result()`` bounded by the deadline."""
        try:
            return fut.result(timeout=self.remaining())
        except cf.TimeoutError as exc:  # an alias of TimeoutError on 3.11+
            raise TimeoutError("waiting for a result") from exc

    def wait_all(self, futs, *, raise_errors: bool = True) -> list:
        """Wait for every future (bounded); return their results in order."""
        _done, not_done = cf.wait(futs, timeout=self.remaining())
        if not_done:
            raise TimeoutError(f"{len(not_done)} of {len(futs)} tasks not done")
        if raise_errors:
            return [f.result() for f in futs]
        out = []
        for f in futs:
            if f.cancelled():
                out.append(cf.CancelledError())
            else:
                exc = f.exception()
                out.append(f.result() if exc is None else exc)
        return out

    # -- helpers -------------------------------------------------------------------
    def open(self, workers: int | None = None):
        """A fresh executor of this column (for fresh_executor workloads)."""
        return self.spec.open(workers or self.workers)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def autorange(self, fn, min_time: float) -> tuple[int, float]:
        """Call ``fn()`` until at least ``min_time`` s passed; return (calls, seconds).

        So that a fast executor is timed over enough work while a slow one runs the
        same-sized batch just once.
        """
        calls, t0 = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                return calls, elapsed
            self.remaining()


class Workload:
    name: str = ""
    title: str = ""
    metrics: tuple[Metric, ...] = ()
    requires: frozenset[str] = frozenset()
    fresh_executor: bool = False
    default: bool = True
    budget: float = 30.0

    def params(self, quick: bool) -> dict:
        return {}

    def warmup(self, ex: cf.Executor, ctx: Ctx) -> None:
        """Make sure every worker is up and has run a task (and learn their pids)."""
        futs = [ex.submit(tasks.sleep_then_pid, 0.05) for _ in range(2 * ctx.workers)]
        ctx.worker_pids.update(ctx.wait_all(futs))
        ctx.wait_all([ex.submit(tasks.noop) for _ in range(20 * ctx.workers)])

    def measure(self, ex: cf.Executor | None, ctx: Ctx) -> dict[str, float]:
        raise NotImplementedError


def _pctl(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    k = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[k]


# --- 1. submit throughput -------------------------------------------------------------


class SubmitThroughput(Workload):
    name = "submit"
    title = "submit N no-op tasks, wait for all"
    metrics = (Metric("tasks_per_s", "submit no-op throughput", "tasks/s", HIGHER),)
    budget = 20.0

    def params(self, quick):
        return {"n": 200 if quick else 1000, "min_time": 0.05 if quick else 0.5}

    def measure(self, ex, ctx):
        n = ctx.params["n"]

        def batch():
            ctx.wait_all([ex.submit(tasks.noop) for _ in range(n)])

        calls, elapsed = ctx.autorange(batch, ctx.params["min_time"])
        return {"tasks_per_s": calls * n / elapsed}


# --- 2. map throughput by chunksize ----------------------------------------------


class MapThroughput(Workload):
    name = "map"
    title = 'map(echo, range(N), chunksize=1|16|256|"static")'
    CHUNKS = (1, 16, 256, "static")
    metrics = tuple(Metric(f"items_per_s_{c}", f"map chunksize={c}", "items/s", HIGHER) for c in CHUNKS)
    budget = 40.0

    def params(self, quick):
        return {"n": 200 if quick else 2000, "min_time": 0.05 if quick else 0.5}

    def chunksize(self, c, ctx):
        if c != "static":
            return c
        if ctx.spec.has(MAP_STATIC):
            return "static"
        size = math.ceil(ctx.params["n"] / ctx.workers)
        ctx.note(f'chunksize="static" emulated as ceil(N/workers) = {size}')
        return size

    def measure(self, ex, ctx):
        n = ctx.params["n"]
        expected = list(range(n))
        if not ctx.spec.has(MAP_CHUNKSIZE):
            ctx.note("map ignores chunksize: every item is a task")
        out = {}
        for c in self.CHUNKS:
            cs = self.chunksize(c, ctx)

            def one_map(cs=cs):
                got = list(ex.map(tasks.echo, range(n), chunksize=cs, timeout=ctx.remaining()))
                if got != expected:
                    raise AssertionError(f"map(chunksize={cs!r}) returned wrong results")

            calls, elapsed = ctx.autorange(one_map, ctx.params["min_time"])
            out[f"items_per_s_{c}"] = calls * n / elapsed
        return out


# --- 3. round-trip latency ---


class Latency(Workload):
    name = "latency"
    title = "submit(noop).result() in a loop"
    metrics = (
        Metric("p50_us", "round-trip latency p50", "µs", LOWER),
        Metric("p99_us", "round-trip latency p99", "µs", LOWER),
    )
    budget = 20.0

    def params(self, quick):
        return {"n": 50 if quick else 300}

    def measure(self, ex, ctx):
        samples = []
        for _ in range(ctx.params["n"]):
            t0 = time.perf_counter()
            ctx.result(ex.submit(tasks.noop))
            samples.append(time.perf_counter() - t0)
        samples.sort()
        return {
            "p50_us": _pctl(samples, 0.50) * 1e6,
            "p99_us": _pctl(samples, 0.99) * 1e6,
        }


# --- 4. short sleeping tasks ----------------------------------------------------------


class SleepEfficiency(Workload):
    name = "sleep"
    title = "N x time.sleep(10 ms) tasks; efficiency = (N*0.01/workers) / elapsed"
    metrics = (
        Metric(
            "efficiency",
            "sleep 10 ms tasks: efficiency",
            "ideal/elapsed",
            HIGHER,
            fmt="{:.1%}",
        ),
        Metric("elapsed_s", "sleep 10 ms tasks: elapsed", "s", LOWER, show=False),
    )
    budget = 20.0

    def params(self, quick):
        return {"n": 100 if quick else 400, "seconds": 0.01}

    def measure(self, ex, ctx):
        n, s = ctx.params["n"], ctx.params["seconds"]
        t0 = time.perf_counter()
        ctx.wait_all([ex.submit(tasks.sleep, s) for _ in range(n)])
        elapsed = time.perf_counter() - t0
        return {"efficiency": n * s / ctx.workers / elapsed, "elapsed_s": elapsed}


# --- 5. large array round trip -------------------------------------------------------


class ArrayEcho(Workload):
    name = "echo"
    title = "submit(identity, 100 MB float64 array).result()"
    metrics = (
        Metric("mb_per_s", "100 MB array echo", "MB/s", HIGHER),
        Metric("seconds", "100 MB array echo: round trip", "s", LOWER, show=False),
    )
    budget = 30.0

    def params(self, quick):
        return {"mb": 100}

    def _array(self, ctx):
        import numpy as np

        arr = getattr(self, "_arr", None)
        n = ctx.params["mb"] * 10**6 // 8
        if arr is None or arr.size != n:
            arr = self._arr = np.arange(n, dtype=np.float64)
        return arr

    def warmup(self, ex, ctx):
        super().warmup(ex, ctx)
        if ctx.quick:  # a small array exercises the same path, faster
            import numpy as np

            ctx.result(ex.submit(tasks.identity, np.arange(125_000, dtype=np.float64)))
        else:
            self.measure(ex, ctx)

    def measure(self, ex, ctx):
        arr = self._array(ctx)
        t0 = time.perf_counter()
        out = ctx.result(ex.submit(tasks.identity, arr))
        elapsed = time.perf_counter() - t0
        # cheap check: type, shape, dtype and a few sampled elements
        if out is arr:
            ctx.note("the result is the very argument object (no copy was made)")
        idx = [0, 1, arr.size // 3, arr.size // 2, arr.size - 1]
        if (
            getattr(out, "shape", None) != arr.shape
            or out.dtype != arr.dtype
            or any(out[i] != i for i in idx)
        ):
            raise AssertionError("echoed array differs from the original")
        return {"mb_per_s": ctx.params["mb"] / elapsed, "seconds": elapsed}


# --- 6. start-up to first result -------------------------------------------------


class Startup(Workload):
    name = "startup"
    title = "construct a fresh executor, time to the first no-op result"
    metrics = (
        Metric("startup_ms", "start-up to first result", "ms", LOWER),
        Metric("shutdown_ms", "shutdown right after the first result", "ms", LOWER),
    )
    fresh_executor = True
    budget = 30.0

    def warmup(self, ex, ctx):
        if not ctx.quick:  # one unmeasured start: lazy imports, disk caches
            self.measure(None, ctx)

    def measure(self, ex, ctx):
        t0 = time.perf_counter()
        with ctx.open() as ex:
            ctx.result(ex.submit(tasks.noop))
            t1 = time.perf_counter()
        t2 = time.perf_counter()
        return {"startup_ms": (t1 - t0) * 1e3, "shutdown_ms": (t2 - t1) * 1e3}


# --- roadmap workloads (not in the default run; select with --workloads) -------------


class ContextSetup(Workload):
    """N tasks needing a 0.5 s setup: ex.context(setup) where available, else the
    setup inside every task (what one writes without contexts)."""

    name = "context"
    title = "N tasks with a 0.5 s setup: ex.context(setup) vs setup in every task"
    metrics = (Metric("elapsed_s", "N tasks w/ 0.5 s setup", "s", LOWER, fmt="{:.2f}"),)
    default = False
    budget = 60.0

    def params(self, quick):
        return {"n": 8 if quick else 20, "setup_s": 0.5}

    def measure(self, ex, ctx):
        n, s = ctx.params["n"], ctx.params["setup_s"]
        t0 = time.perf_counter()
        if ctx.spec.has(CONTEXT):
            with ex.context(tasks.slow_setup, s, 1) as cx:
                got = ctx.wait_all([cx.submit(tasks.use_setup, i) for i in range(n)])
        else:
            ctx.note("no ex.context(): the setup runs in every task")
            got = ctx.wait_all([ex.submit(tasks.setup_in_task, i, s, 1) for i in range(n)])
        elapsed = time.perf_counter() - t0
        if got != [1 + i for i in range(n)]:
            raise AssertionError("wrong results")
        return {"elapsed_s": elapsed}


class WorkerKill(Workload):
    """N x 50 ms tasks; one worker is SIGKILLed after 1 s.  Counts the futures that
    still succeed and the time until all are done (failed ones count as done)."""

    name = "worker_kill"
    title = "N x 50 ms tasks on the workers, one worker SIGKILLed at 1 s"
    metrics = (
        Metric("ok", "worker killed: tasks that succeeded", "tasks", HIGHER),
        Metric(
            "elapsed_s",
            "worker killed: time until all succeeded",
            "s",
            LOWER,
            fmt="{:.2f}",
        ),
    )
    requires = frozenset({LOCAL_PROCESSES})
    default = False
    budget = 60.0

    def params(self, quick):
        return {"n": 200, "seconds": 0.05, "kill_at": 1.0}

    fresh_executor = True  # a killed worker may break the executor: one per repetition

    def warmup(self, ex, ctx):
        pass  # measure() warms up its own executor

    def measure(self, ex, ctx):
        with ctx.open() as ex:
            ctx.worker_pids.clear()
            Workload.warmup(self, ex, ctx)  # learn the worker pids
            return self._run(ex, ctx)

    def _run(self, ex, ctx):
        n, s = ctx.params["n"], ctx.params["seconds"]
        seen: set[int] = set()
        killed: list[int] = []

        def kill():
            for pid in sorted(seen) or sorted(ctx.worker_pids):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append(pid)
                return

        def on_done(f):
            if not f.cancelled() and f.exception() is None:
                seen.add(f.result())

        t0 = time.perf_counter()
        futs = [ex.submit(tasks.sleep_then_pid, s) for _ in range(n)]
        timer = threading.Timer(ctx.params["kill_at"] - (time.perf_counter() - t0), kill)
        timer.start()
        for f in futs:
            f.add_done_callback(on_done)
        try:
            res = ctx.wait_all(futs, raise_errors=False)
        finally:
            timer.cancel()
        elapsed = time.perf_counter() - t0
        errors = [r for r in res if isinstance(r, BaseException)]
        if errors:
            ctx.note(f"failed tasks raised {type(errors[0]).__name__}")
        if not killed:
            ctx.note("no worker was killed (none found)")
        out = {"ok": n - len(errors)}
        if not errors:  # a time to "done" where most tasks failed fast would mislead
            out["elapsed_s"] = elapsed
        else:
            ctx.note("time until all done: not shown, tasks failed")
        return out


# --- long tasks right after tiny ones -------------------------------------------------


class LongAfterMap(Workload):
    """A large map of no-ops (adaptive prefetch learns that tasks are tiny), then one
    1 s sleep per worker. Ideal: 1 s. An executor that queues both long tasks on one
    worker, or leaves them behind prefetched work, takes 2 s or more."""

    name = "long_after_map"
    title = "3,000-item map, then one 1 s sleep per worker; elapsed of the sleeps (ideal 1 s)"
    metrics = (
        Metric("elapsed_s", "1 s tasks after a large map: elapsed (ideal 1 s)", "s", LOWER, fmt="{:.2f}"),
    )
    budget = 30.0

    def params(self, quick):
        return {"items": 3000, "seconds": 1.0}

    def measure(self, ex, ctx):
        items, s = ctx.params["items"], ctx.params["seconds"]
        list(ex.map(tasks.noop, range(items), timeout=ctx.remaining()))
        t0 = time.perf_counter()
        ctx.wait_all([ex.submit(tasks.sleep, s) for _ in range(ctx.workers)])
        return {"elapsed_s": time.perf_counter() - t0}


WORKLOADS: tuple[Workload, ...] = (
    SubmitThroughput(),
    MapThroughput(),
    Latency(),
    SleepEfficiency(),
    LongAfterMap(),
    ArrayEcho(),
    Startup(),
    ContextSetup(),
    WorkerKill(),
)
BY_NAME = {w.name: w for w in WORKLOADS}
