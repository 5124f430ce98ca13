"""A worker's ways out do not depend on its stdio, and it cleans only what is certainly
an orphaned executor's private directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from impexec import ClusterExecutor
from impexec._connection import ConnectionInfo, lock_private_dir, remove_orphaned_private_dir
from processes import Lines, end_process, start_worker
from waiting import wait_until

#: Seconds a client in a subprocess may take to start and see its workers join (its own
#: waits take up to 60 s).
START_S = 90.0


def _worker_count_is(ex: ClusterExecutor, n: int, timeout: float = 60.0) -> None:
    wait_until(lambda: ex.statistics().workers == n, timeout, f"{n} worker(s) connected")


def _worker(connection_file: str, *extra: str) -> subprocess.Popen[bytes]:
    return start_worker(
        connection_file, *extra, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def test_exit_with_stdin_exits_when_stdin_and_stderr_are_gone(shutdown_with_deadline):
    # as when the ssh session (or supervising impexec-worker) that held both ends died:
    # the "standard input closed" notice cannot be written, the worker must leave anyway
    ex = ClusterExecutor(None, heartbeat_interval=0.2, heartbeat_timeout=3.0)
    worker = _worker(ex.connection_file(), "--exit-with-stdin")
    try:
        _worker_count_is(ex, 1)
        worker.stderr.close()
        worker.stdin.close()
        assert worker.wait(timeout=10) == 5
        _worker_count_is(ex, 0, timeout=30)  # and the broker stops counting it
    finally:
        end_process(worker)
        shutdown_with_deadline(ex)


CLIENT = """
import sys, time
from impexec import ClusterExecutor
ex = ClusterExecutor(None, heartbeat_interval=0.05, heartbeat_timeout=0.5)
print(ex.connection_file(), flush=True)
while ex.statistics().workers < int(sys.argv[1]):
    time.sleep(0.02)
print("joined", flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def _client_with_worker(
    n_joined: int, *worker_extra: str
) -> Iterator[tuple[subprocess.Popen[str], Any, Path]]:
    """CLIENT in a subprocess and ``impexec worker WORKER_EXTRA`` connected to it; yields
    (client, worker, connection file) once the client has seen *n_joined* workers.

    At the end both processes are ended and the client's private directory is removed if
    it is still there.
    """
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(n_joined)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    out = Lines(client.stdout, "client's output")
    worker = None
    connection_file = Path("/nonexistent")
    try:
        connection_file = Path(out.next(START_S).strip())
        worker = _worker(str(connection_file), *worker_extra)
        assert out.next(START_S).strip() == "joined"
        yield client, worker, connection_file
    finally:
        if worker is not None:
            end_process(worker)
        end_process(client, out)
        if connection_file.parent.name.startswith("impexec-"):
            shutil.rmtree(connection_file.parent, ignore_errors=True)


def test_worker_exits_when_its_client_is_killed_and_its_stderr_is_gone():
    # the client was killed: the pipe that read the worker's stderr died with it, so the
    # heartbeat thread's "no heartbeat" notice cannot be written; the worker must leave
    # anyway, and take the client's private directory (socket, key) with it
    with _client_with_worker(1) as (client, worker, connection_file):
        worker.stderr.close()
        client.kill()
        client.wait(10)
        assert worker.wait(timeout=10) == 5
        assert not connection_file.parent.exists()


def test_a_supervisor_whose_client_is_killed_removes_its_private_dir():
    # impexec-worker --processes: the children read the connection from stdin and cannot
    # tell where it came from; the supervisor, which was given the file, cleans up
    with _client_with_worker(2, "--processes", "2") as (client, supervisor, connection_file):
        client.kill()
        client.wait(10)
        assert supervisor.wait(timeout=20) == 0
        assert not connection_file.parent.exists()


# -- removing an orphaned private directory ------------------------------------------------
def _private_dir(listening: bool) -> tuple[Path, socket.socket | None]:
    """A directory laid out as an executor's; its socket listening or left behind."""
    folder = Path(tempfile.mkdtemp(prefix="impexec-"))
    ConnectionInfo("tcp://127.0.0.1:1", os.urandom(32)).write(folder / "connection.json")
    ConnectionInfo("ipc://x", os.urandom(32)).write(folder / "connection-local.json")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(folder / "broker.sock"))
    if listening:
        s.listen()
        return folder, s
    s.close()  # the file stays, nobody listens: as after the executor was killed
    return folder, None


