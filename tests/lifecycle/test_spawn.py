"""Worker processes are started in one place: what a respawn resets holds for every
launcher, and every launcher builds the same worker command line.

The launchers here run real processes. An ``ssh`` stand-in (``ssh=`` is a parameter of
SSHWorkers) keeps a session open until its stdin closes, as ssh does, without a host;
a small host object plays the executor (which workers count as connected), so the test
can declare a worker lost at will.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import pytest

from impexec import LocalWorkers, SGEWorkers, SlurmWorkers, SSHWorkers
from impexec._connection import ConnectionInfo
from impexec.launchers import local
from processes import start_worker
from waiting import wait_until

#: ``ssh`` that ignores its arguments and lives until its stdin closes (like a session).
FAKE_SSH = (sys.executable, "-c", "import sys\nwhile sys.stdin.buffer.read(65536): pass")


class Host:
    """The executor as a launcher sees it; the test says who is connected."""

    def __init__(self, tmp_path: Path):
        self.connection = ConnectionInfo("tcp://127.0.0.1:9", os.urandom(32), os.urandom(8))
        self.connection_file = self.connection.write(tmp_path / "connection.json")
        self.local_connection_file = self.connection_file
        self.connected: set[str] = set()
        self.ever: set[str] = set()
        self.exited: list[tuple[str, str]] = []
        self.shutting_down = False

    def connect(self, tag: str) -> None:
        self.connected.add(tag)
        self.ever.add(tag)

    def is_connected(self, tag: str) -> bool:
        return tag in self.connected

    def ever_connected(self, tag: str) -> bool:
        return tag in self.ever

    def worker_exited(self, tag: str, why: str) -> None:
        self.exited.append((tag, why))


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_a_respawned_worker_declared_lost_gets_its_grace_period(tmp_path, kind):
    if kind == "ssh":
        launcher = SSHWorkers(["node1"], ssh=FAKE_SSH, echo_stderr=False)
    else:  # a local "worker" that waits like one, whatever it is told
        launcher = LocalWorkers(
            1, python=[sys.executable, "-c", "import time; time.sleep(600)", "--"], echo_stderr=False
        )
    host = Host(tmp_path)
    launcher.start(host)
    try:
        slot = launcher._slots[0]
        first = slot.proc
        host.connect(slot.tag)
        launcher.poll()
        host.connected.clear()  # declared lost: it may take DISMISS_GRACE_S to leave
        launcher.poll()
        assert first.poll() is None  # within its grace period
        first.kill()  # it died meanwhile; the launcher replaces it
        first.wait(10)
        wait_until(
            lambda: (launcher.poll(), slot.proc is not None and slot.proc is not first)[1],
            10,
            "the launcher to replace the killed worker",
        )
        second = slot.proc
        time.sleep(local.DISMISS_GRACE_S + 0.3)  # the first dismissal is long past
        host.connect(slot.tag)
        launcher.poll()
        host.connected.clear()  # the replacement is declared lost in its turn
        launcher.poll()
        time.sleep(0.2)
        assert second.poll() is None, "the replacement was killed without a grace period"
        time.sleep(local.DISMISS_GRACE_S)
        launcher.poll()  # now it has had its grace period: killed
        assert second.wait(10) is not None
    finally:
        launcher.stop(5)


def test_every_launcher_runs_the_same_worker_command(tmp_path):
    host = Host(tmp_path)
    lw = LocalWorkers(1, python=["/opt/py/bin/python3"])
    lw.host = host
    ssh = SSHWorkers(["node1"], python="/opt/py/bin/python3")
    slurm = SlurmWorkers(1, python="/opt/py/bin/python3", output_dir=tmp_path)
    sge = SGEWorkers(1, python="/opt/py/bin/python3", output_dir=tmp_path)
    worker = ["/opt/py/bin/python3", "-m", "impexec", "worker", "--connect"]
    assert lw.worker_command("t1")[:5] == worker
    assert lw.worker_command("t1")[5:] == [str(host.connection_file), "--exit-with-stdin", "--tag", "t1"]
    remote = shlex.split(ssh.remote_command("t2"))
    assert remote == ["exec", *worker, "-", "--exit-with-stdin", "--tag", "t2"]
    for batch in (slurm, sge):
        line = batch.worker_line("$TAG")
        assert line.startswith("exec " + shlex.join([*worker, "-"]) + " --tag")


def test_a_supervisor_obeys_sigterm_while_a_replacement_waits_its_backoff(shutdown_with_deadline, tmp_path):
    # impexec-worker --processes slept through a replacement's backoff (up to 30 s), so a
    # SIGTERM (or another child's death) waited for it
    import signal
    import subprocess

    import psutil

    from impexec import ClusterExecutor

    ex = ClusterExecutor(None, heartbeat_interval=0.1, heartbeat_timeout=2.0)
    log = tmp_path / "supervisor.log"
    with open(log, "wb") as err:
        sup = start_worker(ex.connection_file(), "--processes", "2", stdin=subprocess.DEVNULL, stderr=err)
    try:
        wait_until(lambda: ex.statistics().workers == 2, 60, "the supervisor's 2 workers")

        def slot_of(kid: psutil.Process) -> str | None:
            # a worker's tag ends in -<slot>-<generation>; a child just forked still
            # shows the supervisor's command line until it has exec'd
            try:
                parts = kid.cmdline()[-1].split("-")
            except (psutil.Error, IndexError):
                return None
            return parts[-2] if len(parts) >= 3 else None

        def slot0() -> psutil.Process:  # the child of slot 0, once both children run
            def find() -> psutil.Process | None:
                kids = psutil.Process(sup.pid).children()
                found = [k for k in kids if slot_of(k) == "0"]
                return found[0] if len(kids) == 2 and len(found) == 1 else None

            kid: psutil.Process = wait_until(find, 30, "slot 0's worker process")
            return kid

        for _ in range(4):  # crash slot 0 again and again: its backoff grows each time
            kid = slot0()
            kid.kill()
            kid.wait(10)
            try:
                wait_until(lambda: len(psutil.Process(sup.pid).children()) == 2, 30, "a replacement")
            except AssertionError:
                raise AssertionError(f"no replacement; the supervisor said:\n{log.read_text()}") from None
        slot0().kill()  # its next replacement waits the longest backoff yet (seconds)
        # the supervisor has seen that fifth death and is waiting out the backoff
        wait_until(
            lambda: log.read_text().count("worker process 0 exited") >= 5,
            30,
            "the fifth replacement to be due",
        )
        t = time.monotonic()
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=20) == 0
        assert time.monotonic() - t < 2.0, "SIGTERM waited for the backoff"
    finally:
        if sup.poll() is None:
            for kid in psutil.Process(sup.pid).children():
                kid.kill()
            sup.kill()
        sup.wait(10)
        shutdown_with_deadline(ex)


def test_a_child_that_dies_before_taking_its_connection_is_an_exited_child(tmp_path):
    # handing the connection over raised BrokenPipeError when the child was already gone
    # (killed right after its start, or an interpreter that fails at once): it took the
    # whole ``impexec worker --processes`` supervisor down instead of being a child that
    # exited, replaced after its backoff like any other
    from impexec.launchers._process import WorkerProcess

    # more than a pipe holds: the write blocks until the child exits without reading it
    proc = WorkerProcess(
        [sys.executable, "-c", "import sys; sys.stderr.write('gone early\\n'); sys.exit(3)"],
        stdin=b"x" * (4 << 20),
    )
    try:
        assert proc.wait(timeout=30) == 3
        proc.join_reader(5)
        assert "gone early" in proc.output()
    finally:
        proc.close_stdin()
