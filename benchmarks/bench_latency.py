"""Round-trip latency, measured as a paired comparison.

`benchmarks/run.py` measures each executor's latency in its own cell, one after the
other. On a small VM the median of one cell moves by ±30 % from run to run, so the
ratio of two cells near parity says little. This script keeps every executor open at
once and measures them in alternating rounds (the order rotates each round), so each
round's ratio compares figures taken seconds apart; it reports the median ratio over the
rounds and their spread:

    python benchmarks/bench_latency.py [--rounds 15] [--n 1000] [--with loky] [--with zeromq]

``--with zeromq`` adds impexec with its local workers' main link on ZeroMQ, as it was
before they got a pipe from the client (``IMPEXEC_LOCAL_PIPE=0``).

A round is ``n`` sequential ``submit(noop).result()`` calls per executor. The task is
``benchmarks.tasks.noop``, pickled by reference (the workers import it).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# (importing the package also puts the root on PYTHONPATH, for the workers)
from benchmarks.tasks import noop
from impexec import ClusterExecutor, LocalWorkers

REFERENCE = "ProcessPool"


def _makers(extra: list[str], workers: int) -> dict[str, object]:
    makers: dict[str, object] = {
        REFERENCE: lambda: ProcessPoolExecutor(workers),
        "impexec": lambda: ClusterExecutor(workers=workers),
    }
    if "zeromq" in extra:  # local workers on ZeroMQ, as before their pipes (IMPEXEC_LOCAL_PIPE=0)

        def on_zeromq() -> ClusterExecutor:
            launcher = LocalWorkers(workers)
            launcher.main_pipe = False
            return ClusterExecutor(launcher)

        makers["impexec (ZeroMQ)"] = on_zeromq
    if "loky" in extra:
        from loky import get_reusable_executor

        makers["loky"] = lambda: get_reusable_executor(max_workers=workers, reuse=False)
    return makers


def _pctl(sorted_samples: list[float], q: float) -> float:
    return sorted_samples[min(len(sorted_samples) - 1, int(q * len(sorted_samples)))]


def one_round(ex: Executor, n: int) -> tuple[float, float]:
    """p50 and p99 of n sequential round trips, in microseconds."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        ex.submit(noop).result(timeout=60)
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return _pctl(samples, 0.5) * 1e6, _pctl(samples, 0.99) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--n", type=int, default=1000, help="round trips per round")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--with",
        dest="extra",
        action="append",
        default=[],
        choices=["loky", "zeromq"],
        help="also measure this executor",
    )
    args = parser.parse_args()
    makers = _makers(args.extra, args.workers)
    names = list(makers)
    p50: dict[str, list[float]] = {k: [] for k in names}
    p99: dict[str, list[float]] = {k: [] for k in names}
    with contextlib.ExitStack() as stack:
        exs = {k: stack.enter_context(makers[k]()) for k in names}
        for ex in exs.values():  # warm-up: workers started, functions imported
            for _ in range(200):
                ex.submit(noop).result(timeout=60)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for k in order:
                a, b = one_round(exs[k], args.n)
                p50[k].append(a)
                p99[k].append(b)
            print(
                f"round {r + 1:>2}: " + ", ".join(f"{k} {p50[k][-1]:.0f} µs" for k in names),
                file=sys.stderr,
                flush=True,
            )
    ref = p50[REFERENCE]
    print(
        f"\nround-trip latency, {args.workers} workers, {args.rounds} alternating rounds "
        f"of {args.n:,} sequential submit(noop).result()\n"
    )
    print(
        "| executor | p50 µs (median of rounds) | p99 µs | p50 / ProcessPool, median of "
        "rounds | min-max | rounds faster |"
    )
    print("|:--|--:|--:|--:|--:|--:|")
    for k in names:
        ratios = [a / b for a, b in zip(p50[k], ref, strict=True)]
        faster = sum(x < 1 for x in ratios)
        print(
            f"| {k} | {statistics.median(p50[k]):.0f} | {statistics.median(p99[k]):.0f} | "
            f"{statistics.median(ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f}x | "
            + ("-" if k == REFERENCE else f"{faster} of {len(ratios)}")
            + " |"
        )


if __name__ == "__main__":
    main()
