#!/usr/bin/env python
"""What a context saves: N short tasks that each need a model with an expensive setup.

    python benchmarks/bench_context.py                    # 40 tasks, 0.5 s setup, 2 workers
    python benchmarks/bench_context.py --tasks 100 --setup 1.0 --work 0.05

Variants, each on one warmed-up ClusterExecutor (workers connected before timing):

* ``setup in every task``: ``ex.map(m.setup_then_task, ...)``, what code without contexts
  does: every task builds the model again.
* ``context``: ``ex.context(setup)`` then ``ctx.map(task, ...)``: one setup per worker.
* ``initializer`` (reference): ``ClusterExecutor(initializer=...)`` storing the model in
  a global; also once per worker, but at worker start, for every task of the executor,
  and only for one model (contexts can be many, made and dropped while workers live).

The setup is ``time.sleep(setup)`` and a task ``time.sleep(work)``: sleeping workers
leave the CPU to the client, so the figures measure scheduling, not CPU contention.
Prints a Markdown table; the ideal context time is ``setup + N * work / workers``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from impexec import ClusterExecutor, LocalWorkers

HERE = os.path.dirname(os.path.abspath(__file__))
_model: Any = None  # set by init_global in each worker process


def build(setup_s: float) -> dict[str, Any]:
    time.sleep(setup_s)  # stands for loading a model
    return {"pid": os.getpid(), "built": time.time()}


def task(model: dict[str, Any], work_s: float) -> tuple[int, float]:
    time.sleep(work_s)
    return os.getpid(), model["built"]


def setup_then_task(setup_s: float, work_s: float) -> tuple[int, float]:
    return task(build(setup_s), work_s)


def init_global(setup_s: float) -> None:
    global _model
    _model = build(setup_s)


def task_on_global(work_s: float) -> tuple[int, float]:
    return task(_model, work_s)


def warm_up(ex: ClusterExecutor, workers: int) -> None:
    deadline = time.monotonic() + 60
    while ex.statistics().workers < workers:
        if time.monotonic() > deadline:
            sys.exit(f"only {ex.statistics().workers} of {workers} workers connected in 60 s")
        time.sleep(0.05)
    list(ex.map(abs, range(4 * workers)))


def timed(run: Callable[[], list[tuple[int, float]]]) -> tuple[float, int]:
    """Seconds taken, and setups run (distinct build times seen by the tasks)."""
    t0 = time.perf_counter()
    out = run()
    return time.perf_counter() - t0, len({built for _, built in out})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--setup", type=float, default=0.5, help="seconds per setup")
    parser.add_argument("--work", type=float, default=0.01, help="seconds per task")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="for the fast variants (best kept)")
    opts = parser.parse_args()
    # workers import this file by name (a function pickled by value would get a globals
    # dict of its own, and init_global's _model would be invisible to task_on_global)
    import bench_context as m

    def workers() -> LocalWorkers:
        return LocalWorkers(opts.workers, env={"PYTHONPATH": HERE})

    n, setup_s, work_s = opts.tasks, opts.setup, opts.work
    rows: list[tuple[str, float, int]] = []
    with ClusterExecutor(workers()) as ex:
        warm_up(ex, opts.workers)
        rows.append(
            (
                "setup in every task",
                *timed(lambda: list(ex.map(m.setup_then_task, [setup_s] * n, [work_s] * n))),
            )
        )

        def with_context() -> list[tuple[int, float]]:
            with ex.context(m.build, setup_s) as ctx:  # a fresh context: setups counted
                return list(ctx.map(m.task, [work_s] * n))

        best = min(timed(with_context) for _ in range(opts.repeats))
        rows.append(("context", *best))
    best = (float("inf"), 0)
    for _ in range(opts.repeats):
        with ClusterExecutor(workers(), initializer=m.init_global, initargs=(setup_s,)) as ex:
            # timed from the executor's creation: the initializer runs at worker start
            t0 = time.perf_counter()
            out = list(ex.map(m.task_on_global, [work_s] * n))
            best = min(best, (time.perf_counter() - t0, len({b for _, b in out})))
    rows.append(("initializer (incl. worker start)", *best))

    base = rows[0][1]
    ideal = setup_s + n * work_s / opts.workers
    print(
        f"{n} tasks of {work_s:g} s, setup {setup_s:g} s, {opts.workers} workers "
        f"(ideal with one setup per worker: {ideal:.2f} s)\n"
    )
    print("| variant | time (s) | setups run | speed-up vs setup in every task |")
    print("|---|---:|---:|---:|")
    for name, seconds, setups in rows:
        print(f"| {name} | {seconds:.2f} | {setups} | {base / seconds:.1f}x |")


if __name__ == "__main__":
    main()
