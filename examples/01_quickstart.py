"""Quickstart: submit, map and as_completed on two local worker processes.

    pip install -e . && python examples/01_quickstart.py

``ClusterExecutor(workers=2)`` starts two worker processes on this machine and is used
like any ``concurrent.futures`` executor. Swap ``2`` for a launcher (``SSHWorkers``,
``SlurmWorkers``, ``SGEWorkers``) and the same code runs on other machines.
"""

import math
import time
from concurrent.futures import as_completed

from impexec import ClusterExecutor


def is_prime(n):
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def slow_square(x):
    time.sleep(0.1 * (3 - x % 3))  # uneven durations: completion order differs
    return x * x


def main():
    with ClusterExecutor(workers=2) as ex:
        # one call, one future
        fut = ex.submit(pow, 2, 100)
        print("2**100 =", fut.result(timeout=60))

        # map: results in input order; chunksize batches calls per dispatch
        numbers = range(10**6, 10**6 + 2000)
        primes = [n for n, p in zip(numbers, ex.map(is_prime, numbers, chunksize="auto"), strict=True) if p]
        print(f"{len(primes)} primes in [{numbers[0]}, {numbers[-1]}], first {primes[:3]}")

        # as_completed: handle results as they arrive
        futures = {ex.submit(slow_square, x): x for x in range(6)}
        for f in as_completed(futures, timeout=60):
            print(f"  {futures[f]}^2 = {f.result()}")

        # an exception in a task comes back with its type and the worker's traceback
        try:
            ex.submit(math.sqrt, -1).result(timeout=60)
        except ValueError as exc:
            print("remote error:", repr(exc))

        # statistics() counts calls (the map's 2,000 went in a few chunks: tasks_done)
        st = ex.statistics()
        print(
            f"statistics: {st.done} calls done, {st.failed} failed; "
            f"{st.tasks_done + st.tasks_failed} tasks on {st.workers} workers"
        )


if __name__ == "__main__":
    main()
