"""What a task computes never depends on a pickle the executor kept from an earlier call.

A function sent by value (defined in ``__main__``, a closure, a lambda, a function of a
module registered with ``cloudpickle.register_pickle_by_value``) carries the values it
reads: the client pickles it again at every submit and map, and a worker loads it again
for every task, as ProcessPoolExecutor does. Only a function sent by reference (its
module and name) is reused, on both sides, where loading the bytes again would give the
same object.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import pickle_tasks
import tasks

TIMEOUT = 60


def test_a_global_of_the_script_changed_between_two_calls_is_seen(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent("""
        import json
        from impexec import ClusterExecutor

        FACTOR = 2

        def scale(x):
            return FACTOR * x

        if __name__ == "__main__":
            with ClusterExecutor(2) as ex:
                first = list(ex.map(scale, range(3), timeout=60))
                FACTOR = 10
                second = list(ex.map(scale, range(3), timeout=60))
                one = ex.submit(scale, 1).result(timeout=60)
                FACTOR = 100
                two = ex.submit(scale, 1).result(timeout=60)
            print(json.dumps([first, second, one, two]))
    """)
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=2 * TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [[0, 2, 4], [0, 10, 20], 10, 100]


def test_a_module_registered_to_go_by_value_after_a_first_submit_goes_by_value(
    executor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert executor.submit(pickle_tasks.source).result(timeout=TIMEOUT) == "the module's file"
    monkeypatch.setattr(pickle_tasks, "SOURCE", "the client's value")
    cloudpickle.register_pickle_by_value(pickle_tasks)
    try:
        got = executor.submit(pickle_tasks.source).result(timeout=TIMEOUT)
        mapped = list(executor.map(pickle_tasks.source_of, [0, 1], timeout=TIMEOUT))
    finally:
        cloudpickle.unregister_pickle_by_value(pickle_tasks)
    assert got == "the client's value"
    assert mapped == ["the client's value"] * 2
    assert executor.submit(pickle_tasks.source).result(timeout=TIMEOUT) == "the module's file"


def test_a_task_that_changes_its_functions_state_does_not_change_the_next_task(
    make_executor: Any,
) -> None:
    ex = make_executor(1)  # one worker: every task runs in the same process
    seen: list[int] = []

    def count(x: int) -> int:
        seen.append(x)  # the worker's copy of the closure cell
        return len(seen)

    assert [ex.submit(count, i).result(timeout=TIMEOUT) for i in range(3)] == [1, 1, 1]
    assert list(ex.map(count, range(3), timeout=TIMEOUT)) == [1, 1, 1]
    assert seen == []  # the client's cell was never touched


def test_a_function_sent_by_reference_keeps_its_modules_state_on_the_worker(
    make_executor: Any,
) -> None:
    # the other side of the rule: module state lives as long as the worker process,
    # as in a ProcessPoolExecutor's processes
    ex = make_executor(1)
    pids = {ex.submit(tasks.pid).result(timeout=TIMEOUT) for _ in range(3)}
    counts = [ex.submit(pickle_tasks.count_calls).result(timeout=TIMEOUT) for _ in range(3)]
    assert len(pids) == 1
    assert counts == [counts[0], counts[0] + 1, counts[0] + 2]
