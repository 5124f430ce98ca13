#!/usr/bin/env python
"""Scale benchmark: task rate and broker cost as the number of workers grows (issue 8).

    python benchmarks/bench_scale.py                          # W = 2, 10, 100, 1000
    python benchmarks/bench_scale.py --workers 2,1000 --tasks 5000 --procs 4
    python benchmarks/bench_scale.py --profile /tmp/broker.prof   # cProfile the broker

For each W, a fresh ``ClusterExecutor(None, heartbeat_interval=1.0,
heartbeat_timeout=10.0)`` gets W lightweight workers (``_light_workers.py``: up to
--procs processes, each serving its share of worker identities on one poller; every
identity has its own two sockets, READY/WELCOME handshake and heartbeats, exactly like a
real worker on the wire). Then, median of --repeats after a warm-up:

- submit: ``[ex.submit(noop) for _ in range(N)]``, then wait for all → tasks/s;
- map: ``list(ex.map(echo, range(M), chunksize=C))`` → items/s (and chunks/s);
- the CPU the broker thread and the whole client process spend per task;
- idle: CPU share of the broker thread (and of the client process, which includes
  ZeroMQ's I/O thread) over --idle seconds while the W workers only heartbeat.

The figure that matters is the ratio of each rate to the rate with the smallest W (the
issue asks ≥ 0.8 at 1,000 workers vs 2). The machine's load average is printed with the
results: on a shared 2-core machine, the figures move with what else runs.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _light_workers, when run as a script or with -m

import _light_workers as light  # noqa: E402
import psutil  # noqa: E402
import zmq  # noqa: E402

import impexec  # noqa: E402
from impexec import _broker  # noqa: E402

JOIN_TIMEOUT_S = 120.0
RESULT_TIMEOUT_S = 120.0


def noop() -> None:
    return None


def echo(x: Any) -> Any:
    return x


def _loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


class ThreadClock:
    """CPU seconds of one thread (by native id) and of the whole process, via psutil."""

    def __init__(self, native_id: int):
        self.proc = psutil.Process()
        self.tid = native_id

    def read(self) -> tuple[float, float]:
        thread = 0.0
        for t in self.proc.threads():
            if t.id == self.tid:
                thread = t.user_time + t.system_time
        cpu = self.proc.cpu_times()
        return thread, cpu.user + cpu.system


def _children_cpu(procs: list[Any]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            c = psutil.Process(p.pid).cpu_times()
            total += c.user + c.system
    return total


def wait_workers(ex: impexec.ClusterExecutor, n: int, procs: list[Any]) -> float:
    started = time.perf_counter()
    while ex.statistics().workers < n:
        if time.perf_counter() - started > JOIN_TIMEOUT_S:
            raise TimeoutError(f"only {ex.statistics().workers} of {n} workers joined")
        dead = [p.returncode for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a light worker host exited early ({dead})")
        time.sleep(0.02)
    return time.perf_counter() - started


def run_submit(ex: impexec.ClusterExecutor, n: int) -> float:
    t0 = time.perf_counter()
    futures = [ex.submit(noop) for _ in range(n)]
    for f in futures:
        f.result(timeout=RESULT_TIMEOUT_S)
    return n / (time.perf_counter() - t0)


def run_map(ex: impexec.ClusterExecutor, m: int, chunksize: int) -> float:
    t0 = time.perf_counter()
    out = list(ex.map(echo, range(m), chunksize=chunksize, timeout=RESULT_TIMEOUT_S))
    elapsed = time.perf_counter() - t0
    if out != list(range(m)):
        raise AssertionError("map returned wrong results")
    return m / elapsed


def measure(w: int, args: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"workers": w, "load_before": _loadavg()}
    ex = impexec.ClusterExecutor(None, heartbeat_interval=1.0, heartbeat_timeout=10.0)
    procs: list[Any] = []
    try:
        procs = light.spawn(ex.connection_file(), w, args.procs)
        row["host_processes"] = len(procs)
        row["join_s"] = wait_workers(ex, w, procs)
        clock = ThreadClock(ex._broker.native_id or 0)
        run_submit(ex, min(args.tasks, 1000))  # warm-up: caches, adaptive prefetch
        run_map(ex, args.chunksize * 10, args.chunksize)
        submit, mapped, b_cpu, p_cpu, h_cpu = [], [], [], [], []
        for _ in range(args.repeats):
            b0, p0 = clock.read()
            h0 = _children_cpu(procs)
            submit.append(run_submit(ex, args.tasks))
            b1, p1 = clock.read()
            b_cpu.append((b1 - b0) / args.tasks * 1e6)
            p_cpu.append((p1 - p0) / args.tasks * 1e6)
            h_cpu.append((_children_cpu(procs) - h0) / args.tasks * 1e6)
            mapped.append(run_map(ex, args.items, args.chunksize))
        row["submit_per_s"] = statistics.median(submit)
        row["submit_all"] = submit
        row["map_items_per_s"] = statistics.median(mapped)
        row["map_all"] = mapped
        row["broker_us_per_task"] = statistics.median(b_cpu)
        row["process_us_per_task"] = statistics.median(p_cpu)
        row["hosts_us_per_task"] = statistics.median(h_cpu)
        stats = ex.statistics()
        row["workers_seen"] = stats.workers
        row["workers_lost"] = stats.workers_lost
        if args.idle > 0:
            b0, p0 = clock.read()
            c0 = _children_cpu(procs)
            t0 = time.perf_counter()
            time.sleep(args.idle)
            elapsed = time.perf_counter() - t0
            b1, p1 = clock.read()
            row["idle_broker_pct"] = (b1 - b0) / elapsed * 100
            row["idle_process_pct"] = (p1 - p0) / elapsed * 100
            row["idle_hosts_pct"] = (_children_cpu(procs) - c0) / elapsed * 100
            row["idle_lost"] = ex.statistics().workers_lost
        row["load_after"] = _loadavg()
    finally:
        t0 = time.perf_counter()
        ex.shutdown(wait=True, cancel_futures=True)
        codes = light.reap(procs, timeout=30.0)
        row["shutdown_s"] = time.perf_counter() - t0
        row["host_exit_codes"] = codes
    return row


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def _pct(r: dict[str, Any], key: str) -> str:
    return f"{r[key]:.1f}%" if key in r else "-"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    base = rows[0]
    vs = f"vs W={base['workers']}"
    columns: list[tuple[str, Any]] = [
        ("workers", lambda r: f"{r['workers']:,}"),
        ("host procs", lambda r: str(r["host_processes"])),
        ("join s", lambda r: f"{r['join_s']:.2f}"),
        ("submit tasks/s", lambda r: _fmt(r["submit_per_s"])),
        (vs, lambda r: f"{r['submit_per_s'] / base['submit_per_s']:.2f}x"),
        ("map items/s", lambda r: _fmt(r["map_items_per_s"])),
        (vs, lambda r: f"{r['map_items_per_s'] / base['map_items_per_s']:.2f}x"),
        ("broker µs/task", lambda r: f"{r['broker_us_per_task']:.1f}"),
        ("client µs/task", lambda r: f"{r['process_us_per_task']:.1f}"),
        ("hosts µs/task", lambda r: f"{r['hosts_us_per_task']:.1f}"),
        ("idle: broker", lambda r: _pct(r, "idle_broker_pct")),
        ("idle: client", lambda r: _pct(r, "idle_process_pct")),
        ("idle: hosts", lambda r: _pct(r, "idle_hosts_pct")),
        ("load 1 min", lambda r: r["load_after"].split(" /")[0]),
    ]
    lines = [
        "| " + " | ".join(name for name, _ in columns) + " |",
        "|" + "--:|" * len(columns),
    ]
    lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]
    return lines


def report(rows: list[dict[str, Any]], args: argparse.Namespace, load0: str) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        f"# impexec scale benchmark ({time.strftime('%Y-%m-%d %H:%M:%S %Z')})",
        "",
        f"- Machine: {cpu}, {os.cpu_count()} logical CPUs; {platform.platform()}",
        f"- Python {platform.python_version()}, impexec {impexec.__version__}, "
        f"pyzmq {zmq.pyzmq_version()}, libzmq {zmq.zmq_version()}",
        f"- Settings: submit {args.tasks:,} no-op tasks; map {args.items:,} items, "
        f"chunksize {args.chunksize}; median of {args.repeats} after a warm-up; up to "
        f"{args.procs} light worker processes; heartbeat 1 s, timeout 10 s; idle "
        f"window {args.idle:g} s",
        f"- Load average at start: {load0} (1/5/15 min); at end: {_loadavg()}",
        "",
        *_table(rows),
        "",
        "µs/task: CPU time during the submit runs / tasks (broker: the broker thread; "
        "client: the whole client process, i.e. caller thread + broker + ZeroMQ's I/O "
        "thread; hosts: the light worker processes). idle: CPU share of one core while "
        "the workers only heartbeat (100% = one core busy).",
    ]
    lost = [r for r in rows if r.get("workers_lost") or r.get("idle_lost")]
    if lost:
        lines.append(
            "WARNING: workers were declared lost with W = "
            + ", ".join(str(r["workers"]) for r in lost)
        )
    return "\n".join(lines)


def _profiled_loop(path: str) -> Any:
    """Wrap Broker._loop in cProfile; the stats of each broker go to *path*.W."""
    original = _broker.Broker._loop

    def loop(self: Any) -> None:
        prof = cProfile.Profile()
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()
            prof.dump_stats(f"{path}.{len(self.scheduler.workers) or 'x'}")

    _broker.Broker._loop = loop  # type: ignore[method-assign]
    return original


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--workers", default="2,10,100,1000", help="comma-separated W values"
    )
    p.add_argument(
        "--tasks", type=int, default=10_000, help="no-op submits per repetition"
    )
    p.add_argument(
        "--items", type=int, default=200_000, help="map items per repetition"
    )
    p.add_argument("--chunksize", type=int, default=200, help="map chunk size")
    p.add_argument(
        "--procs", type=int, default=4, help="light worker processes (at most)"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--idle",
        type=float,
        default=10.0,
        help="seconds of idle heartbeat traffic to measure per W (0: skip)",
    )
    p.add_argument("--json", help="also write the rows here")
    p.add_argument(
        "--profile", help="cProfile the broker thread; stats to PATH.<workers>"
    )
    args = p.parse_args(argv)
    light.raise_fd_limit()
    if args.profile:
        _profiled_loop(args.profile)
    load0 = _loadavg()
    rows = []
    for w in (int(x) for x in args.workers.split(",")):
        print(f"W={w} ...", file=sys.stderr, flush=True)
        rows.append(measure(w, args))
        r = rows[-1]
        print(
            f"  submit {r['submit_per_s']:,.0f}/s, map {r['map_items_per_s']:,.0f} "
            f"items/s, load {r['load_after']}",
            file=sys.stderr,
            flush=True,
        )
    print(report(rows, args, load0))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    leftover = [t.name for t in threading.enumerate() if t.name.startswith("impexec")]
    if leftover:
        print(f"WARNING: threads left behind: {leftover}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