@pytest.fixture
def private_dir():
    made: list[tuple[Path, socket.socket | None]] = []

    def make(listening: bool = False) -> Path:
        made.append(_private_dir(listening))
        return made[-1][0]

    yield make
    for folder, s in made:
        if s is not None:
            s.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_an_orphaned_private_dir_is_removed(private_dir):
    folder = private_dir()
    assert remove_orphaned_private_dir(folder / "connection-local.json")
    assert not folder.exists()
    assert not remove_orphaned_private_dir(folder / "connection-local.json")  # gone already


def test_a_live_executors_dir_stays(private_dir):
    folder = private_dir(listening=True)
    assert not remove_orphaned_private_dir(folder / "connection.json")
    assert sorted(p.name for p in folder.iterdir()) == [
        "broker.sock",
        "connection-local.json",
        "connection.json",
    ]


def test_a_dir_whose_lock_is_held_stays(private_dir):
    # an executor without a Unix socket (remote workers only): its lock tells it lives
    folder = private_dir()
    (folder / "broker.sock").unlink()
    lock = lock_private_dir(folder)  # as the executor holds it
    try:
        assert not remove_orphaned_private_dir(folder / "connection.json")
        assert (folder / "connection.json").exists()
    finally:
        os.close(lock)
    assert remove_orphaned_private_dir(folder / "connection.json")  # its process ended
    assert not folder.exists()


def test_a_dir_with_other_files_stays(private_dir):
    folder = private_dir()
    (folder / "results.csv").write_text("precious\n")
    assert not remove_orphaned_private_dir(folder / "connection.json")
    assert (folder / "connection.json").exists()
    assert (folder / "results.csv").read_text() == "precious\n"


def test_a_dir_not_made_by_an_executor_stays(private_dir, tmp_path):
    folder = private_dir()
    folder.chmod(0o755)  # an executor's is 0700
    assert not remove_orphaned_private_dir(folder / "connection.json")
    assert folder.exists()
    folder.chmod(0o700)
    other = tmp_path / "impexec-mine"  # right name, but not in the temporary directory
    other.mkdir(mode=0o700)
    ConnectionInfo("tcp://127.0.0.1:1", os.urandom(32)).write(other / "connection.json")
    assert not remove_orphaned_private_dir(other / "connection.json")
    assert (other / "connection.json").exists()
    plain = Path(tempfile.mkdtemp(prefix="results-"))  # in the temporary directory
    try:
        ConnectionInfo("tcp://127.0.0.1:1", os.urandom(32)).write(plain / "connection.json")
        assert not remove_orphaned_private_dir(plain / "connection.json")
        assert (plain / "connection.json").exists()
    finally:
        shutil.rmtree(plain)


LOCAL_CLIENT = """
import sys, time
from impexec import ClusterExecutor
ex = ClusterExecutor(1, heartbeat_interval=1.0, heartbeat_timeout=120.0)
assert ex.submit(input).exception(timeout=60) is not None  # EOFError, not a wait
print(ex._broker.call(lambda: [w.info["pid"] for w in ex._scheduler.workers.values()])[0],
      ex._tmpdir, flush=True)
time.sleep(600)
"""


def test_local_workers_leave_at_once_when_their_client_is_killed():
    # not after heartbeat_timeout (120 s here): their stdin closes with the client
    import psutil

    client = subprocess.Popen(
        [sys.executable, "-c", LOCAL_CLIENT], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    out = Lines(client.stdout, "client's output")
    worker = None
    try:
        pid, tmpdir = out.next(START_S).split()
        worker = psutil.Process(int(pid))
        client.kill()
        client.wait(10)
        worker.wait(timeout=20)
        wait_until(lambda: not Path(tmpdir).exists(), 5, f"{tmpdir} to be removed")
    finally:
        end_process(client, out)
        if worker is not None and worker.is_running():
            worker.kill()
