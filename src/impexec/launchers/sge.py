"""SGEWorkers: workers as the tasks of one Grid Engine ``qsub -t`` array job."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

from ._batch import HEREDOC, BatchWorkers, _Task, format_time, run_query


class SGEWorkers(BatchWorkers):
    """``n`` workers as one Grid Engine array job (``qsub -t 1-n``).

    The script runs this client's *absolute* interpreter path by default: SGE job shells
    are login shells, whose profile resets ``PATH`` (a virtualenv's ``python`` would not
    be found by name). The submitter's environment is passed on (``-V``). ``qdel`` cancels
    the jobs at shutdown (SGE kills at once, with SIGKILL).

    Args:
        n: number of workers (array tasks).
        queue: ``-q`` queue; time: ``-l h_rt=`` (text ``"2:00:00"`` or seconds);
        pe: parallel environment, ``"smp 4"`` or ``("smp", 4)``.
        extra: more ``#$`` directives, one per item, e.g. ``["-l h_vmem=2G"]``.
        python, env, job_name, output_dir, start_timeout: as for :class:`SlurmWorkers`.
    """

    scheduler = "sge"

    def __init__(
        self,
        n: int,
        *,
        queue: str | None = None,
        time: str | float | None = None,
        pe: str | tuple[str, int] | None = None,
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
        self.queue = queue
        self.time = format_time(time)
        self.pe = pe if pe is None or isinstance(pe, str) else f"{pe[0]} {pe[1]}"

    def render_script(self, count: int, connection: str) -> str:
        options = [
            f"-N {self.job_name}",
            f"-t 1-{count}",
            "-S /bin/bash",
            "-V",
            "-j y",
            f"-o {self.output_dir}/$JOB_NAME.o$JOB_ID.$TASK_ID",
        ]
        if self.queue is not None:
            options.append(f"-q {self.queue}")
        if self.time is not None:
            options.append(f"-l h_rt={self.time}")
        if self.pe is not None:
            options.append(f"-pe {self.pe}")
        lines = [
            "#!/bin/bash",
            *(f"#$ {o}" for o in [*options, *self.extra]),
            *self.env_lines(),
            self.worker_line("sge-${JOB_ID}_${SGE_TASK_ID}"),
            connection,
            HEREDOC,
        ]
        return "\n".join(lines) + "\n"

    def submit_argv(self, script: Path) -> list[str]:
        return ["qsub", "-terse", str(script)]

    def parse_job_id(self, stdout: str) -> str:
        return stdout.strip().split(".", 1)[0]  # "12.1-4:1" for an array job

    def task_keys(self, job: str, count: int) -> list[str]:
        return [f"{job}.{i}" for i in range(1, count + 1)]

    def output_file(self, job: str, key: str) -> Path:
        assert self.output_dir is not None
        return self.output_dir / f"{self.job_name}.o{key}"

    def query(self, jobs: Sequence[str]) -> dict[str, str]:
        proc = run_query(["qstat", "-xml", "-g", "d"])
        if proc.returncode:
            raise RuntimeError(f"qstat -xml -g d: {proc.stderr.strip()}")
        wanted = set(jobs)
        states = {}
        # the XML comes from our own local qstat call, not from the network
        for entry in ET.fromstring(proc.stdout).iter("job_list"):  # noqa: S314
            job = (entry.findtext("JB_job_number") or "").strip()
            if job not in wanted:
                continue
            state = (entry.findtext("state") or "").strip()
            for task in _expand((entry.findtext("tasks") or "").strip()):
                states[f"{job}.{task}"] = state
        return states

    def classify(self, state: str | None) -> str:
        if state is None:
            return "gone"  # finished tasks leave qstat at once; qacct knows how they ended
        if "E" in state:
            return "error"  # e.g. Eqw: the job cannot start and waits forever
        if re.search(r"[rtsSTd]", state):
            return "running"
        return "pending"

    def _accounting(self, key: str) -> dict[str, str]:
        job, _, task = key.partition(".")
        proc = run_query(["qacct", "-j", job, "-t", task])
        if proc.returncode:
            return {}
        fields = {}
        for line in proc.stdout.splitlines():
            name, _, value = line.partition(" ")
            fields[name] = value.strip()
        return fields

    def exited_ok(self, task: _Task, state: str | None) -> bool:
        return self._accounting(task.key).get("exit_status", "").split(" ")[0] == "0"

    def exit_details(self, task: _Task) -> str:
        acct = self._accounting(task.key)
        if acct:
            return f"exit_status {acct.get('exit_status', '?')}, failed {acct.get('failed', '?')}"
        proc = run_query(["qstat", "-j", task.job])
        reasons = [line.strip() for line in proc.stdout.splitlines() if "error" in line.lower()]
        return "; ".join(reasons)

    def cancel_argv(self, keys: Sequence[str]) -> list[str]:
        return ["qdel", *keys]


def _expand(tasks: str) -> list[str]:
    """``"3"`` → [3]; ``"1-4:1"`` (tasks not yet dispatched) → [1, 2, 3, 4]; ``""`` → []."""
    out: list[str] = []
    for part in filter(None, tasks.split(",")):
        m = re.fullmatch(r"(\d+)-(\d+)(?::(\d+))?", part)
        if m:
            first, last, step = int(m[1]), int(m[2]), int(m[3] or 1)
            out.extend(str(i) for i in range(first, last + 1, step))
        else:
            out.append(part)
    return out
