"""Fixtures for the tests that need a real Slurm, Grid Engine or SSH host.

The services run on the local machine, started (as root) by ``ci/cluster-up.sh``::

    sudo bash ci/cluster-up.sh up          # all three; or: up slurm | up sge | up ssh
    sudo bash ci/cluster-up.sh status
    sudo bash ci/cluster-up.sh down

Each fixture probes its service once per session (``sinfo`` / ``qstat -f`` / an ``ssh``
BatchMode login, each with a timeout) and skips the test when the service is not
usable, naming the command that starts it.  When the script's readiness marker
(/run/impexec-cluster/ready) exists and does not list a service, the fixture skips at
once, without a probe.  With ``IMPEXEC_REQUIRE_CLUSTER=1`` (or a
comma list such as ``slurm,ssh``) a missing service fails the test instead, so that CI
cannot pass by skipping.

Tests using these fixtures carry ``@pytest.mark.cluster``.

Fixtures:
    ``slurm_cluster``   -> :class:`SlurmCluster`  (session scope)
    ``sge_cluster``     -> :class:`SgeCluster`    (session scope)
    ``ssh_host``        -> :class:`SshHost`       (session scope)
    ``job_name_prefix`` -> ``str``, unique per test, to name the jobs a test submits

Helpers (plain functions; also ``slurm_cluster.jobs()`` / ``sge_cluster.jobs()``):
    ``squeue_jobs(name_prefix)`` / ``qstat_jobs(name_prefix)`` -> the live jobs, as
    :class:`SchedulerJob`; ``wait_no_jobs(list_jobs, name_prefix, timeout)``.

What a launcher must know about these schedulers (seen on the CI machine):
    * Grid Engine job shells are login shells (root's ~/.profile runs and sets PATH):
      submit an absolute interpreter path (``sys.executable``).
    * ``qsub -b y CMD ARG...`` hands ``CMD ARG...``, joined by spaces, to that shell,
      which parses it again: ``qsub -b y python3 -c 'print(1)'`` dies with a bash syntax
      error.  Quote each argument (``shlex.join``), or submit with ``-shell no`` (then
      the command is exec'd directly, with execd's bare PATH).
    * ``qdel`` sends SIGKILL at once (no SIGTERM grace).  ``scancel`` sends SIGTERM,
      then SIGKILL ``KillWait`` (5 s) later.
    * ``squeue`` hides finished jobs unless ``-t all``, even with ``--jobs=ID``, and
      ``-j ID`` does not filter (``-j`` takes an optional argument): use ``--jobs=ID``.
    * ``qstat``'s table truncates job names to 10 characters (use ``-xml``); finished
      SGE jobs vanish from ``qstat`` at once (``qacct -j ID`` knows them).
"""

from __future__ import annotations

import dataclasses
import getpass
import itertools
import os
import pwd
import re
import shlex
import shutil
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

SCRIPT = "ci/cluster-up.sh"
READY_FILE = Path(os.environ.get("IMPEXEC_CLUSTER_READY", "/run/impexec-cluster/ready"))
PROBE_TIMEOUT = 15.0  # s, one probe (sinfo needs ~9 s to give up on a dead slurmctld)
QUERY_TIMEOUT = 20.0  # s, one squeue / qstat query

# sinfo %T: "idle", "mixed", ...; "idle*" = not responding; "idle+drain" etc. = flags
_SLURM_OK_STATES = {"idle", "mixed", "allocated", "completing"}
_SLURM_BAD_FLAGS = {"drain", "draining", "fail", "failing", "maint", "power_down"}


# --------------------------------------------------------------------------------------
# what the fixtures return
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SchedulerJob:
    """One live job (or array task) as the scheduler lists it."""

    job_id: str  # Slurm: "12", "12_3"; SGE: "7", or "7.3" for array task 3
    name: str
    state: str  # Slurm: PENDING, RUNNING, COMPLETING...; SGE: qw, t, r, dr, Eqw...


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """A usable Slurm controller; ``sbatch``, ``squeue``, ... on PATH talk to it."""

    partition: str  # the default partition ("debug" with ci/cluster-up.sh)
    cpus: int  # CPUs of the node (4 by default, oversubscribing a 2-core machine)
    nodes: str = "localhost"  # sinfo's node list of that partition

    def jobs(self, name_prefix: str = "") -> list[SchedulerJob]:
        """The live jobs whose name starts with ``name_prefix``."""
        return squeue_jobs(name_prefix)


