"""Every example runs to the end: ``examples/*.py`` in a fresh interpreter, timed out.

An example that needs something CI does not have (a Slurm cluster, a remote host) says
so with a ``# ci: skip  (reason)`` line; it is reported as skipped with that reason.
"""

from __future__ import annotations

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


def _examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.py"))


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.name)
def test_example_runs(path: Path, tmp_path: Path) -> None:
    text = path.read_text()
    mark = SKIP_MARK.search(text)
    if mark:
        pytest.skip(f"{path.name} is marked '# ci: skip'{mark.group(1)}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(path)],
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
        assert "python examples/" in text.split('"""')[1], (
            f"{path.name} does not say how to run it"
        )
