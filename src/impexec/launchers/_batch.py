"""What the job-array launchers share: render a script, submit it, watch, cancel.

A backend (:mod:`.slurm`, :mod:`.sge`) says how to write the script, how to submit and
cancel, and how to read the queue; this module turns that into worker life cycles::

    submitted ──▶ PENDING (not a failure: a busy cluster is normal)
                     │
                     ▼
                  RUNNING ──(tag seen in READY)──▶ connected ──(task ends)──▶ worker_exited,
                     │                                                        replacement job
                     ├──(ends before connecting)──▶ start_failed(output file tail)
                     └──(runs > start_timeout unconnected)──▶ cancelled, start_failed

The connection (address and key) travels inside the job script, on the worker's stdin
(``--connect -``): no shared file system is needed for it, and the key never shows in
``ps``. Each array task's worker has the tag ``<scheduler>-<job>_<task>``, built in the
script from the scheduler's variables, so the launcher can tell the tasks apart.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._process import worker_argv
from .base import Launcher, LauncherHost, tail

logger = logging.getLogger(__name__)

#: Seconds between two queue queries (squeue/qstat), however often poll() is called.
QUERY_INTERVAL = 2.0
#: Seconds a scheduler command may take.
COMMAND_TIMEOUT = 30.0
#: End of the here-document that carries the connection JSON in a job script.
HEREDOC = "IMPEXEC_CONNECTION"


@dataclass
class _Task:
    key: str  # the scheduler's name of the array task: "12_3" (Slurm), "7.3" (SGE)
    job: str
    tag: str
    output: Path
    ran: bool = False
    running_since: float = 0.0
    connected: bool = False
    done: bool = False


def format_time(time_limit: str | float | None) -> str | None:
    """``"2:00:00"`` stays; a number of seconds becomes ``H:MM:SS``."""
    if time_limit is None or isinstance(time_limit, str):
        return time_limit
    total = int(time_limit)
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


class BatchWorkers(Launcher):
    """Workers as the tasks of job arrays (one array per submission).

    Subclasses define the scheduler-specific hooks below.
    """

    #: short name used in tags and messages ("slurm", "sge")
    scheduler = ""

    def __init__(
        self,
        n: int,
        *,
        python: str | Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        job_name: str = "impexec",
        output_dir: str | os.PathLike[str] | None = None,
        extra: Sequence[str] = (),
        start_timeout: float = 600.0,
    ):
        super().__init__(n, python=python, env=env, start_timeout=start_timeout)
        if not job_name or any(c.isspace() or c in "/'\"" for c in job_name):
            raise ValueError(f"job_name must be one word without slashes or quotes: {job_name!r}")
        if isinstance(extra, str):
            raise TypeError("extra must be a list of directive lines, not a string")
        self.job_name = job_name
        self.extra = list(extra)
        self._own_dir = output_dir is None
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.jobs: list[str] = []  # every job id submitted, in order
        self._tasks: dict[str, _Task] = {}
        self._owed = 0  # workers to submit (replacements)
        self._submit_at = 0.0
        self._next_query = 0.0
        self._stopped = False
        self._submissions = 0

    # -- what a backend implements -----------------------------------------------------
    @abc.abstractmethod
    def render_script(self, count: int, connection: str) -> str:
        """The job script for an array of ``count`` workers."""

    @abc.abstractmethod
    def submit_argv(self, script: Path) -> list[str]:
        """The command that submits ``script`` and prints the job id."""

    @abc.abstractmethod
    def parse_job_id(self, stdout: str) -> str:
        """The job id in the submit command's output."""

    @abc.abstractmethod
    def task_keys(self, job: str, count: int) -> list[str]:
        """The scheduler's names of the array tasks of ``job``."""

    @abc.abstractmethod
    def output_file(self, job: str, key: str) -> Path:
        """Where the task ``key`` writes its output (stdout and stderr)."""

    @abc.abstractmethod
    def query(self, jobs: Sequence[str]) -> dict[str, str]:
        """State of each known task of ``jobs``; tasks no longer listed are left out."""

    @abc.abstractmethod
    def classify(self, state: str | None) -> str:
        """``"pending"``, ``"running"``, ``"error"`` (stuck: cancel it), ``"ok"`` (ended
        with status 0), ``"cancelled"``, ``"failed"``, or ``"gone"`` (no longer listed)."""

    @abc.abstractmethod
    def cancel_argv(self, keys: Sequence[str]) -> list[str]:
        """The command that cancels jobs or array tasks."""

    def exit_details(self, task: _Task) -> str:
        """Extra words on how a finished task ended (e.g. from the accounting)."""
        return ""

    def exited_ok(self, task: _Task, state: str | None) -> bool:
        """Did a connected task end with status 0 (it was told to leave)?"""
        return self.classify(state) == "ok"

    # -- life cycle -----------------------------------------------------------------------
    def start(self, host: LauncherHost) -> None:
        self.host = host
        if self.output_dir is None:
            self.output_dir = Path(
                tempfile.mkdtemp(prefix=f"impexec-{self.scheduler}-", dir=default_output_root())
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._submit(self.n)

    def dry_run_script(self) -> str:
        """The script :meth:`start` would submit for ``n`` workers, with a placeholder for
        the connection (which holds the key) and, without ``output_dir``, for the
        directory."""
        saved = self.output_dir
        if saved is None:
            self.output_dir = (
                Path("~/.cache/impexec/jobs").expanduser() / f"impexec-{self.scheduler}-XXXXXXXX"
            )
        try:
            return self.render_script(self.n, '{"address":"tcp://HOST:PORT","key":"…","session":"…"}')
        finally:
            self.output_dir = saved

    def connection_json(self) -> str:
        assert self.host is not None
        return json.dumps(self.host.connection.to_json(), separators=(",", ":"))

    def worker_line(self, tag_expression: str) -> str:
        """The script's last command: ``exec PYTHON -m impexec worker ... <<HEREDOC``."""
        cmd = shlex.join(worker_argv(self.python, "-"))
        return f"exec {cmd} --tag \"{tag_expression}\" <<'{HEREDOC}'"

    def env_lines(self) -> list[str]:
        return [f"export {k}={shlex.quote(v)}" for k, v in self.env.items()]

    def _submit(self, count: int) -> None:
        """Submit a job array of *count* workers; if that fails, owe them (tried again later)."""
        stdout, error = self._run_submission(count)
        if error:
            logger.error("%s: could not submit workers: %s", self, error)
            for _ in range(count):  # none of the count workers can start
                self.start_failed(f"{self.scheduler}-submit", "could not submit the job", error)
            self._owe(count, time.monotonic() + self.backoff())
            return
        self._track(self.parse_job_id(stdout), count)

    def _run_submission(self, count: int) -> tuple[str, str]:
        """Write the job script, run the submit command on it, remove it.

        Returns the command's standard output and, if the submission failed, why.
        """
        assert self.output_dir is not None
        self._submissions += 1
        script = self.output_dir / f"{self.job_name}-{self._submissions}.sh"
        argv = self.submit_argv(script)
        try:
            fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)  # holds the key
            with os.fdopen(fd, "w") as f:
                f.write(self.render_script(count, self.connection_json()))
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.output_dir,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return "", f"{shlex.join(argv)} failed: {exc}"
        finally:
            # the scheduler keeps its own copy of a submitted script (sbatch and qsub
            # spool it): ours holds the key and must not outlive this call, whatever
            # became of the submission or of this process later
            script.unlink(missing_ok=True)
        if proc.returncode:
            return proc.stdout, f"{shlex.join(argv)} exited with status {proc.returncode}:\n{proc.stderr}"
        return proc.stdout, ""

    def _track(self, job: str, count: int) -> None:
        """Watch the *count* array tasks of the submitted *job*."""
        self.jobs.append(job)
        for key in self.task_keys(job, count):
            self._tasks[key] = _Task(
                key,
                job,
                f"{self.scheduler}-{key.replace('.', '_')}",
                self.output_file(job, key),
            )
        logger.info(
            "%s: submitted job %s (%d worker(s)), output in %s",
            self,
            job,
            count,
            self.output_dir,
        )
        self._next_query = time.monotonic() + 0.5

    def _owe(self, count: int, at: float) -> None:
        self._owed += count
        self._submit_at = max(self._submit_at, at)

    def live_tasks(self) -> list[_Task]:
        return [t for t in self._tasks.values() if not t.done]

    def poll(self) -> None:
        host = self.host
        if host is None or self._stopped:
            return
        now = time.monotonic()
        for t in self.live_tasks():
            if not t.connected and host.ever_connected(t.tag):
                t.connected = True
                self.started_ok()
        if self._owed and now >= self._submit_at and not host.shutting_down:
            count, self._owed = self._owed, 0
            self._submit(count)
        if now < self._next_query or host.shutting_down:
            return
        self._next_query = now + QUERY_INTERVAL
        live = self.live_tasks()
        if not live:
            return
        try:
            states = self.query(sorted({t.job for t in live}))
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            logger.warning("%s: cannot read the queue: %s", self, exc)
            return
        for t in live:
            self._update(t, states.get(t.key), now)

    def _update(self, t: _Task, state: str | None, now: float) -> None:
        host = self.host
        assert host is not None
        kind = self.classify(state)
        if kind == "pending":
            return
        if kind == "running":
            t.ran = True
            t.running_since = t.running_since or now
            if not t.connected and now - t.running_since > self.start_timeout:
                self._cancel([t.key])
                t.done = True
                self.start_failed(
                    t.tag,
                    f"{self.scheduler} job {t.key} ran for "
                    f"{self.start_timeout:g} s without its worker connecting",
                    self.read_output(t),
                )
                self._owe(1, now + self.backoff())
            return
        t.done = True
        if kind == "error":
            self._cancel([t.key])
        if t.connected or host.ever_connected(t.tag):
            if host.is_connected(t.tag):
                host.worker_exited(t.tag, f"{self.scheduler} job {t.key} {state or 'ended'}")
            if not self.exited_ok(t, state):
                self._owe(1, now)
            return
        if kind == "cancelled" and not t.ran:
            self._owe(1, now)  # cancelled while queued (by someone else): just replace it
            return
        details = self.exit_details(t)
        self.start_failed(
            t.tag,
            f"{self.scheduler} job {t.key} ended ({state or 'left the queue'}"
            f"{', ' + details if details else ''}) before its worker connected; "
            f"output: {t.output}",
            self.read_output(t),
        )
        self._owe(1, now + self.backoff())

    def read_output(self, t: _Task) -> str:
        try:
            return tail(t.output.read_bytes())
        except OSError as exc:
            return f"(no output: {exc})"

    def _cancel(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        argv = self.cancel_argv(keys)
        try:
            subprocess.run(
                argv,
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.warning("%s: %s failed: %s", self, shlex.join(argv), exc)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every job still queued or running; wait (bounded) until they left."""
        self._stopped = True
        jobs = sorted({t.job for t in self.live_tasks()})
        if jobs:
            self._cancel(jobs)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    states = self.query(jobs)
                except (OSError, RuntimeError, subprocess.TimeoutExpired):
                    break
                if not any(self.classify(s) in ("pending", "running", "error") for s in states.values()):
                    break
                time.sleep(0.25)
        for t in self._tasks.values():
            t.done = True
        if self._own_dir and self.output_dir is not None and not self.failures:
            shutil.rmtree(self.output_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.n}, job_name={self.job_name!r})"


def default_output_root() -> str:
    """``$IMPEXEC_JOB_DIR``, else ``~/.cache/impexec/jobs`` (home is shared on clusters)."""
    root = os.environ.get("IMPEXEC_JOB_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "impexec", "jobs"
    )
    os.makedirs(root, mode=0o700, exist_ok=True)
    return root


def run_query(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