@dataclasses.dataclass(frozen=True)
class SgeCluster:
    """A usable Grid Engine cell; ``qsub``, ``qstat``, ... on PATH talk to it."""

    queue: str  # "all.q" with ci/cluster-up.sh
    slots: int  # slots of the queue instance (4 by default)
    host: str = "localhost"  # the execution host, as SGE names it

    def jobs(self, name_prefix: str = "") -> list[SchedulerJob]:
        """The live jobs whose name starts with ``name_prefix``."""
        return qstat_jobs(name_prefix)


@dataclasses.dataclass(frozen=True)
class SshHost:
    """What an SSH launcher needs to reach the test sshd.

    ``ssh -i IDENTITY_FILE -p PORT *OPTIONS USER@HOST COMMAND`` runs COMMAND without
    tty, password or host-key prompt; ``argv(COMMAND...)`` builds exactly that.  As
    with any ssh, the remote shell parses the joined COMMAND again: quote it
    (``shlex.join``).
    """

    host: str  # "127.0.0.1"
    port: int  # 2222
    user: str  # "root"
    identity_file: str  # "/root/.ssh/impexec_ci_ed25519"
    options: tuple[str, ...]  # extra ssh options: ("-o", "BatchMode=yes", ...)
    alias: str | None = None  # "impexec-ci": Host entry in ~/.ssh/config with all this

    @property
    def destination(self) -> str:
        """``USER@HOST``."""
        return f"{self.user}@{self.host}"

    @property
    def ssh_args(self) -> list[str]:
        """All ssh arguments except the destination and the command."""
        return ["-i", self.identity_file, "-p", str(self.port), *self.options]

    def argv(self, *command: str) -> list[str]:
        """``["ssh", *ssh_args, destination, *command]``."""
        return ["ssh", *self.ssh_args, self.destination, *command]


SSH_OPTIONS: tuple[str, ...] = (
    "-o", "BatchMode=yes",
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "IdentitiesOnly=yes",
    "-o", "ConnectTimeout=10",
)  # fmt: skip


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command and capture its output (raises OSError, TimeoutExpired)."""
    return subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _query(argv: Sequence[str], timeout: float) -> str:
    """stdout of a scheduler query; RuntimeError if it fails or times out."""
    try:
        proc = _run(argv, timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{shlex.join(argv)}: {exc}") from exc
    if proc.returncode != 0:
        err = proc.stderr.strip()
        raise RuntimeError(f"{shlex.join(argv)} exited {proc.returncode}: {err}")
    return proc.stdout


def _probe(argv: Sequence[str], timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """(True, stdout) if the probe command succeeds, else (False, reason)."""
    if shutil.which(argv[0]) is None:
        return False, f"`{argv[0]}` is not installed"
    try:
        proc = _run(argv, timeout)
    except subprocess.TimeoutExpired:
        return False, f"`{shlex.join(argv)}` timed out after {timeout:g} s"
    except OSError as exc:
        return False, f"`{shlex.join(argv)}` failed: {exc}"
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip()[-300:]
        return False, f"`{shlex.join(argv)}` exited {proc.returncode}: {out}"
    return True, proc.stdout


def read_ready_marker(path: Path = READY_FILE) -> dict[str, str]:
    """The ``key=value`` lines of ci/cluster-up.sh's readiness marker ({} if none).

    A hint only (it can outlive the daemons): the fixtures probe the services.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in lines if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _required(service: str) -> bool:
    req = os.environ.get("IMPEXEC_REQUIRE_CLUSTER", "").strip().lower()
    if req in ("", "0", "no", "false"):
        return False
    if req in ("1", "yes", "true", "all"):
        return True
    return service in {s.strip() for s in req.split(",")}


