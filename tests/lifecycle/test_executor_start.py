"""An executor that cannot start leaves nothing; one that is forked is refused in the
child; keys follow one rule; job scripts (they hold the key) do not stay on disk.

The autouse ``no_leaks`` fixture (tests/conftest.py) fails any of these tests that
leaves an impexec thread or a child process behind.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from impexec import ClusterExecutor, LocalWorkers, SlurmWorkers

FAST = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.5}


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The temporary directory executors make their private directory in."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@contextlib.contextmanager
def _router() -> Iterator[zmq.Socket[Any]]:
    """A ROUTER in a context of its own, closed and *terminated* on leaving: closing a
    ZeroMQ socket is asynchronous, and only the context's end waits until its port is
    free again (a shared context's would not be done before the next bind)."""
    ctx: zmq.Context[Any] = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    try:
        yield s
    finally:
        s.close(linger=0)
        ctx.term()


def _free_address() -> str:
    with _router() as s:
        return f"tcp://127.0.0.1:{s.bind_to_random_port('tcp://127.0.0.1')}"


def _assert_released(address: str) -> None:
    """The broker's port can be bound again: its socket was closed."""
    with _router() as s:
        s.bind(address)


class _FailsAfterStarting(LocalWorkers):
    """Starts its worker processes, then fails (as a launcher can half-way)."""

    def start(self, host):
        super().start(host)
        raise RuntimeError("the launcher broke after starting its workers")


def test_a_launcher_that_cannot_start_leaves_nothing(tmp_path, private_tmp):
    # SlurmWorkers cannot make its output directory: start() raises before any sbatch
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    address = _free_address()
    with pytest.raises(OSError):
        ClusterExecutor(
            [LocalWorkers(1), SlurmWorkers(2, output_dir=blocker / "jobs")], address=address, **FAST
        )
    _assert_released(address)
    assert list(private_tmp.iterdir()) == []  # socket and connection files removed


def test_a_launcher_failing_after_it_started_workers_leaves_nothing(private_tmp):
    address = _free_address()
    with pytest.raises(RuntimeError, match="broke after starting"):
        ClusterExecutor(_FailsAfterStarting(2), address=address, **FAST)
    _assert_released(address)
    assert list(private_tmp.iterdir()) == []
    # no_leaks: the two worker processes were stopped


def test_an_address_in_use_leaves_nothing(private_tmp, raw_socket):
    address = _free_address()
    raw_socket(zmq.ROUTER).bind(address)  # taken
    with pytest.raises(zmq.ZMQError):
        ClusterExecutor(LocalWorkers(1), address=address, **FAST)
    assert list(private_tmp.iterdir()) == []


def test_remote_only_executor_makes_no_private_dir_until_asked(private_tmp, shutdown_with_deadline):
    ex = ClusterExecutor(None, **FAST)
    try:
        assert list(private_tmp.iterdir()) == []  # killed now, it would leave nothing
        path = Path(ex.connection_file())
        assert path.parent.parent == private_tmp and path.stat().st_mode & 0o777 == 0o600
    finally:
        shutdown_with_deadline(ex)
    assert list(private_tmp.iterdir()) == []


FORK = """
import os, sys, time, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: that is the point
from impexec import ClusterExecutor
ex = ClusterExecutor(1, heartbeat_interval=0.05, heartbeat_timeout=0.5)
assert ex.submit(pow, 2, 5).result(timeout=60) == 32
pid = os.fork()
if pid == 0:
    t = time.monotonic()
    code = 0
    for call in (lambda: ex.submit(pow, 2, 3), lambda: ex.map(abs, [1]), ex.statistics):
        try:
            call()
            code = 10
        except RuntimeError as exc:
            if "forked" not in str(exc):
                code = 11
    if time.monotonic() - t > 5:
        code = 12
    os._exit(code)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
assert ex.submit(pow, 2, 6).result(timeout=60) == 64  # the parent's executor still works
ex.shutdown()
print("parent ok")
"""


def test_a_forked_child_cannot_use_the_parents_executor():
    res = subprocess.run(
        [sys.executable, "-c", FORK], capture_output=True, text=True, timeout=90, check=False
    )
    assert res.stdout.split("\n")[:2] == ["child 0", "parent ok"], res.stdout + res.stderr


def test_a_forked_child_exits_without_touching_the_parents_executor():
    # the child's exit must not run the parent's executors' shutdown (it would send on
    # the parent's sockets and wait for threads it does not have)
    script = textwrap.dedent("""
        import os, time, warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        from impexec import ClusterExecutor
        ex = ClusterExecutor(1, heartbeat_interval=0.05, heartbeat_timeout=0.5)
        assert ex.submit(pow, 2, 5).result(timeout=60) == 32
        pid = os.fork()
        if pid == 0:
            raise SystemExit(0)  # a normal exit: atexit handlers run
        t = time.monotonic()
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), round(time.monotonic() - t) < 5)
        assert ex.submit(pow, 2, 6).result(timeout=60) == 64
        ex.shutdown()
    """)
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=90, check=False
    )
    assert res.returncode == 0 and res.stdout.strip() == "child 0 True", res.stdout + res.stderr


@pytest.mark.parametrize("key", [b"x", b"k" * 15, "ab" * 15, bytearray(b"y" * 8)])
def test_short_keys_are_refused_through_the_api(key):
    with pytest.raises(ValueError, match="at least 16 bytes"):
        ClusterExecutor(None, key=key, **FAST)


def test_a_16_byte_key_works(make_executor):
    ex = make_executor(1, key=b"k" * 16)
    assert ex.submit(pow, 3, 2).result(timeout=60) == 9


class _SubmitFails(SlurmWorkers):
    """A Slurm launcher whose submit command fails (as sbatch does on a bad option)."""

    def submit_argv(self, script):
        return [sys.executable, "-c", "import sys; sys.exit('sbatch: error: Invalid partition')"]


def test_a_failed_submission_leaves_no_job_script(tmp_path, shutdown_with_deadline):
    launcher = _SubmitFails(2, output_dir=tmp_path)
    ex = ClusterExecutor(launcher, **FAST)
    try:
        assert launcher.failures and "Invalid partition" in launcher.failures[-1].output
        assert list(tmp_path.glob("*.sh")) == []  # it held the key
    finally:
        shutdown_with_deadline(ex)
    assert list(tmp_path.glob("*.sh")) == []


def test_a_submitted_job_script_is_removed_at_once(tmp_path, shutdown_with_deadline):
    # a "scheduler" that records the script it was given, as sbatch copies it
    copies = tmp_path / "spool"
    copies.mkdir()

    class Recording(SlurmWorkers):
        def submit_argv(self, script):
            code = f"import shutil, sys; shutil.copy({str(script)!r}, {str(copies)!r}); print('4242')"
            return [sys.executable, "-c", code]

        def query(self, jobs):
            return {}

    out = tmp_path / "jobs"
    launcher = Recording(2, output_dir=out, start_timeout=60)
    ex = ClusterExecutor(launcher, **FAST)
    try:
        assert launcher.jobs == ["4242"]
        assert [p.name for p in copies.iterdir()] == ["impexec-1.sh"]
        assert "IMPEXEC_CONNECTION" in (copies / "impexec-1.sh").read_text()
        assert list(out.glob("*.sh")) == []
    finally:
        launcher.cancel_argv = lambda keys: [sys.executable, "-c", "pass"]
        shutdown_with_deadline(ex)
