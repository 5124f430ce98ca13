"""The pyABC pattern: the same multi-MB pickled model passed with every submit.

pyABC's ConcurrentFutureSampler cloudpickles its simulation function once per generation
and passes the bytes with every ``submit``; a map over a function that closes over big
data sends that function's pickle with every chunk. impexec sends such payloads once per
worker (a content-addressed cache on the workers). This script measures both patterns
with the cache on and off (``BLOB_MIN`` raised out of reach), in fresh processes:

    python benchmarks/bench_repeated_payload.py [--mb 5] [--tasks 200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import cloudpickle


def run_pickled(payload: bytes, i: int) -> int:
    return cloudpickle.loads(payload)(i)


def make_model(size: int):
    data = os.urandom(size)

    def model(i: int) -> int:
        return len(data) + i

    return model


def child(mode: str, mb: float, tasks: int) -> None:
    import impexec._submission as submission_module
    from impexec import ClusterExecutor

    if mode == "off":
        submission_module.BLOB_MIN = 1 << 62
    size = int(mb * 1024 * 1024)
    model = make_model(size)
    payload = cloudpickle.dumps(model)
    with ClusterExecutor(workers=2) as ex:
        ex.submit(run_pickled, payload, 0).result(timeout=120)  # both paths warm
        t = time.perf_counter()
        futs = [ex.submit(run_pickled, payload, i) for i in range(tasks)]
        assert [f.result(timeout=300) for f in futs] == [size + i for i in range(tasks)]
        submit_s = time.perf_counter() - t
        t = time.perf_counter()
        assert list(ex.map(model, range(2 * tasks), chunksize=4, timeout=300)) == [
            size + i for i in range(2 * tasks)
        ]
        map_s = time.perf_counter() - t
    print(f"{submit_s:.3f} {map_s:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=5.0)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.mb, args.tasks)
        return
    rows = {}
    for mode in ("off", "on"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--mb", str(args.mb), "--tasks", str(args.tasks)],
            capture_output=True,
            text=True,
            timeout=900,
            check=True,
        ).stdout.split()
        rows[mode] = (float(out[0]), float(out[1]))
    n = args.tasks
    print(f"{args.mb:g} MB payload, 2 local workers, {n} submits / map of {2 * n} items in chunks of 4\n")
    print("| pattern | cache off | cache on | speed-up |")
    print("|:--|--:|--:|--:|")
    for k, label in enumerate(
        (
            f"{n} submits with the pickled model as argument (pyABC)",
            f"map of a closure over {args.mb:g} MB ({n // 2} chunks)",
        )
    ):
        off, on = rows["off"][k], rows["on"][k]
        print(f"| {label} | {off:.2f} s | {on:.2f} s | {off / on:.0f}x |")


if __name__ == "__main__":
    main()