def _marked_down(service: str) -> bool:
    """ci/cluster-up.sh manages this machine and its marker says ``service`` is down.

    Saves the ~9 s that sinfo takes to give up when slurmctld is not running.
    """
    return READY_FILE.is_file() and service not in read_ready_marker()


def _unavailable(service: str, what: str, reason: str) -> None:
    msg = f"{what} not running: start it with `sudo bash {SCRIPT} up {service}`"
    msg = f"{msg} ({reason})"
    if _required(service):
        pytest.fail(f"IMPEXEC_REQUIRE_CLUSTER is set, but {msg}", pytrace=False)
    pytest.skip(msg)


def squeue_jobs(name_prefix: str = "", timeout: float = QUERY_TIMEOUT) -> list[SchedulerJob]:
    """Live Slurm jobs of any user whose name starts with ``name_prefix``.

    Live: what ``squeue`` lists without ``-t`` (pending, running, completing,
    suspended, ...), array tasks one per entry.  Raises ``RuntimeError`` when squeue
    fails, so that "no job left" is never concluded from a failed query.
    """
    out = _query(["squeue", "--noheader", "--all", "--array", "--format=%i\t%T\t%j"], timeout)
    jobs = []
    for line in out.splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[2].startswith(name_prefix):
            jobs.append(SchedulerJob(job_id=parts[0], state=parts[1], name=parts[2]))
    return jobs


def qstat_jobs(name_prefix: str = "", timeout: float = QUERY_TIMEOUT) -> list[SchedulerJob]:
    """Live Grid Engine jobs of any user whose name starts with ``name_prefix``.

    Live: pending, running, or being deleted; array tasks one per entry.  Uses
    ``qstat -xml`` (the table truncates names).  Raises ``RuntimeError`` when qstat
    fails.
    """
    out = _query(["qstat", "-u", "*", "-xml", "-g", "d"], timeout)
    try:
        root = ET.fromstring(out)
    except ET.ParseError as exc:
        raise RuntimeError(f"cannot parse the output of qstat -xml: {exc}") from exc
    jobs = []
    for entry in root.iter("job_list"):
        number = (entry.findtext("JB_job_number") or "").strip()
        name = entry.findtext("JB_name") or ""
        if not number or not name.startswith(name_prefix):
            continue
        task = (entry.findtext("tasks") or "").strip()
        jobs.append(
            SchedulerJob(
                job_id=f"{number}.{task}" if task else number,
                name=name,
                state=(entry.findtext("state") or "").strip(),
            )
        )
    return jobs


def wait_no_jobs(
    list_jobs: Callable[[str], list[SchedulerJob]],
    name_prefix: str,
    timeout: float = 30.0,
    interval: float = 0.5,
) -> list[SchedulerJob]:
    """Poll ``list_jobs(name_prefix)`` until it is empty; return what is left.

    To assert that a shutdown leaves no job behind (a cancelled Slurm job stays
    COMPLETING for a moment, a deleted SGE job in state ``dr``)::

        assert wait_no_jobs(squeue_jobs, job_name_prefix) == []
    """
    deadline = time.monotonic() + timeout
    while True:
        left = list_jobs(name_prefix)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(interval)


# --------------------------------------------------------------------------------------
# probes
# --------------------------------------------------------------------------------------


def _detect_slurm() -> SlurmCluster:
    if _marked_down("slurm"):
        _unavailable("slurm", "Slurm", f"{READY_FILE} has no slurm=1")
    ok, out = _probe(["sinfo", "--noheader", "--format=%P|%c|%T|%N"])
    if not ok:
        _unavailable("slurm", "Slurm", out)
    usable = []
    for line in out.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 4 or not fields[1].isdigit():
            continue
        partition, cpus, state, nodes = fields
        base, *flags = state.split("+")
        if base in _SLURM_OK_STATES and not set(flags) & _SLURM_BAD_FLAGS:
            usable.append((partition, int(cpus), nodes))
    if not usable:
        _unavailable("slurm", "Slurm", f"no usable node, sinfo says {out.strip()!r}")
    usable.sort(key=lambda u: not u[0].endswith("*"))  # the default partition first
    partition, cpus, nodes = usable[0]
    return SlurmCluster(partition=partition.rstrip("*"), cpus=cpus, nodes=nodes)


