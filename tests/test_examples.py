"""Every example runs to the end: ``examples/*.py`` in a fresh interpreter, timed out.

An example that needs something CI does not have (a Slurm cluster, a remote host) says
so with a ``# ci: skip  (reason)`` line; it is reported as skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: Seconds one example may run (they are meant to finish in a few seconds on 2 cores).
EXAMPLE_TIMEOUT_S = 240
SKIP_MARK = re.compile(r"^#\s*ci:\s*skip\b(.*)$", re.MULTILINE)
#: ``# ci: args ...``: the arguments CI runs the example with (e.g. ``--dry-run``).
ARGS_MARK = re.compile(r"^#\s*ci:\s*args\b(.*)$", re.MULTILINE)
#: ``# ci: slurm-args ...``: also run it with these arguments where a Slurm answers.
SLURM_MARK = re.compile(r"^#\s*ci:\s*slurm-args\b(.*)$", re.MULTILINE)
#: ``# ci: needs MODULE (how to install it)``: skipped, naming it, where MODULE is missing
#: (the light ``.[test]`` install has no pyABC; CI installs it and runs the example).
NEEDS_MARK = re.compile(r"^#\s*ci:\s*needs\s+(\S+)(.*)$", re.MULTILINE)


def _examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.py"))


def _runs() -> list[tuple[Path, str | None]]:
    runs: list[tuple[Path, str | None]] = []
    for path in _examples():
        text = path.read_text()
        args = ARGS_MARK.search(text)
        runs.append((path, args.group(1).strip() if args else None))
        slurm = SLURM_MARK.search(text)
        if slurm:
            runs.append((path, "slurm:" + slurm.group(1).strip()))
    return runs


def _slurm_answers() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=15, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.parametrize(
    ("path", "args"), _runs(), ids=lambda v: v.name if isinstance(v, Path) else (v or "")
)
def test_example_runs(path: Path, args: str | None, tmp_path: Path) -> None:
    text = path.read_text()
    mark = SKIP_MARK.search(text)
    if mark:
        pytest.skip(f"{path.name} is marked '# ci: skip'{mark.group(1)}")
    for module, how in NEEDS_MARK.findall(text):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{path.name} needs {module}{how}")
    argv = (args or "").split()
    if args and args.startswith("slurm:"):
        if not _slurm_answers():
            pytest.skip("no Slurm answers: start it with `sudo bash ci/cluster-up.sh up slurm`")
        argv = args[len("slurm:") :].split()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(path), *argv],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{path.name} exited with {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}"
        f"\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
    assert proc.stdout.strip(), f"{path.name} printed nothing"


def test_examples_have_a_docstring_saying_how_to_run_them() -> None:
    for path in _examples():
        text = path.read_text()
        assert text.startswith('"""'), f"{path.name} has no docstring header"
        assert "python examples/" in text.split('"""')[1], f"{path.name} does not say how to run it"


def _load(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the examples run their work under __main__ only
    return module


def test_examples_are_numbered_without_gaps_and_all_listed() -> None:
    numbered = sorted(p.name for p in _examples() if re.match(r"\d\d_", p.name))
    assert [int(n[:2]) for n in numbered] == list(range(1, len(numbered) + 1)), numbered
    readme = (EXAMPLES / "README.md").read_text()
    listed = set(re.findall(r"^\| `([\w.]+\.py)` \|", readme, re.MULTILINE))
    assert listed == {p.name for p in _examples()}


def test_the_readme_describes_the_markers_the_runner_reads() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    for mark in ("# ci: args", "# ci: slurm-args", "# ci: skip", "# ci: needs"):
        assert mark in readme
    for path in _examples():  # and every marker a script carries is one the runner knows
        for line in re.findall(r"^#\s*ci:\s*(\S+)", path.read_text(), re.MULTILINE):
            assert line in ("args", "slurm-args", "skip", "needs"), (path.name, line)


def test_the_uneven_batching_workload_is_one_static_cannot_balance() -> None:
    """02_batching.py's uneven rows must differ: "static" gives one worker the slow calls."""
    from impexec._mapping import plan_chunksize

    ex = _load("02_batching.py")
    delays = [ex.SLOW_S] * ex.SLOW_CALLS + [ex.FAST_S] * (ex.UNEVEN_CALLS - ex.SLOW_CALLS)
    size = plan_chunksize("static", len(delays), 2)
    static_span = max(sum(delays[i : i + size]) for i in range(0, len(delays), size))
    dynamic_span = max(sum(delays) / 2, max(delays))  # a free worker takes the next call
    assert static_span > 1.5 * dynamic_span


def test_secure_remote_announces_the_refusal_before_its_warning(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "secure_remote.py")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=EXAMPLE_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout
    out = proc.stdout
    warning = out.index("WARNING impexec")  # the broker's log line of the refused handshake
    assert out.index("that refusal is what this part demonstrates") < warning, out
