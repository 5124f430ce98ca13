"""Chunked map over a large input: per-item throughput, not per-map latency.

`benchmarks/run.py`'s map rows repeat maps of 2,000 items, where a few round trips of
fixed cost dominate the large-chunk rows. This script maps 400,000 items once per
chunk size on ProcessPoolExecutor and impexec (2 workers each):

    python benchmarks/bench_map_large.py [--items 400000]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

from impexec import ClusterExecutor


def echo(x: int) -> int:
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=400_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.items
    sizes: list[int | str] = [256, 4096, "static"]
    rows: dict[str, dict[str, float]] = {}
    for name, make in (
        ("ProcessPool", lambda: ProcessPoolExecutor(2)),
        ("impexec", lambda: ClusterExecutor(workers=2)),
    ):
        with make() as ex:
            list(ex.map(echo, range(1000), chunksize=100))  # warm-up
            for cs in sizes:
                chunk = cs if cs != "static" or name == "impexec" else -(-n // 2)
                best = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    out = list(ex.map(echo, range(n), chunksize=chunk))
                    best.append(time.perf_counter() - t)
                    assert out[-1] == n - 1 and len(out) == n
                rows.setdefault(str(cs), {})[name] = n / sorted(best)[len(best) // 2]
    print(f"map of {n:,} no-op items, 2 workers, median of {args.repeats}\n")
    print("| chunksize | ProcessPool items/s | impexec items/s | ratio |")
    print("|:--|--:|--:|--:|")
    for cs, r in rows.items():
        print(
            f"| {cs} | {r['ProcessPool']:,.0f} | {r['impexec']:,.0f} | "
            f"{r['impexec'] / r['ProcessPool']:.2f}x |"
        )


if __name__ == "__main__":
    main()
