#!/usr/bin/env python
"""Run the benchmark workloads against impexec and its peers; print a Markdown table.

    python benchmarks/run.py                 # everything, ~3-5 min on 2 cores
    python benchmarks/run.py --quick         # smoke run, < 1 min
    python -m benchmarks.run --only process,loky,dask --workloads submit,latency
    python benchmarks/run.py --json benchmarks/results/latest.json

Each (executor, workload) cell runs in a child process of its own (unless
--in-process) with a fresh executor, so a hung or crashed executor costs one cell
("timeout" / "error: ..."), never the run, and leftover processes can be found and
killed.  See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import ctypes
import datetime as _dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_HERE = str(Path(__file__).resolve().parent)
# Run as a script, sys.path[0] is benchmarks/ itself: import via the package instead.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# importing the package puts ROOT on PYTHONPATH for workers that start fresh interpreters
from benchmarks import executors, report, workloads  # noqa: E402
from benchmarks.executors import ShutdownError  # noqa: E402
from benchmarks.workloads import Ctx, NotApplicable  # noqa: E402

#: Processes that outlive an executor by design and exit with their parent
#: (multiprocessing's / loky's resource tracker, multiprocessing's forkserver).
HELPER_MARKERS = ("resource_tracker", "semaphore_tracker", "forkserver")
LEFTOVER_GRACE = 5.0  # s an executor's processes get to exit after shutdown


# --- processes -----------------------------------------------------------------------


def _psutil():
    import psutil

    return psutil


def set_child_subreaper() -> bool:
    """Linux: orphaned descendants are re-parented to us, so we can still see them."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def describe(p) -> str:
    try:
        cmd = " ".join(p.cmdline())[:120] or p.name()
    except Exception:
        cmd = "?"
    return f"pid {p.pid}: {cmd}"


def _is_helper(p) -> bool:
    try:
        cmd = " ".join(p.cmdline())
    except Exception:
        return False
    return any(m in cmd for m in HELPER_MARKERS)


def _reap_zombies() -> None:
    psutil = _psutil()
    for p in psutil.Process().children():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(p.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError, OSError):
            pass


def _live_descendants(exclude=(), helpers=True):
    psutil = _psutil()
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.pid in exclude or p.status() == psutil.STATUS_ZOMBIE:
                continue
            if not helpers and _is_helper(p):
                continue
            out.append(p)
        except psutil.Error:
            continue
    return out


def sweep(grace: float, exclude=(), helpers: bool = True) -> list[str]:
    """Wait up to ``grace`` s for descendants to exit; kill and report the rest."""
    psutil = _psutil()
    deadline = time.monotonic() + grace
    while True:
        _reap_zombies()
        procs = _live_descendants(exclude, helpers)
        if not procs or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    found = [describe(p) for p in procs]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    if procs:
        psutil.wait_procs(procs, timeout=3)
        _reap_zombies()
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    psutil = _psutil()
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        kids = []
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in kids:
        with contextlib.suppress(psutil.Error):
            p.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


# --- one cell: one workload on one fresh executor ---


