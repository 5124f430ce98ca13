"""A client program ended from outside leaves nothing behind.

Each test runs tests/lifecycle/client.py in a subprocess (its own session, as a program
started from a shell), lets it reach a moment (idle, mid-``map``, a context's setup
running, inside ``shutdown``) and sends it SIGKILL, SIGTERM, SIGINT or SIGHUP, as
``kill``, ``timeout``, Ctrl-C, a closed terminal, a job's time limit or the OOM killer
would. Then, within the executor's ``heartbeat_timeout`` plus a margin:

* no process of the client's tree, and no worker the broker knew, is alive;
* the executor's private directory (socket, connection file with the key) is gone;
* with Slurm or Grid Engine workers, no job of the run is left in squeue / qstat and no
  job script (it holds the key) is left in the job directory.

Whatever the outcome, the test kills what is left before it fails, so one broken case
does not leave workers running for the rest of the suite.

Set ``IMPEXEC_LIFECYCLE_REPORT=FILE`` to append one JSON line per case (signal, moment,
seconds from the signal until the last worker exited, files left): the table in
docs/fault-tolerance.md comes from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from cluster.conftest import qstat_jobs, squeue_jobs, wait_no_jobs
from processes import Lines, end_process, start_worker

CLIENT = Path(__file__).with_name("client.py")
HEARTBEAT_TIMEOUT = 1.5  # client.py's
#: Seconds beyond heartbeat_timeout that the last worker may take to exit: the heartbeat
#: thread's poll period and process teardown, on a machine shared with other test runs.
MARGIN = 4.0
#: Seconds the client may take to start its executor and see its workers connect.
START_TIMEOUT = 90.0

SIGNALS = {
    "SIGKILL": signal.SIGKILL,
    "SIGTERM": signal.SIGTERM,
    "SIGINT": signal.SIGINT,
    "SIGHUP": signal.SIGHUP,
}
MOMENTS = ["idle", "map", "context", "shutdown"]
#: Seconds after a first Ctrl-C (SIGINT) at which an impatient user presses it again.
CTRL_C_AGAIN = 1.0


@dataclass
class Run:
    """One client process and everything it started that the test keeps track of."""

    proc: subprocess.Popen[str]
    markers: Path
    info: dict[str, Any] = field(default_factory=dict)
    tracked: dict[int, float] = field(default_factory=dict)  # pid -> create time
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)  # impexec-worker
    out: Lines | None = None  # the client's stdout

    def track(self, pid: int | None, *, tree: bool = True) -> None:
        if not pid:
            return
        try:
            p = psutil.Process(pid)
            procs = [p, *p.children(recursive=True)] if tree else [p]
        except psutil.Error:
            return
        for q in procs:
            with contextlib.suppress(psutil.Error):
                self.tracked[q.pid] = q.create_time()

    def alive(self) -> list[str]:
        left = []
        for pid, created in self.tracked.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() != created or p.status() == psutil.STATUS_ZOMBIE:
                    continue
                left.append(f"{pid} {' '.join(p.cmdline())[:160]}")
            except psutil.Error:
                continue
        return left

    def kill_all(self) -> None:
        for pid, created in self.tracked.items():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.create_time() == created:
                    p.kill()
        for p in [self.proc, *self.extra]:
            with contextlib.suppress(OSError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
        for p in self.extra:
            end_process(p)
        end_process(self.proc, *([self.out] if self.out else []))


def _readline(run: Run, timeout: float) -> str:
    """The client's next line of stdout; if it exited instead, what it said on stderr."""
    assert run.out is not None
    try:
        return str(run.out.next(timeout)).strip()
    except AssertionError as exc:
        if not run.out.ended:
            raise
        err = run.proc.stderr.read() if run.proc.stderr else ""
        raise RuntimeError(f"the client exited ({run.proc.wait(10)}) early:\n{err[-3000:]}") from exc


