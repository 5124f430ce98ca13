"""System description and the Markdown table."""

# ruff: noqa: RUF001  (the multiplication sign and the en dash are meant)

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import sys

from benchmarks.workloads import HIGHER, Metric, Workload

PACKAGES = (
    "impexec",
    "loky",
    "dask",
    "distributed",
    "numpy",
    "cloudpickle",
    "pyzmq",
    "psutil",
    "ipyparallel",
    "parsl",
    "ray",
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import psutil

    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "executable": sys.executable,
        "hostname": platform.node(),
    }


def versions() -> dict[str, str]:
    out = {}
    for dist in PACKAGES:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def load_text(loadavg, cpus) -> str:
    if not loadavg:
        return "unknown"
    text = f"{loadavg[0]:.2f} / {loadavg[1]:.2f} / {loadavg[2]:.2f} (1/5/15 min)"
    if cpus and loadavg[0] > 0.5 * cpus:
        text += (
            f" ⚠ busy machine ({cpus} CPUs): other processes compete with the "
            "benchmark, figures are unreliable"
        )
    return text


def header(meta: dict) -> str:
    m = meta["machine"]
    vers = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    missing = ", ".join(k for k, v in meta["versions"].items() if not v)
    s = meta["settings"]
    lines = [
        f"# impexec benchmarks ({meta['started']})",
        "",
        f"- Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs "
        f"({m['physical_cores']} physical cores), {m['ram_gib']} GiB RAM; "
        f"{m['platform']}",
        f"- Python: {m['python']} ({m['executable']})",
        "- Load average at start: " + load_text(meta.get("load_start"), m["logical_cpus"]),
        f"- Packages: {vers}" + (f" (not installed: {missing})" if missing else ""),
        f"- Start methods: {meta.get('start_methods', '?')}",
        f"- Settings: {s['workers']} workers per executor, median of {s['repeats']} "
        f"repetition(s) after a warm-up, {'quick' if s['quick'] else 'full'} sizes, "
        f"{s['timeout']:g} s limit per cell, "
        f"{'in-process' if s['in_process'] else 'each cell in its own process'}",
    ]
    for name, ex in meta["executors"].items():
        if ex["available"]:
            lines.append(f"- `{name}`: {ex['description']}")
    for name, ex in meta["executors"].items():
        if not ex["available"]:
            lines.append(f"- `{name}`: skipped — {ex['reason']}")
    return "\n".join(lines)


def _fmt(metric: Metric, value: float) -> str:
    return metric.fmt.format(value)


def _ratio(r: float) -> str:
    if r >= 100:
        return f"{r:,.0f}×"
    if r >= 0.1 or r <= 0:
        return f"{r:.2f}×"
    return f"{r:.{1 - math.floor(math.log10(r))}f}×"  # two significant digits


def _cell_text(cell: dict | None, metric: Metric) -> str:
    if cell is None:
        return "–"
    status = cell.get("status")
    if status == "ok" and metric.key in cell.get("values", {}):
        text = _fmt(metric, cell["values"][metric.key])
        if cell.get("warnings") or cell.get("leftover"):
            text += " ⚠"
        return text
    if status == "timeout":
        return "timeout"
    if status == "n/a":
        return "n/a"
    if status == "ok":
        return "–"  # this metric does not apply to this run (see the notes)
    if status == "error":
        err = (cell.get("error") or "no value").replace("|", "/").replace("\n", " ")
        return f"error: {err[:40]}…" if len(err) > 40 else f"error: {err}"
    return str(status)


def table(
    meta: dict,
    cells: dict,
    workloads: list[Workload],
    columns: list[str],
    reference: str | None,
) -> str:
    """Rows: the metrics of the workloads; columns: value (and ratio) per executor."""
    labels = meta["labels"]
    ref_label = labels.get(reference, "")
    head = ["workload", "unit", "better"]
    align = [":--", ":--", ":-:"]
    for name in columns:
        head.append(labels[name])
        align.append("--:")
        if reference is not None and name != reference:
            head.append(f"vs {ref_label}")
            align.append("--:")
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for w in workloads:
        for metric in w.metrics:
            if not metric.show:
                continue
            ref_cell = cells.get(reference, {}).get(w.name)
            ref_val = None
            if ref_cell and ref_cell.get("status") == "ok":
                ref_val = ref_cell.get("values", {}).get(metric.key)
            row = [metric.label, metric.unit, "↑" if metric.better == HIGHER else "↓"]
            for name in columns:
                cell = cells.get(name, {}).get(w.name)
                row.append(_cell_text(cell, metric))
                if reference is None or name == reference:
                    continue
                val = None
                if cell and cell.get("status") == "ok":
                    val = cell.get("values", {}).get(metric.key)
                if val is None or not ref_val:
                    row.append("")
                else:
                    row.append(_ratio(val / ref_val))
            out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def legend(reference_label: str) -> str:
    return (
        f'↑ higher is better, ↓ lower is better. "vs {reference_label}" = the '
        f"executor's figure / {reference_label}'s figure: above 1 is better on ↑ rows, "
        "below 1 is better on ↓ rows. ⚠ = see the notes."
    )


def _first_sentence(text: str, limit: int = 120) -> str:
    """Long warnings: the first sentence says what it is (the JSON has it all)."""
    if len(text) <= limit:
        return text
    first = text.split(". ")[0]
    return (first if len(first) <= limit else first[: limit - 3]) + " …"


def notes(meta: dict, cells: dict, workloads: list[Workload], columns: list[str]) -> str:
    """Footnotes; the same note on several executors of one workload is one line."""
    lines = [f"- {text}" for name in columns for text in meta["executors"][name].get("notes", [])]
    want = meta["settings"]["repeats"]
    for w in workloads:
        grouped: dict[str, list[str]] = {}
        for name in columns:
            cell = cells.get(name, {}).get(w.name)
            if not cell:
                continue
            texts = []
            reps = cell.get("repetitions")
            if cell.get("status") == "ok" and reps is not None and reps < want:
                texts.append(f"{reps} of {want} repetitions (time budget)")
            texts += cell.get("notes", [])
            texts += [f"⚠ {_first_sentence(t)}" for t in cell.get("warnings", [])]
            if cell.get("status") in ("error", "timeout") and cell.get("error"):
                texts.append(f"{cell['status']}: {cell['error']}")
            texts += [f"⚠ leftover process after shutdown: {p}" for p in cell.get("leftover", [])]
            for t in texts:
                grouped.setdefault(" ".join(str(t).split()), []).append(name)
        for text, names in grouped.items():
            who = ", ".join(f"`{n}`" for n in names)
            lines.append(f"- {who} × `{w.name}`: {text}")
    return "\n".join(lines)
