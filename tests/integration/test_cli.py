"""The command line: ``impexec-worker`` / ``python -m impexec worker``, ``impexec status``,
``impexec stop``, against a running executor with no workers of its own."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from impexec._cli import parse_duration
from waiting import wait_until

#: Seconds for a hand-started worker to connect, or to leave when asked.
WAIT = 30.0


def slow_square(x):
    time.sleep(0.1)
    return x * x


def impexec(*args, stdin=None, timeout=WAIT):
    return subprocess.run(
        [sys.executable, "-m", "impexec", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_worker(*args, stdin=None):
    return subprocess.Popen(
        [sys.executable, "-m", "impexec", "worker", *args],
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def workers():
    """Start hand-made worker processes; kill whatever is still running at teardown."""
    procs = []

    def start(*args, stdin=None):
        proc = start_worker(*args, stdin=stdin)
        if stdin is not None:
            proc.stdin.write(stdin)
            proc.stdin.flush()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def exit_code(proc):
    try:
        proc.wait(WAIT)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not exit")
    return proc.returncode, proc.stderr.read()


def test_a_worker_started_by_hand_gets_the_queued_work_and_stop_makes_it_leave(make_executor, workers):
    ex = make_executor(None)
    futures = [ex.submit(slow_square, x) for x in range(10)]  # queued: no worker yet
    assert ex.statistics().queued == 10
    path = ex.connection_file()
    proc = workers("--connect", path)
    assert [f.result(timeout=WAIT) for f in futures] == [x * x for x in range(10)]
    stopped = impexec("stop", path)
    assert stopped.returncode == 0, stopped.stderr
    assert "1 worker" in stopped.stdout
    assert exit_code(proc)[0] == 0
    assert ex.statistics().workers == 0


def test_processes_runs_n_workers_and_status_json_counts_them(make_executor, workers):
    ex = make_executor(None)
    path = ex.connection_file()
    proc = workers("--connect", path, "--processes", "2")
    wait_until(lambda: ex.statistics().workers == 2, WAIT, "2 workers")
    assert list(ex.map(slow_square, range(8), timeout=WAIT)) == [x * x for x in range(8)]
    status = impexec("status", path, "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["workers"] == 2
    assert data["done"] == 8
    for name in ("queued", "running", "failed", "resubmitted"):
        assert data[name] == 0, name
    assert len(data["workers_list"]) == 2
    text = impexec("status", path)
    assert "workers=2" in text.stdout and "done=8" in text.stdout
    assert impexec("stop", path).returncode == 0
    assert exit_code(proc)[0] == 0  # both children drained and left, so did the supervisor


def test_runtime_finishes_the_held_work_then_leaves(make_executor, workers):
    ex = make_executor(None)
    proc = workers("--connect", ex.connection_file(), "--runtime", "1s")
    futures = [ex.submit(slow_square, x) for x in range(5)]
    assert [f.result(timeout=WAIT) for f in futures] == [x * x for x in range(5)]
    assert exit_code(proc)[0] == 0
    wait_until(lambda: ex.statistics().workers == 0, WAIT, "the worker to be gone")
    late = ex.submit(slow_square, 3)  # queued again: a new worker picks it up
    workers("--connect", ex.connection_file())
    assert late.result(timeout=WAIT) == 9


def test_url_and_key_instead_of_a_file(make_executor, workers):
    ex = make_executor(None, key="ab" * 16)
    proc = workers("--connect", ex.address, "--key", "ab" * 16)
    assert ex.submit(pow, 2, 8).result(timeout=WAIT) == 256
    status = impexec("status", ex.address, "--key", "ab" * 16, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["workers"] == 1
    assert impexec("stop", ex.address, "--key", "ab" * 16).returncode == 0
    assert exit_code(proc)[0] == 0


def test_connection_on_stdin_keeps_the_key_off_the_command_line(make_executor, workers):
    ex = make_executor(None)
    with open(ex.connection_file()) as f:
        line = json.dumps(json.load(f)) + "\n"
    proc = workers("--connect", "-", "--exit-with-stdin", stdin=line)
    assert ex.submit(pow, 3, 3).result(timeout=WAIT) == 27
    proc.stdin.close()  # --exit-with-stdin: the worker leaves at once
    code, err = exit_code(proc)
    assert code != 0
    assert "standard input closed" in err


def test_the_supervisor_does_not_outlive_its_executor(make_executor, shutdown_with_deadline, workers):
    ex = make_executor(None)
    proc = workers("--connect", ex.connection_file(), "--processes", "2")
    wait_until(lambda: ex.statistics().workers == 2, WAIT, "2 workers")
    shutdown_with_deadline(ex)
    assert exit_code(proc)[0] == 0


def test_wrong_arguments_are_reported(make_executor):
    ex = make_executor(None)
    bad = impexec("worker", "--connect", ex.connection_file(), "--processes", "0")
    assert bad.returncode == 2 and "--processes" in bad.stderr
    nokey = impexec("worker", "--connect", "tcp://127.0.0.1:1")
    assert nokey.returncode == 2 and "--key" in nokey.stderr
    missing = impexec("status", "/nonexistent/connection.json")
    assert missing.returncode == 1 and "No such file" in missing.stderr
    silent = impexec("status", "tcp://127.0.0.1:1", "--key", "ab" * 16, "--timeout", "0.3")
    assert silent.returncode == 1 and "no answer" in silent.stderr


def test_impexec_worker_script_is_installed():
    script = shutil.which("impexec-worker")
    if script is None:
        pytest.skip("impexec-worker is not on PATH (impexec is not installed here)")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=WAIT, check=False)
    assert out.returncode == 0 and "--processes" in out.stdout and "--runtime" in out.stdout


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("10m", 600),
        ("2h", 7200),
        ("1d", 86400),
        ("1.5", 1.5),
        (" 2 h ", 7200),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-1s", "2x", "1h30m"])
def test_bad_durations(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)