def run_cell(exec_name: str, wl_name: str, settings: dict, phase=lambda text: None) -> dict:
    """Warm up, measure ``repeats`` times, shut down, check for leftover processes."""
    spec = executors.BY_NAME[exec_name]
    w = workloads.BY_NAME[wl_name]
    quick = settings["quick"]
    params = w.params(quick)
    res: dict = {
        "status": None,
        "values": {},
        "samples": {},
        "repetitions": 0,
        "params": params,
        "notes": [],
        "warnings": [],
        "leftover": [],
        "error": None,
    }
    missing = w.requires - spec.caps
    if missing:
        res.update(status="n/a", error=f"needs {', '.join(sorted(missing))}")
        return res

    t0 = time.monotonic()
    ctx = Ctx(
        spec,
        settings["workers"],
        params,
        deadline=t0 + settings["timeout"],
        quick=quick,
    )
    before = {p.pid for p in _live_descendants()}
    samples: list[dict] = []

    def repetitions(ex):
        started = time.monotonic()
        for i in range(settings["repeats"]):
            phase(f"measuring (repetition {i + 1})")
            rep_t0 = time.monotonic()
            samples.append(w.measure(ex, ctx))
            took = time.monotonic() - rep_t0
            used = time.monotonic() - started
            if i + 1 < settings["repeats"] and used + took > w.budget:
                break

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            if w.fresh_executor:
                phase("warm-up")
                w.warmup(None, ctx)
                repetitions(None)
            else:
                phase("starting the executor")
                with spec.open(settings["workers"]) as ex:
                    phase("warm-up")
                    w.warmup(ex, ctx)
                    repetitions(ex)
                    phase("shutting down")
            res["status"] = "ok"
        except ShutdownError as exc:
            if len(samples) and not w.fresh_executor:
                res["status"] = "ok"
                res["warnings"].append(str(exc))
            else:
                res.update(status="error", error=f"shutdown: {exc}")
        except NotApplicable as exc:
            res.update(status="n/a", error=str(exc))
        except (TimeoutError, cf.TimeoutError) as exc:
            res.update(status="timeout", error=str(exc) or "timeout")
        except Exception as exc:
            res.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500])
    for wm in caught:
        text = " ".join(f"{wm.category.__name__}: {wm.message}".split())
        if text not in res["warnings"] and "ResourceWarning" not in text:
            res["warnings"].append(text)

    res["repetitions"] = len(samples)
    for key in dict.fromkeys(k for s in samples for k in s):  # union, in order
        vals = [s[key] for s in samples if key in s]
        res["samples"][key] = vals
        res["values"][key] = med = statistics.median(vals)
        if len(vals) > 1 and med > 0 and (max(vals) > 3 * med or min(vals) < med / 3):
            ctx.note(f"{key} varies widely between repetitions: " + ", ".join(f"{v:.4g}" for v in vals))
    res["notes"] = ctx.notes
    phase("checking for leftover processes")
    res["leftover"] = sweep(LEFTOVER_GRACE, exclude=before, helpers=False)
    res["seconds"] = round(time.monotonic() - t0, 2)
    return res


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, default=str)
    os.replace(tmp, path)


def cell_main(spec_json: str) -> None:
    """Child-process entry: run one cell, write its result to spec['out']."""
    job = json.loads(spec_json)
    out = job["out"]
    executors.SHUTDOWN_TIMEOUT = job["settings"]["shutdown_timeout"]

    def phase(text: str) -> None:
        phase.last = text
        _write_json(out, {"status": "timeout", "error": f"no result: hung while {text}"})

    phase("importing")
    try:
        res = run_cell(job["executor"], job["workload"], job["settings"], phase)
    except BaseException as exc:  # a bug in the runner itself
        res = {"status": "error", "error": f"runner: {type(exc).__name__}: {exc}"}
    _write_json(out, res)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # do not wait for executors' non-daemon threads


def _tail(path: Path, lines: int = 15) -> list[str]:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return text[-lines:]


def run_cell_isolated(exec_name, wl_name, settings, tmpdir: Path) -> dict:
    out = tmpdir / f"{exec_name}-{wl_name}.json"
    log = tmpdir / f"{exec_name}-{wl_name}.log"
    job = {
        "executor": exec_name,
        "workload": wl_name,
        "settings": settings,
        "out": str(out),
    }
    hard = settings["timeout"] + settings["shutdown_timeout"] + LEFTOVER_GRACE + 30
    t0 = time.monotonic()
    killed = False
    with open(log, "wb") as lf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.run", "--_cell", json.dumps(job)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=lf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=hard)
        except subprocess.TimeoutExpired:
            killed = True
            kill_tree(proc)
        except BaseException:  # Ctrl-C: do not leave the cell behind
            kill_tree(proc)
            raise
    try:
        res = json.loads(out.read_text())
    except (OSError, ValueError):
        res = {
            "status": "error",
            "error": f"cell process exited with {proc.returncode} without a result",
        }
    if killed:
        res["status"] = "timeout"
        res["error"] = f"cell process killed after {hard:g} s; {res.get('error')}"
    orphans = sweep(LEFTOVER_GRACE)
    if orphans:
        res.setdefault("leftover", [])
        res["leftover"] += [f"(outlived the cell process) {o}" for o in orphans]
    res["wall_seconds"] = round(time.monotonic() - t0, 2)
    stderr_tail = _tail(log)
    if stderr_tail:
        res["log_tail"] = stderr_tail
    return res


# --- probing what is installed -------------------------------------------------------


