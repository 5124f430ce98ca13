"""The exact job scripts and ssh command lines the launchers generate (golden strings).

No scheduler and no ssh runs here; tests/cluster/ runs the same launchers for real.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from impexec import SGEWorkers, SlurmWorkers, SSHWorkers
from impexec._connection import ConnectionInfo
from impexec.launchers._batch import format_time
from impexec.launchers.sge import _expand

CONN = ConnectionInfo(address="tcp://head:5555", key=bytes(range(32)), session=b"\1" * 8)
CONN_JSON = json.dumps(CONN.to_json(), separators=(",", ":"))


class FakeHost:
    connection = CONN
    connection_file = Path("/tmp/impexec-x/connection.json")
    shutting_down = False

    def is_connected(self, tag):
        return False

    def ever_connected(self, tag):
        return False

    def worker_exited(self, tag, why):
        raise AssertionError("not in these tests")


def attach(launcher):
    launcher.host = FakeHost()
    return launcher


def test_slurm_script():
    launcher = attach(
        SlurmWorkers(
            4,
            partition="debug",
            time=3600,
            cpus_per_task=2,
            mem="4G",
            account="lab",
            extra=["--qos=high"],
            python="/opt/py/bin/python",
            env={"OMP_NUM_THREADS": "1", "NOTE": "a b"},
            job_name="fit",
            output_dir="/shared/jobs",
        )
    )
    assert (
        launcher.render_script(4, launcher.connection_json())
        == f"""\
#!/bin/bash
#SBATCH --job-name=fit
#SBATCH --array=0-3
#SBATCH --output=/shared/jobs/fit-%A_%a.out
#SBATCH --cpus-per-task=2
#SBATCH --partition=debug
#SBATCH --time=1:00:00
#SBATCH --mem=4G
#SBATCH --account=lab
#SBATCH --qos=high
export OMP_NUM_THREADS=1
export NOTE='a b'
exec /opt/py/bin/python -m impexec worker --connect - --tag "slurm-${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}" <<'IMPEXEC_CONNECTION'
{CONN_JSON}
IMPEXEC_CONNECTION
"""
    )
    assert launcher.submit_argv(Path("/shared/jobs/fit-1.sh")) == [
        "sbatch",
        "--parsable",
        "/shared/jobs/fit-1.sh",
    ]
    assert launcher.parse_job_id("1234;cluster\n") == "1234"
    assert launcher.task_keys("1234", 2) == ["1234_0", "1234_1"]
    assert launcher.output_file("1234", "1234_1") == Path("/shared/jobs/fit-1234_1.out")
    assert launcher.cancel_argv(["1234", "1240"]) == ["scancel", "1234", "1240"]


def test_slurm_defaults_use_this_interpreter_and_inherit_the_environment():
    import sys

    launcher = attach(SlurmWorkers(1, output_dir="/j"))
    script = launcher.render_script(1, "{}")
    assert f"exec {shlex.quote(sys.executable)} -m impexec worker" in script
    assert "#SBATCH --array=0-0\n" in script
    assert "export" not in script and "--partition" not in script


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        ("PENDING", "pending"),
        ("RUNNING", "running"),
        ("COMPLETING", "running"),
        ("COMPLETED", "ok"),
        ("CANCELLED", "cancelled"),
        ("CANCELLED by 0", "cancelled"),
        ("FAILED", "failed"),
        ("TIMEOUT", "failed"),
        ("NODE_FAIL", "failed"),
        ("OUT_OF_MEMORY", "failed"),
        (None, "gone"),
    ],
)
def test_slurm_states(state, kind):
    assert SlurmWorkers(1).classify(state) == kind


def test_sge_script():
    launcher = attach(
        SGEWorkers(
            3,
            queue="all.q",
            time="2:00:00",
            pe=("smp", 4),
            extra=["-l h_vmem=2G"],
            python="/opt/py/bin/python",
            env={"A": "1"},
            job_name="fit",
            output_dir="/shared/jobs",
        )
    )
    assert (
        launcher.render_script(3, launcher.connection_json())
        == f"""\
