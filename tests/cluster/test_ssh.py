"""SSHWorkers against a real sshd on 127.0.0.1:2222 (start it with ``ci/cluster-up.sh``)."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

import impexec
from cluster.cluster_checks import HEARTBEAT, SCHEDULER_WAIT, where_am_i
from impexec import SSHWorkers
from waiting import wait_until

pytestmark = pytest.mark.cluster


TESTS_DIR = str(Path(__file__).resolve().parent.parent)


def ssh_workers(ssh_host, **options):
    # ssh passes no environment: env= gives the remote worker the task modules' path
    return SSHWorkers(
        [ssh_host.destination],
        port=ssh_host.port,
        identity=ssh_host.identity_file,
        ssh_options=ssh_host.options,
        env={"PYTHONPATH": TESTS_DIR},
        **options,
    )


def remote_workers(launcher):
    """Worker processes (not our children: sshd started them) carrying the launcher's tags."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or ())
        if "impexec worker" in cmdline and launcher._prefix in cmdline and "ssh " not in cmdline:
            found.append(p)
    return found


def test_map_over_ssh_and_no_remote_worker_survives_shutdown(ssh_host, make_executor, shutdown_with_deadline):
    launcher = ssh_workers(ssh_host, processes=2)
    ex = make_executor(launcher, **HEARTBEAT)
    results = list(ex.map(where_am_i, range(40), timeout=SCHEDULER_WAIT))
    assert [r[0] for r in results] == [x * x for x in range(40)]
    wait_until(lambda: ex.statistics().workers == 2, SCHEDULER_WAIT, "both ssh workers")
    pids = {p.pid for p in remote_workers(launcher)}
    assert len(pids) == 2
    assert not pids & {c.pid for c in psutil.Process().children(recursive=True)}
    shutdown_with_deadline(ex)
    wait_until(lambda: not remote_workers(launcher), 15, "the remote workers to exit")


def test_closing_the_ssh_session_ends_the_remote_worker(ssh_host, make_executor, shutdown_with_deadline):
    launcher = ssh_workers(ssh_host)
    ex = make_executor(launcher, **HEARTBEAT)
    assert ex.submit(pow, 2, 5).result(timeout=SCHEDULER_WAIT) == 32
    [remote] = remote_workers(launcher)
    [proc] = launcher.processes()
    proc.kill()  # the local ssh dies: the remote side sees its stdin close
    wait_until(
        lambda: not remote.is_running() or remote.status() == psutil.STATUS_ZOMBIE,
        15,
        "the remote worker to exit",
    )
    # the launcher notices and starts a replacement, which gets the next task
    assert ex.submit(pow, 2, 6).result(timeout=SCHEDULER_WAIT) == 64
    shutdown_with_deadline(ex)


def test_a_worker_that_cannot_start_over_ssh_is_a_worker_start_error(
    ssh_host, make_executor, shutdown_with_deadline
):
    launcher = ssh_workers(ssh_host, python="/nonexistent/python")
    ex = make_executor(launcher, **HEARTBEAT)
    err = ex.submit(pow, 2, 10).exception(timeout=SCHEDULER_WAIT)
    assert isinstance(err, impexec.WorkerStartError), err
    assert "/nonexistent/python" in err.output
    shutdown_with_deadline(ex)


def test_the_key_is_not_on_any_command_line(ssh_host, make_executor, shutdown_with_deadline):
    launcher = ssh_workers(ssh_host)
    ex = make_executor(launcher, **HEARTBEAT)
    assert ex.submit(pow, 3, 2).result(timeout=SCHEDULER_WAIT) == 9
    key = ex._conn.key.hex()
    for p in psutil.process_iter(["cmdline"]):
        assert key not in " ".join(p.info["cmdline"] or ()), p
    assert os.path.exists(ex.connection_file())
    shutdown_with_deadline(ex)