def probe(names: list[str]) -> dict:
    """Availability, versions, start methods (imports the executors' packages)."""
    import multiprocessing

    info = {"executors": {}, "start_methods": {}}
    for name in names:
        spec = executors.BY_NAME[name]
        ok, reason = spec.available()
        info["executors"][name] = {
            "available": ok,
            "reason": reason,
            "label": spec.label,
            "description": spec.description,
            "versions": spec.versions(),
            "caps": sorted(spec.caps),
            "notes": list(spec.notes),
        }
    sm = info["start_methods"]
    sm["multiprocessing (ProcessPoolExecutor)"] = multiprocessing.get_start_method()
    with contextlib.suppress(Exception):
        import loky.backend.context as lctx

        sm["loky"] = lctx.get_start_method() or "loky (fork+exec, loky's default)"
    with contextlib.suppress(Exception):
        import dask
        import distributed  # noqa: F401  (registers its config)

        sm["dask workers (nanny)"] = dask.config.get("distributed.worker.multiprocessing-method")
    return info


def probe_isolated(names: list[str], tmpdir: Path) -> dict:
    out = tmpdir / "probe.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--_probe",
            ",".join(names),
            "--_out",
            str(out),
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        proc.wait(timeout=120)
        return json.loads(out.read_text())
    except (subprocess.TimeoutExpired, OSError, ValueError):
        kill_tree(proc)
        return {
            "executors": {
                n: {
                    "available": False,
                    "reason": "probing its import failed or hung",
                    "label": executors.BY_NAME[n].label,
                    "description": "",
                    "notes": [],
                }
                for n in names
            },
            "start_methods": {},
        }


