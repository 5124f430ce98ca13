"""Contexts: pay for an expensive setup once per worker, not once per task.

    python examples/03_context_setup_cache.py

``load_table`` stands for loading a model (0.5 s). Without a context every task loads
it again; with ``ex.context(load_table, ...)`` each worker loads it once, on its first
task of that context, and passes the cached value first to every later task.
"""

import os
import time

from impexec import ClusterExecutor

TASKS = 20


def load_table(size: int) -> list[int]:
    time.sleep(0.5)  # an expensive setup: reading a model, building a lookup table ...
    return [i * i for i in range(size)]


def lookup(table: list[int], i: int) -> tuple[int, int]:
    return table[i], os.getpid()


def load_and_lookup(size: int, i: int) -> tuple[int, int]:
    return lookup(load_table(size), i)


def main() -> None:
    with ClusterExecutor(workers=2) as ex:
        while ex.statistics().workers < 2:  # let both workers start before timing
            time.sleep(0.05)
        t0 = time.perf_counter()
        plain = list(ex.map(load_and_lookup, [1000] * TASKS, range(TASKS)))
        t1 = time.perf_counter()
        with ex.context(load_table, 1000) as ctx:  # an Executor: submit, map, ...
            cached = list(ctx.map(lookup, range(TASKS)))
        t2 = time.perf_counter()
    if [v for v, _ in plain] != [v for v, _ in cached]:
        raise SystemExit("the two ways disagree")
    workers = len({pid for _, pid in cached})
    print(f"setup in every task: {t1 - t0:5.2f} s  ({TASKS} setups)")
    print(f"setup in a context:  {t2 - t1:5.2f} s  ({workers} setups, one per worker)")
    print(f"speed-up: {(t1 - t0) / (t2 - t1):.1f}x")


if __name__ == "__main__":
    main()