#!/bin/bash
#$ -N fit
#$ -t 1-3
#$ -S /bin/bash
#$ -V
#$ -j y
#$ -o /shared/jobs/$JOB_NAME.o$JOB_ID.$TASK_ID
#$ -q all.q
#$ -l h_rt=2:00:00
#$ -pe smp 4
#$ -l h_vmem=2G
export A=1
exec /opt/py/bin/python -m impexec worker --connect - --tag "sge-${{JOB_ID}}_${{SGE_TASK_ID}}" <<'IMPEXEC_CONNECTION'
{CONN_JSON}
IMPEXEC_CONNECTION
"""
    )
    assert launcher.submit_argv(Path("/s.sh")) == ["qsub", "-terse", "/s.sh"]
    assert launcher.parse_job_id("77.1-3:1\n") == "77"
    assert launcher.task_keys("77", 3) == ["77.1", "77.2", "77.3"]
    assert launcher.output_file("77", "77.2") == Path("/shared/jobs/fit.o77.2")
    assert launcher.cancel_argv(["77"]) == ["qdel", "77"]


def test_sge_defaults_to_the_absolute_interpreter_path():
    import sys

    script = attach(SGEWorkers(2, output_dir="/j")).render_script(2, "{}")
    assert Path(sys.executable).is_absolute()
    assert f"exec {shlex.quote(sys.executable)} -m impexec worker" in script


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        ("qw", "pending"),
        ("hqw", "pending"),
        ("t", "running"),
        ("r", "running"),
        ("dr", "running"),
        ("Eqw", "error"),
        (None, "gone"),
    ],
)
def test_sge_states(state, kind):
    assert SGEWorkers(1).classify(state) == kind


@pytest.mark.parametrize(
    ("tasks", "expanded"),
    [
        ("3", ["3"]),
        ("1-4:1", ["1", "2", "3", "4"]),
        ("2-6:2", ["2", "4", "6"]),
        ("", []),
        ("1,5-6:1", ["1", "5", "6"]),
    ],
)
def test_sge_task_ranges(tasks, expanded):
    assert _expand(tasks) == expanded


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, None),
        ("1-00:00", "1-00:00"),
        (59, "0:00:59"),
        (3600, "1:00:00"),
        (90061, "25:01:01"),
    ],
)
def test_time_limits(value, text):
    assert format_time(value) == text


def test_ssh_argv():
    launcher = attach(
        SSHWorkers(
            ["alice@node1", "node2"],
            processes=2,
            python="/opt/py/bin/python",
            env={"OMP_NUM_THREADS": "1"},
            ssh=("/usr/bin/ssh",),
            ssh_options=("-o", "ConnectTimeout=5"),
            port=2222,
            identity="/home/alice/.ssh/id_ed25519",
        )
    )
    assert launcher.n == 4
    assert [launcher.host_of(i) for i in range(4)] == [
        "alice@node1",
        "alice@node1",
        "node2",
        "node2",
    ]
    assert launcher.ssh_argv("node2", "ssh1-2-1") == [
        "/usr/bin/ssh",
        "-o",
        "BatchMode=yes",
        "-T",
        "-p",
        "2222",
        "-i",
        "/home/alice/.ssh/id_ed25519",
        "-o",
        "ConnectTimeout=5",
        "node2",
        "exec env OMP_NUM_THREADS=1 /opt/py/bin/python -m impexec worker --connect - "
        "--exit-with-stdin --tag ssh1-2-1",
    ]


def test_ssh_minimal_argv_carries_no_secret():
    launcher = attach(SSHWorkers("node1", python="python3"))
    argv = launcher.ssh_argv("node1", "t")
    assert argv == [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-T",
        "node1",
        "exec python3 -m impexec worker --connect - --exit-with-stdin --tag t",
    ]
    assert CONN.key.hex() not in " ".join(argv)


@pytest.mark.parametrize("bad", [[], [""], "", None])
def test_ssh_needs_hosts(bad):
    with pytest.raises((ValueError, TypeError)):
        SSHWorkers(bad)


def test_ssh_needs_processes():
    with pytest.raises(ValueError, match="processes"):
        SSHWorkers(["a"], processes=0)


@pytest.mark.parametrize("name", ["", "two words", "a/b", "it's"])
def test_job_names_are_checked(name):
    with pytest.raises(ValueError, match="job_name"):
        SlurmWorkers(1, job_name=name)


def test_extra_must_be_a_list():
    with pytest.raises(TypeError, match="extra"):
        SGEWorkers(1, extra="-l h_vmem=2G")