def _detect_sge() -> SgeCluster:
    if _marked_down("sge"):
        _unavailable("sge", "Grid Engine", f"{READY_FILE} has no sge=1")
    ok, out = _probe(["qstat", "-f"])
    if not ok:
        _unavailable("sge", "Grid Engine", out)
    usable = []
    for line in out.splitlines():
        # queuename  qtype  resv/used/tot.  load_avg  arch  [states]
        fields = line.split()
        if len(fields) < 5 or "@" not in fields[0]:
            continue
        if not re.fullmatch(r"\d+/\d+/\d+", fields[2]):
            continue
        # no load report yet, or any state letter (u, a, E, d, ...): not usable
        if fields[3] == "-NA-" or len(fields) > 5:
            continue
        queue, host = fields[0].split("@", 1)
        usable.append((queue, host, int(fields[2].split("/")[2])))
    if not usable:
        tail = out.strip()[-300:]
        _unavailable("sge", "Grid Engine", f"no usable queue in `qstat -f`: {tail!r}")
    wanted = read_ready_marker().get("sge_queue", "all.q")
    usable.sort(key=lambda u: u[0] != wanted)
    queue, host, slots = usable[0]
    return SgeCluster(queue=queue, slots=slots, host=host)


def _detect_ssh() -> SshHost:
    if _marked_down("ssh"):
        _unavailable("ssh", "sshd", f"{READY_FILE} has no ssh=... line")
    marker = read_ready_marker()
    host, port, key = "127.0.0.1", int(os.environ.get("IMPEXEC_SSH_PORT", "2222")), ""
    if "ssh" in marker:  # ssh=HOST:PORT:IDENTITY_FILE
        m_host, m_port, m_key = [*marker["ssh"].split(":", 2), "", ""][:3]
        host = m_host or host
        port = int(m_port) if m_port.isdigit() else port
        key = m_key
    # ci/cluster-up.sh makes the key pair for root (CI runs the tests as root)
    default_key = Path(pwd.getpwnam("root").pw_dir) / ".ssh" / "impexec_ci_ed25519"
    key = os.environ.get("IMPEXEC_SSH_KEY") or key or str(default_key)
    what = f"sshd on {host}:{port}"
    if not os.access(key, os.R_OK):
        reason = f"identity file {key} missing or unreadable by {getpass.getuser()}"
        _unavailable("ssh", what, reason)
    candidate = SshHost(
        host=host,
        port=port,
        user=os.environ.get("IMPEXEC_SSH_USER", "root"),
        identity_file=key,
        options=SSH_OPTIONS,
        alias=marker.get("ssh_alias"),
    )
    code = "import sys; print(sys.version_info[0])"
    ok, out = _probe(candidate.argv(shlex.join(["python3", "-c", code])))
    if not ok:
        _unavailable("ssh", what, out)
    if out.strip() != "3":
        _unavailable("ssh", what, f"`python3` over ssh printed {out.strip()!r}")
    return candidate


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The local Slurm (``ci/cluster-up.sh up slurm``); skips if it is not usable."""
    return _detect_slurm()


@pytest.fixture(scope="session")
def sge_cluster() -> SgeCluster:
    """The local Grid Engine (``ci/cluster-up.sh up sge``); skips if not usable."""
    return _detect_sge()


@pytest.fixture(scope="session")
def ssh_host() -> SshHost:
    """The loopback sshd (``ci/cluster-up.sh up ssh``); skips if login fails."""
    return _detect_ssh()


_SESSION_TAG = uuid.uuid4().hex[:6]
_prefix_counter = itertools.count()


@pytest.fixture
def job_name_prefix() -> str:
    """A job-name prefix unique to this test and session, e.g. ``impx-3f2a9c-7``.

    Name the jobs a test submits with it, then check that none is left::

        assert wait_no_jobs(squeue_jobs, job_name_prefix) == []
    """
    return f"impx-{_SESSION_TAG}-{next(_prefix_counter)}"
