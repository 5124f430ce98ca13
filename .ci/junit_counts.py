"""Print ran / passed / skipped / failed from pytest junit files; fail if a part did not run.

    python .ci/junit_counts.py FILE.xml [--require PART=MIN ...]

PART is a substring of the test's module (e.g. ``test_cpython_futures``); the file fails
the check unless at least MIN of its tests in that part ran (were not skipped). A suite
that skips itself because something is missing must not pass CI as if it had run.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections import Counter


def outcomes(path: str) -> list[tuple[str, str]]:
    """[(module.Class::name, outcome)] with outcome passed/skipped/failed/error."""
    out = []
    for case in ET.parse(path).iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds:
            outcome = "failed"
        elif "error" in kinds:
            outcome = "error"
        elif "skipped" in kinds:
            outcome = "skipped"
        else:
            outcome = "passed"
        out.append((name, outcome))
    return out


def summary(cases: list[tuple[str, str]]) -> str:
    c = Counter(outcome for _, outcome in cases)
    ran = len(cases) - c["skipped"]
    return (f"{len(cases)} collected, {ran} ran, {c['passed']} passed, {c['skipped']} skipped, "
            f"{c['failed']} failed, {c['error']} errors")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("--require", action="append", default=[], metavar="PART=MIN")
    args = parser.parse_args()
    cases = outcomes(args.file)
    print(f"{args.file}: {summary(cases)}")
    rc = 0
    for req in args.require:
        part, _, least = req.partition("=")
        mine = [(n, o) for n, o in cases if part in n]
        ran = sum(o != "skipped" for _, o in mine)
        print(f"  {part}: {summary(mine)}")
        if ran < int(least or 1):
            print(f"  {part}: only {ran} ran, at least {least} must: it was skipped or not collected")
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