def _start_cli_workers(run: Run) -> None:
    """impexec-worker processes, as a user starts them from another terminal: one
    supervising two children (``--processes 2``), and one plain worker."""
    conn = run.info["connection_file"]
    for extra in (["--processes", "2"], []):
        p = start_worker(
            conn,
            *extra,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        run.extra.append(p)
        run.track(p.pid)


def _exited(proc: subprocess.Popen[str], timeout: float) -> bool:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def _gone_within(run: Run, start: float, timeout: float) -> tuple[float, list[str]]:
    """Wait until no tracked process is alive, up to *timeout* seconds from *start*."""
    while True:
        left = run.alive()
        elapsed = time.monotonic() - start
        if not left or elapsed > timeout:
            return elapsed, left
        time.sleep(0.05)


def _files_left(run: Run, job_dir: Path | None) -> list[str]:
    left = []
    tmpdir = Path(run.info["tmpdir"] or "/nonexistent")
    if tmpdir.exists():
        left += [str(tmpdir), *map(str, tmpdir.iterdir())]
    if job_dir is not None:
        left += [str(p) for p in job_dir.rglob("*.sh")]
    return left


def _report(case: dict[str, Any]) -> None:
    path = os.environ.get("IMPEXEC_LIFECYCLE_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(case) + "\n")


def end_client(
    tmp_path: Path,
    workers: str,
    moment: str,
    signame: str,
    *,
    job_name: str = "impexec",
    n: int = 2,
    list_jobs: Any = None,
    env: dict[str, str] | None = None,
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    job_dir = tmp_path / "jobs"
    env = {**os.environ, "IMPEXEC_JOB_DIR": str(job_dir), **(env or {})}
    cmd = [
        sys.executable,
        str(CLIENT),
        "--workers",
        workers,
        "--moment",
        moment,
        "--markers",
        str(markers),
        "--job-name",
        job_name,
        "--n",
        str(n),
    ]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    run = Run(proc, markers)
    run.out = Lines(proc.stdout, "client's output")
    try:
        run.info = json.loads(_readline(run, START_TIMEOUT))
        run.track(proc.pid)
        if workers == "cli":
            _start_cli_workers(run)
        run.info.update(json.loads(_readline(run, START_TIMEOUT)))
        for pid in run.info["worker_pids"]:
            run.track(pid, tree=False)
        assert _readline(run, START_TIMEOUT) == "READY"
        run.track(proc.pid)  # replacements and helpers started meanwhile
        for p in run.extra:
            run.track(p.pid)
        # the client, its workers, and a supervising impexec-worker
        assert len(run.tracked) >= 1 + n + (workers == "cli"), run.tracked
        # the client leads its own process group, as a shell's job does: a terminal
        # sends Ctrl-C (SIGINT) and its hang-up (SIGHUP) to the whole group
        signalled = time.monotonic()
        os.killpg(proc.pid, SIGNALS[signame])
        if signame == "SIGINT" and not _exited(proc, CTRL_C_AGAIN):
            # Ctrl-C lets the running tasks finish, as the standard pools do at exit
            # (a context's setup here runs for minutes): the user presses it again
            os.killpg(proc.pid, signal.SIGINT)
        elapsed, left = _gone_within(run, signalled, HEARTBEAT_TIMEOUT + MARGIN)
        jobs_left = []
        if list_jobs is not None:
            jobs_left = [str(j) for j in wait_no_jobs(list_jobs, job_name, timeout=30)]
        files = _files_left(run, job_dir if workers in ("slurm", "sge") else None)
        _report(
            {
                "workers": workers,
                "moment": moment,
                "signal": signame,
                "seconds": round(elapsed, 2),
                "processes_left": len(left),
                "files_left": files,
                "jobs_left": jobs_left,
                "client_exit": proc.poll(),
            }
        )
        assert not left, f"{len(left)} process(es) still alive {elapsed:.1f} s after {signame}: {left}"
        assert not files, f"left behind: {files}"
        assert not jobs_left, f"jobs left in the queue: {jobs_left}"
    finally:
        run.kill_all()
        tmpdir = run.info.get("tmpdir")
        if tmpdir and Path(tmpdir).name.startswith("impexec-"):
            import shutil

            shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("signame", list(SIGNALS))
def test_local_workers(tmp_path, signame, moment):
    end_client(tmp_path, "local", moment, signame)


@pytest.mark.parametrize(
    ("signame", "moment"),
    [("SIGKILL", "idle"), ("SIGKILL", "map"), ("SIGTERM", "context"), ("SIGHUP", "idle"), ("SIGINT", "map")],
)
def test_impexec_worker_processes(tmp_path, signame, moment):
    end_client(tmp_path, "cli", moment, signame, n=3)


@pytest.mark.cluster
@pytest.mark.parametrize(("signame", "moment"), [("SIGKILL", "map"), ("SIGHUP", "context")])
def test_ssh_workers(tmp_path, ssh_host, signame, moment):
    # the remote workers are sshd's children, not the client's: the broker's pids track them
    ssh = {
        "destination": ssh_host.destination,
        "port": ssh_host.port,
        "identity": ssh_host.identity_file,
        "options": list(ssh_host.options),
    }
    end_client(tmp_path, "ssh", moment, signame, env={"LIFECYCLE_SSH": json.dumps(ssh)})


@pytest.mark.cluster
@pytest.mark.parametrize(("signame", "moment"), [("SIGKILL", "map"), ("SIGTERM", "idle")])
def test_slurm_workers(tmp_path, slurm_cluster, job_name_prefix, signame, moment):
    end_client(tmp_path, "slurm", moment, signame, job_name=job_name_prefix, list_jobs=squeue_jobs)


@pytest.mark.cluster
@pytest.mark.parametrize(("signame", "moment"), [("SIGKILL", "map"), ("SIGTERM", "idle")])
def test_sge_workers(tmp_path, sge_cluster, job_name_prefix, signame, moment):
    end_client(tmp_path, "sge", moment, signame, job_name=job_name_prefix, list_jobs=qstat_jobs)