# --- the command ----------------------------------------------------------------------


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Benchmark impexec.ClusterExecutor against ProcessPoolExecutor, "
        "loky and dask (and ipyparallel/parsl/ray if importable).",
    )
    ap.add_argument(
        "--only",
        metavar="NAME,...",
        help="executors to run (default: all available): " + ", ".join(executors.BY_NAME),
    )
    ap.add_argument(
        "--workloads",
        metavar="NAME,...",
        help="workloads to run: "
        + ", ".join(w.name + ("" if w.default else "*") for w in workloads.WORKLOADS)
        + " (* = not in the default set), or 'all'",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, one repetition: a smoke run (< 1 min)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        help="repetitions per cell, median reported (default 3; 1 with --quick)",
    )
    ap.add_argument("--workers", type=int, default=2, help="workers per executor (2)")
    ap.add_argument(
        "--timeout",
        type=float,
        help="seconds allowed per cell before it reads 'timeout' (default 120; 60 with --quick)",
    )
    ap.add_argument("--json", metavar="FILE", help="write raw results (all samples) here")
    ap.add_argument("--markdown", metavar="FILE", help="also write the report here")
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="run the cells in this process (debugging; a hang is not recoverable)",
    )
    ap.add_argument("--list", action="store_true", help="list executors and workloads")
    ap.add_argument("--_cell", help=argparse.SUPPRESS)
    ap.add_argument("--_probe", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.timeout is None:
        args.timeout = 60.0 if args.quick else 120.0
    return args, ap


def list_things() -> None:
    print("Executors:")
    for spec in executors.EXECUTORS + executors.SELFTESTS:
        opt = " (optional)" if spec.optional else " (self-test)" if spec.hidden else ""
        ref = " (reference)" if spec.reference else ""
        print(f"  {spec.name:<12} {spec.description}{opt}{ref}")
    print("Workloads (* = only when named in --workloads):")
    for w in workloads.WORKLOADS:
        star = " " if w.default else "*"
        print(f"  {w.name:<12}{star}{w.title}")


def main(argv=None) -> int:
    args, ap = parse_args(argv)
    if args._cell:
        cell_main(args._cell)
        return 0
    if args._probe:
        _write_json(args._out, probe(_split(args._probe)))
        return 0
    if args.list:
        list_things()
        return 0

    names = _split(args.only) or [s.name for s in executors.EXECUTORS if not s.hidden]
    unknown = [n for n in names if n not in executors.BY_NAME]
    if unknown:
        ap.error(f"unknown executor(s) {unknown}; choose from {list(executors.BY_NAME)}")
    wl_names = _split(args.workloads)
    if not wl_names:
        wl_names = [w.name for w in workloads.WORKLOADS if w.default]
    elif wl_names == ["all"]:
        wl_names = [w.name for w in workloads.WORKLOADS]
    unknown = [n for n in wl_names if n not in workloads.BY_NAME]
    if unknown:
        ap.error(f"unknown workload(s) {unknown}; choose from {list(workloads.BY_NAME)}")
    wls = [workloads.BY_NAME[n] for n in wl_names]

    subreaper = set_child_subreaper()
    settings = {
        "workers": args.workers,
        "repeats": args.repeats,
        "quick": args.quick,
        "timeout": args.timeout,
        "shutdown_timeout": min(30.0, max(5.0, args.timeout / 4)),
        "in_process": args.in_process,
    }
    executors.SHUTDOWN_TIMEOUT = settings["shutdown_timeout"]
    t_run = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="impexec-bench-") as tmp:
        tmpdir = Path(tmp)
        info = probe(names) if args.in_process else probe_isolated(names, tmpdir)
        columns = [n for n in names if info["executors"][n]["available"]]
        ref = executors.REFERENCE.name
        columns.sort(key=lambda n: (n != ref, n != "impexec", names.index(n)))
        meta = {
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": report.machine(),
            "load_start": report.load(),
            "versions": report.versions(),
            "start_methods": ", ".join(f"{k}: {v}" for k, v in info["start_methods"].items()),
            "settings": settings,
            "executors": info["executors"],
            "labels": {n: executors.BY_NAME[n].label for n in names},
            "columns": columns,
            "workloads": {w.name: {"title": w.title, "params": w.params(args.quick)} for w in wls},
            "subreaper": subreaper,
        }
        # optional executors that are simply not installed: one line, not a column
        for n in names:
            ex = info["executors"][n]
            if not ex["available"] and executors.BY_NAME[n].optional:
                ex["reason"] = f"optional, {ex['reason']}"
        head = report.header(meta)
        print(head, flush=True)
        if not columns:
            print("\nNo executor available.")
            return 1

        cells: dict[str, dict[str, dict]] = {n: {} for n in columns}
        total = len(columns) * len(wls)
        i = 0
        interrupted = False
        try:
            for w in wls:  # row by row: every column of a row sees similar conditions
                for n in columns:
                    i += 1
                    print(
                        f"[{i:>2}/{total}] {w.name:<11} {n:<11} ...",
                        end="",
                        file=sys.stderr,
                        flush=True,
                    )
                    if args.in_process:
                        t0 = time.monotonic()
                        res = run_cell(n, w.name, settings)
                        res["wall_seconds"] = round(time.monotonic() - t0, 2)
                    else:
                        res = run_cell_isolated(n, w.name, settings, tmpdir)
                    cells[n][w.name] = res
                    shown = ", ".join(
                        f"{m.key}={m.fmt.format(res['values'][m.key])}"
                        for m in w.metrics
                        if m.show and m.key in res.get("values", {})
                    )
                    err = f" {res.get('error')}" if res.get("status") != "ok" else ""
                    print(
                        f" {res.get('status')} ({res.get('wall_seconds', 0):.1f} s) {shown}{err}",
                        file=sys.stderr,
                        flush=True,
                    )
        except KeyboardInterrupt:
            interrupted = True
            print("\ninterrupted: reporting what was measured", file=sys.stderr)

    leftover_end = sweep(LEFTOVER_GRACE if not args.in_process else 1.0, helpers=not args.in_process)
    body = [
        "",
        "## Results" + (" (interrupted)" if interrupted else ""),
        "",
        report.table(meta, cells, wls, columns, ref if ref in columns else None),
        "",
        report.legend(executors.BY_NAME[ref].label),
    ]
    note_text = report.notes(meta, cells, wls, columns)
    if note_text:
        body += ["", "Notes:", "", note_text]
    n_left = sum(len(c.get("leftover", [])) for col in cells.values() for c in col.values())
    body += [
        "",
        f"Leftover processes: {n_left} after executor shutdowns; "
        f"{len(leftover_end)} at the end"
        + (": " + "; ".join(leftover_end) if leftover_end else "")
        + f". Total time {time.monotonic() - t_run:.0f} s.",
    ]
    meta["load_end"] = report.load()
    body.append(
        "Load average at the end: " + report.load_text(meta["load_end"], meta["machine"]["logical_cpus"])
    )
    text = "\n".join(body)
    print(text, flush=True)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(head + "\n" + text + "\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        _write_json(
            args.json,
            {
                "meta": meta,
                "cells": cells,
                "leftover_at_end": leftover_end,
                "markdown": head + "\n" + text,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
