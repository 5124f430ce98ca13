"""Batching: how chunksize moves a map between dynamic and static scheduling.

    python examples/02_batching.py

Many tiny calls (a few microseconds each) are dominated by per-task overhead:
``chunksize=1`` sends each call on its own (best balance, most messages),
``chunksize="static"`` sends one chunk per worker (fewest messages, no balancing), and
``chunksize="auto"`` picks a few chunks per worker.

For uneven, longer calls the balance matters more than the messages. In the second part
the cost grows with the parameter, as in many sweeps: the first 8 of 40 calls take
200 ms, the others 10 ms. ``"static"`` cuts the input into one half per worker, so one
worker gets every slow call (about 1.7 s) while the other idles after 0.2 s;
``chunksize=1`` lets whichever worker is free take the next call (about 1.0 s, the total
work split in two). ``map_unordered`` hands back each result as soon as it is done.
Timings depend on the machine; compare the rows, not the numbers.
"""

import time

from impexec import ClusterExecutor

TINY_CALLS = 5_000
#: The uneven part: SLOW_CALLS calls of SLOW_S seconds first, then FAST_S-second ones.
UNEVEN_CALLS = 40
SLOW_CALLS, SLOW_S, FAST_S = 8, 0.2, 0.01


def tiny(x):
    return x * x


def uneven(seconds):
    time.sleep(seconds)
    return seconds


def timed(label, run):
    start = time.perf_counter()
    result = run()
    print(f"  {label:<28} {time.perf_counter() - start:7.3f} s")
    return result


def main():
    delays = [SLOW_S] * SLOW_CALLS + [FAST_S] * (UNEVEN_CALLS - SLOW_CALLS)
    with ClusterExecutor(workers=2) as ex:
        ex.submit(tiny, 0).result(timeout=60)  # wait for a worker before timing
        print(f"{TINY_CALLS} tiny calls:")
        expected = [x * x for x in range(TINY_CALLS)]
        for chunksize in (1, 64, "auto", "static"):
            out = timed(
                f"map chunksize={chunksize!r}",
                lambda c=chunksize: list(ex.map(tiny, range(TINY_CALLS), chunksize=c)),
            )
            if out != expected:
                raise SystemExit(f"wrong results with chunksize={chunksize!r}")

        print(
            f"{UNEVEN_CALLS} uneven calls ({SLOW_CALLS} x {SLOW_S * 1000:.0f} ms first, "
            f"then {FAST_S * 1000:.0f} ms):"
        )
        for chunksize in (1, "auto", "static"):
            timed(
                f"map chunksize={chunksize!r}",
                lambda c=chunksize: list(ex.map(uneven, delays, chunksize=c)),
            )
        first = []

        def unordered():
            out = []
            for value in ex.map_unordered(uneven, delays, chunksize=1):
                if not first:
                    first.append(time.perf_counter())
                out.append(value)
            return out

        start = time.perf_counter()
        out = timed("map_unordered chunksize=1", unordered)
        if sorted(out) != sorted(delays):
            raise SystemExit("map_unordered lost or changed results")
        print(f"  (map_unordered yielded its first result after {first[0] - start:.3f} s)")


if __name__ == "__main__":
    main()
