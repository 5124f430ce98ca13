"""SlurmWorkers against a real single-node Slurm (start it with ``ci/cluster-up.sh``)."""

from __future__ import annotations

import pytest

from cluster.cluster_checks import (
    array_runs_map,
    bad_python_is_a_start_error,
    cancelled_task_is_replaced,
)
from cluster.conftest import squeue_jobs, wait_no_jobs
from impexec import SlurmWorkers

pytestmark = pytest.mark.cluster


def test_job_array_runs_a_map_and_shutdown_leaves_no_job(
    slurm_cluster, make_executor, shutdown_with_deadline, job_name_prefix, tmp_path
):
    launcher = SlurmWorkers(
        3,
        partition=slurm_cluster.partition,
        time="10:00",
        job_name=job_name_prefix,
        output_dir=tmp_path,
    )
    ex = array_runs_map(make_executor, launcher, 3)
    assert len(launcher.jobs) == 1  # one sbatch --array job, not one job per worker
    tasks = slurm_cluster.jobs(job_name_prefix)  # the scheduler lists each array task
    assert len(tasks) == 3 and len({t.job_id.split("_")[0] for t in tasks}) == 1, tasks
    assert list(tmp_path.glob("*.sh")) == []  # it held the key; the scheduler keeps a copy
    shutdown_with_deadline(ex)
    assert wait_no_jobs(squeue_jobs, job_name_prefix, timeout=30) == []


def test_scancel_of_a_running_task_resubmits_its_work(
    slurm_cluster, make_executor, shutdown_with_deadline, job_name_prefix, tmp_path
):
    launcher = SlurmWorkers(2, job_name=job_name_prefix, output_dir=tmp_path)
    ex = cancelled_task_is_replaced(make_executor, launcher, ["scancel"])
    shutdown_with_deadline(ex)
    assert wait_no_jobs(squeue_jobs, job_name_prefix, timeout=30) == []


def test_a_worker_that_cannot_start_is_a_worker_start_error(
    slurm_cluster, make_executor, shutdown_with_deadline, job_name_prefix, tmp_path
):
    launcher = SlurmWorkers(2, python="/nonexistent/python", job_name=job_name_prefix, output_dir=tmp_path)
    ex = bad_python_is_a_start_error(make_executor, launcher)
    shutdown_with_deadline(ex)
    assert wait_no_jobs(squeue_jobs, job_name_prefix, timeout=30) == []
