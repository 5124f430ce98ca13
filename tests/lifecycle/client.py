"""A user's program, run by tests/lifecycle in a subprocess and ended from outside.

    python client.py --workers local|cli|ssh|slurm|sge --moment idle|map|context|shutdown
                     --markers DIR [--job-name NAME] [--n N]

It starts an executor with short heartbeats, waits until its workers have connected,
prints one JSON line (its pid, the executor's private directory and connection file,
the worker pids the broker knows, the launchers' job ids), then gets into the moment
asked for and prints ``READY`` once it is there:

* ``idle``: nothing to do, it sleeps;
* ``map``: in the middle of a ``map`` over tasks that take a while;
* ``context``: a context's setup is running on a worker (it takes minutes);
* ``shutdown``: inside ``shutdown(wait=True)`` while workers run long tasks (``READY`` is
  printed by a thread once the call has begun).

Tasks and setups write a file into ``--markers`` when they start, which is how the
client knows a worker is busy. Functions defined here travel by value (cloudpickle).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from impexec import ClusterExecutor, LocalWorkers, SGEWorkers, SlurmWorkers, SSHWorkers

#: Heartbeats of the executor: short, so the suite is fast; the test's deadline is
#: HEARTBEAT_TIMEOUT plus a margin.
HEARTBEAT_INTERVAL = 0.1
HEARTBEAT_TIMEOUT = 1.5
#: Seconds a task or setup of the busy moments runs: far longer than any deadline of the
#: test, so a worker that waits for it to end is seen as left behind.
LONG = 120.0


def mark(markers: str, what: str) -> None:
    Path(markers, f"{what}-{os.getpid()}-{time.monotonic_ns()}").touch()


def long_task(markers: str, i: int) -> int:
    mark(markers, "task")
    time.sleep(LONG)
    return i


def short_task(markers: str, i: int) -> int:
    mark(markers, "task")
    time.sleep(0.3)
    return i


def slow_setup(markers: str) -> str:
    mark(markers, "setup")
    time.sleep(LONG)
    return "set up"


def wait_for_marker(markers: str, prefix: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(p.name.startswith(prefix) for p in Path(markers).iterdir()):
        if time.monotonic() > deadline:
            sys.exit(f"client: no {prefix} marker within {timeout:g} s")
        time.sleep(0.02)


def ready_once_shutting_down(ex: ClusterExecutor, timeout: float = 60.0) -> None:
    """Print READY once the main thread is inside ``shutdown()`` (the executor says so)."""
    deadline = time.monotonic() + timeout
    while not ex._shutdown:
        if time.monotonic() > deadline:
            print(f"client: shutdown() not called within {timeout:g} s", file=sys.stderr, flush=True)
            return
        time.sleep(0.005)
    print("READY", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", required=True, choices=["local", "cli", "ssh", "slurm", "sge"])
    p.add_argument("--moment", required=True, choices=["idle", "map", "context", "shutdown"])
    p.add_argument("--markers", required=True)
    p.add_argument("--job-name", default="impexec")
    p.add_argument("--n", type=int, default=2)
    args = p.parse_args()

    if args.workers == "local":
        workers = LocalWorkers(args.n, echo_stderr=False)
    elif args.workers == "slurm":
        workers = SlurmWorkers(args.n, job_name=args.job_name, time="10:00", start_timeout=120)
    elif args.workers == "sge":
        workers = SGEWorkers(args.n, job_name=args.job_name, start_timeout=120)
    elif args.workers == "ssh":  # the test's sshd, described in $LIFECYCLE_SSH (JSON)
        ssh = json.loads(os.environ["LIFECYCLE_SSH"])
        workers = SSHWorkers(
            [ssh["destination"]],
            processes=args.n,
            port=ssh["port"],
            identity=ssh["identity"],
            ssh_options=ssh["options"],
            env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")},
            echo_stderr=False,
        )
    else:
        workers = None  # the test starts impexec-worker processes with our connection file
    ex = ClusterExecutor(workers, heartbeat_interval=HEARTBEAT_INTERVAL, heartbeat_timeout=HEARTBEAT_TIMEOUT)
    # the connection file only when workers need it: asking for it makes the private
    # directory, which an executor with remote workers only does not have
    conn = ex.connection_file() if args.workers == "cli" else None
    print(
        json.dumps(
            {"pid": os.getpid(), "connection_file": conn, "tmpdir": str(ex._tmpdir) if ex._tmpdir else None}
        ),
        flush=True,
    )
    deadline = time.monotonic() + 180
    while ex.statistics().workers < args.n:
        if time.monotonic() > deadline:
            sys.exit(f"client: {args.n} workers did not connect")
        time.sleep(0.02)
    broker = ex._broker
    pids = broker.call(lambda: [w.info.get("pid") for w in ex._scheduler.workers.values()], 10)
    jobs = [job for launcher in ex.launchers for job in getattr(launcher, "jobs", [])]
    print(json.dumps({"worker_pids": pids, "jobs": jobs}), flush=True)

    if args.moment == "idle":
        print("READY", flush=True)
        time.sleep(600)
    elif args.moment == "map":
        results = ex.map(short_task, [args.markers] * 10_000, range(10_000))
        next(results)
        print("READY", flush=True)
        for _ in results:
            pass
    elif args.moment == "context":
        ctx = ex.context(slow_setup, args.markers)
        fut = ctx.submit(lambda value: value)
        wait_for_marker(args.markers, "setup")
        print("READY", flush=True)
        fut.result(timeout=600)
    else:
        futs = [ex.submit(long_task, args.markers, i) for i in range(args.n)]
        wait_for_marker(args.markers, "task")
        threading.Thread(target=ready_once_shutting_down, args=(ex,), daemon=True).start()
        ex.shutdown(wait=True)
        del futs
    print("client: the moment ended before a signal came", file=sys.stderr, flush=True)
    sys.exit(3)


if __name__ == "__main__":
    main()
