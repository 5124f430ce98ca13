"""SlurmWorkers: workers as the tasks of one ``sbatch --array`` job."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from ._batch import HEREDOC, BatchWorkers, _Task, format_time, run_query

_PENDING = {
    "PENDING",
    "CONFIGURING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESV_DEL_HOLD",
    "RESIZING",
}
_RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED"}


class SlurmWorkers(BatchWorkers):
    """``n`` workers as one Slurm job array (``sbatch --array=0-(n-1)``).

    Each array task runs ``PYTHON -m impexec worker``; a task that ends early is replaced
    by a new job, and every job is cancelled (``scancel``) at shutdown. A task that ran and
    ended before its worker connected is a start failure reported with the tail of its
    output file; a queued job is not a failure.

    Args:
        n: number of workers (array tasks).
        partition, time, cpus_per_task, mem, account: the usual ``sbatch`` options
            (``time`` as Slurm text, e.g. ``"2:00:00"``, or seconds).
        extra: more ``#SBATCH`` directives, one option per item, e.g. ``["--qos=high"]``.
        python: interpreter command on the compute nodes (default: this interpreter).
        env: variables exported in the job script (the submitter's environment is
            inherited, as ``sbatch`` does by default).
        job_name: the Slurm job name.
        output_dir: directory for the job scripts and output files; it must be visible
            from the compute nodes (default: a new directory under
            ``$IMPEXEC_JOB_DIR`` or ``~/.cache/impexec/jobs``, removed at shutdown unless a
            worker failed to start).
        start_timeout: seconds a *running* task may take to connect.
    """

    scheduler = "slurm"

    def __init__(
        self,
        n: int,
        *,
        partition: str | None = None,
        time: str | float | None = None,
        cpus_per_task: int = 1,
        mem: str | None = None,
        account: str | None = None,
        extra: Sequence[str] = (),
        python: str | Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        job_name: str = "impexec",
        output_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 600.0,
    ):
        super().__init__(
            n,
            python=python,
            env=env,
            job_name=job_name,
            output_dir=output_dir,
            extra=extra,
            start_timeout=start_timeout,
        )
        self.partition = partition
        self.time = format_time(time)
        self.cpus_per_task = cpus_per_task
        self.mem = mem
        self.account = account

    def render_script(self, count: int, connection: str) -> str:
        options = [
            f"--job-name={self.job_name}",
            f"--array=0-{count - 1}",
            f"--output={self.output_dir}/{self.job_name}-%A_%a.out",
            f"--cpus-per-task={self.cpus_per_task}",
        ]
        for name, value in (
            ("partition", self.partition),
            ("time", self.time),
            ("mem", self.mem),
            ("account", self.account),
        ):
            if value is not None:
                options.append(f"--{name}={value}")
        lines = [
            "#!/bin/bash",
            *(f"#SBATCH {o}" for o in [*options, *self.extra]),
            *self.env_lines(),
            self.worker_line("slurm-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"),
            connection,
            HEREDOC,
        ]
        return "\n".join(lines) + "\n"

    def submit_argv(self, script: Path) -> list[str]:
        return ["sbatch", "--parsable", str(script)]

    def parse_job_id(self, stdout: str) -> str:
        return stdout.strip().split(";", 1)[0]  # "123" or "123;cluster"

    def task_keys(self, job: str, count: int) -> list[str]:
        return [f"{job}_{i}" for i in range(count)]

    def output_file(self, job: str, key: str) -> Path:
        assert self.output_dir is not None
        return self.output_dir / f"{self.job_name}-{key}.out"

    def query(self, jobs: Sequence[str]) -> dict[str, str]:
        argv = [
            "squeue",
            f"--jobs={','.join(jobs)}",
            "-t",
            "all",
            "--array",
            "--noheader",
            "--format=%i %T",
        ]
        proc = run_query(argv)
        if proc.returncode:
            if "Invalid job id" in proc.stderr:
                return {}  # every job has left squeue's memory (MinJobAge)
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
        states = {}
        for line in proc.stdout.splitlines():
            key, _, state = line.strip().partition(" ")
            states[key] = state.strip()
        return states

    def classify(self, state: str | None) -> str:
        if state is None:
            return "gone"
        state = state.split()[0].rstrip("+")
        if state in _PENDING:
            return "pending"
        if state in _RUNNING:
            return "running"
        if state == "COMPLETED":
            return "ok"
        if state == "CANCELLED":
            return "cancelled"
        return "failed"  # FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, BOOT_FAIL, PREEMPTED ...

    def exit_details(self, task: _Task) -> str:
        """The exit code from ``sacct``, when the site keeps accounting ("" if not)."""
        try:
            proc = run_query(["sacct", "-X", "-n", "-P", "-j", task.key, "-o", "ExitCode"])
        except (OSError, subprocess.TimeoutExpired):
            return ""
        codes = proc.stdout.split()
        return f"exit code {codes[0]}" if proc.returncode == 0 and codes else ""

    def cancel_argv(self, keys: Sequence[str]) -> list[str]:
        return ["scancel", *keys]
