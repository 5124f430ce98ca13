#!/usr/bin/env python
"""Scale benchmark: task rate and broker cost as the number of workers grows.

    python benchmarks/bench_scale.py                          # W = 2, 10, 100, 1000
    python benchmarks/bench_scale.py --workers 2,1000 --tasks 20000 --procs 4
    python benchmarks/bench_scale.py --profile /tmp/broker.prof   # cProfile the broker

Each repetition of each W runs on a fresh ``ClusterExecutor(None,
heartbeat_interval=1.0, heartbeat_timeout=10.0)`` with W lightweight workers
(``impexec._light_workers``: up to --procs processes, 2 by default so that every W loads the
machine with the same processes; every identity has its own two sockets, keys,
READY/WELCOME handshake, numbered and acknowledged main link and heartbeats, exactly like
a real worker on the wire: the wire code is the real worker's). Repetitions go round
the Ws (so a drifting load hits them all alike); medians of --repeats, each after a
warm-up:

- submit: ``[ex.submit(noop) for _ in range(N)]``, then wait for all → tasks/s;
- map: ``list(ex.map(echo, range(M), chunksize=C))``, checked → items/s;
- CPU per task during the submit run: the broker thread, the whole client process,
  the light worker processes;
- idle (last repetition): CPU share of the broker thread (and of the client process,
  which includes ZeroMQ's I/O thread) over --idle seconds of heartbeats only.

The figure that matters is the ratio of each rate to the rate with the smallest W (the
target: ≥ 0.8 at 1,000 workers vs 2). The machine's load average is printed with the
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

import psutil
import zmq

import impexec
from impexec import _broker
from impexec import _light_workers as light

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


def measure_round(w: int, args: argparse.Namespace, *, idle: bool) -> dict[str, Any]:
    """One repetition for W workers, on a fresh executor and fresh light workers."""
    r: dict[str, Any] = {"workers": w}
    ex = impexec.ClusterExecutor(None, heartbeat_interval=1.0, heartbeat_timeout=10.0)
    procs: list[Any] = []
    try:
        procs = light.spawn(ex.connection_file(), w, args.procs)
        r["host_processes"] = len(procs)
        r["join_s"] = wait_workers(ex, w, procs)
        clock = ThreadClock(ex._broker.native_id or 0)
        run_submit(ex, min(args.tasks, 1000))  # warm-up: caches, adaptive prefetch
        run_map(ex, args.chunksize * 10, args.chunksize)
        b0, p0 = clock.read()
        h0 = _children_cpu(procs)
        r["submit_per_s"] = run_submit(ex, args.tasks)
        b1, p1 = clock.read()
        r["broker_us_per_task"] = (b1 - b0) / args.tasks * 1e6
        r["process_us_per_task"] = (p1 - p0) / args.tasks * 1e6
        r["hosts_us_per_task"] = (_children_cpu(procs) - h0) / args.tasks * 1e6
        r["map_items_per_s"] = run_map(ex, args.items, args.chunksize)
        if idle:
            b0, p0 = clock.read()
            c0 = _children_cpu(procs)
            t0 = time.perf_counter()
            time.sleep(args.idle)
            elapsed = time.perf_counter() - t0
            b1, p1 = clock.read()
            r["idle_broker_pct"] = (b1 - b0) / elapsed * 100
            r["idle_process_pct"] = (p1 - p0) / elapsed * 100
            r["idle_hosts_pct"] = (_children_cpu(procs) - c0) / elapsed * 100
        r["workers_lost"] = ex.statistics().workers_lost
        r["load_after"] = _loadavg()
    finally:
        t0 = time.perf_counter()
        ex.shutdown(wait=True, cancel_futures=True)
        r["host_exit_codes"] = light.reap(procs, timeout=30.0)
        r["shutdown_s"] = time.perf_counter() - t0
    return r


MEDIANS = (
    "join_s",
    "submit_per_s",
    "map_items_per_s",
    "broker_us_per_task",
    "process_us_per_task",
    "hosts_us_per_task",
)


def merge(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of one W: medians over its rounds, plus every repetition's figures."""
    row = {**rounds[-1]}  # idle figures, load, process count: from the last round
    for key in MEDIANS:
        row[key] = statistics.median(r[key] for r in rounds)
        row[key + "_all"] = [r[key] for r in rounds]
    row["workers_lost"] = sum(r["workers_lost"] for r in rounds)
    row["host_exit_codes"] = [c for r in rounds for c in r["host_exit_codes"]]
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
        f"chunksize {args.chunksize}; median of {args.repeats} rounds over the Ws, "
        f"a fresh executor and a warm-up each; up to "
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
    lost = [r for r in rows if r["workers_lost"]]
    if lost:
        lines.append(
            "WARNING: workers were declared lost with W = " + ", ".join(str(r["workers"]) for r in lost)
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
    p.add_argument("--workers", default="2,10,100,1000", help="comma-separated W values")
    p.add_argument("--tasks", type=int, default=10_000, help="no-op submits per repetition")
    p.add_argument("--items", type=int, default=200_000, help="map items per repetition")
    p.add_argument("--chunksize", type=int, default=200, help="map chunk size")
    p.add_argument("--procs", type=int, default=2, help="light worker processes (at most)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--idle",
        type=float,
        default=10.0,
        help="seconds of idle heartbeat traffic to measure per W (0: skip)",
    )
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--profile", help="cProfile the broker thread; stats to PATH.<workers>")
    args = p.parse_args(argv)
    light.raise_fd_limit()
    if args.profile:
        _profiled_loop(args.profile)
    load0 = _loadavg()
    widths = [int(x) for x in args.workers.split(",")]
    rounds: dict[int, list[dict[str, Any]]] = {w: [] for w in widths}
    # repetitions go round the Ws (2, 10, ..., 2, 10, ...), not W after W: on a shared
    # machine the load drifts, and every W should see the same drift
    for rep in range(args.repeats):
        for w in widths:
            print(
                f"round {rep + 1}/{args.repeats}, W={w} ...",
                file=sys.stderr,
                flush=True,
            )
            r = measure_round(w, args, idle=args.idle > 0 and rep == args.repeats - 1)
            rounds[w].append(r)
            print(
                f"  submit {r['submit_per_s']:,.0f}/s, map {r['map_items_per_s']:,.0f} "
                f"items/s, load {r['load_after']}",
                file=sys.stderr,
                flush=True,
            )
    rows = [merge(rounds[w]) for w in widths]
    print(report(rows, args, load0))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    leftover = [t.name for t in threading.enumerate() if t.name.startswith("impexec")]
    if leftover:
        print(f"WARNING: threads left behind: {leftover}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
