"""The cluster fixtures (tests/cluster/conftest.py) for the lifecycle cases that end a
client whose workers are Slurm or Grid Engine jobs or run over SSH."""

from cluster.conftest import job_name_prefix, sge_cluster, slurm_cluster, ssh_host  # noqa: F401
