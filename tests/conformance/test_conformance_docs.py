"""docs/conformance.md lists exactly the skips and differences the suite applies.

Runs on every Python (it needs only the adapter's lists, not CPython's test package).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parent.parent / "docs" / "conformance.md"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from cpython_adapter import DIFFERENCES, NOT_RUN, SKIPS  # noqa: E402


def _tables() -> dict[str, set[str]]:
    """Section heading → the names in the first column of its tables."""
    out: dict[str, set[str]] = {}
    section = ""
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        m = re.match(r"\| `([^`]+)` \|", line)
        if m:
            out.setdefault(section, set()).add(m.group(1))
    return out


def test_the_docs_list_every_skip_and_nothing_else() -> None:
    tables = _tables()
    skipped = tables["Skipped: tests of ProcessPoolExecutor's internals"]
    assert skipped == set(SKIPS) | set(NOT_RUN)


def test_the_docs_list_every_difference_and_nothing_else() -> None:
    assert _tables()["Documented differences"] == set(DIFFERENCES)


def test_every_skip_and_difference_has_a_reason() -> None:
    for reason in [*SKIPS.values(), *DIFFERENCES.values(), *NOT_RUN.values()]:
        assert len(reason) > 20
