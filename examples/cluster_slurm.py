"""Run a map on a Slurm cluster: 8 workers as one job array (SlurmWorkers).

Run it on a login node, where ``sbatch`` works:

    python examples/cluster_slurm.py --partition short
    python examples/cluster_slurm.py --dry-run      # only print the job script

The broker binds all interfaces and tells the workers this host's name; the compute
nodes must be able to reach it (``advertise=`` names another address). ``--dry-run``
needs no Slurm at all.
"""
# ci: args --dry-run
# ci: slurm-args --workers 2

import argparse
import socket

from impexec import ClusterExecutor, SlurmWorkers


def simulate(seed: int) -> float:
    import random

    rng = random.Random(seed)
    return sum(rng.random() for _ in range(100_000)) / 100_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--partition", default=None)
    parser.add_argument("--dry-run", action="store_true", help="print the job script and exit")
    args = parser.parse_args()
    workers = SlurmWorkers(
        args.workers,
        partition=args.partition,
        time="0:30:00",
        mem="1G",
        env={"OMP_NUM_THREADS": "1"},
        job_name="impexec-demo",
    )
    if args.dry_run:
        print(workers.dry_run_script())
        return
    with ClusterExecutor(workers, address="tcp://0.0.0.0:0", advertise=socket.getfqdn(), encrypt=True) as ex:
        means = list(ex.map(simulate, range(200), chunksize="auto"))
        print(f"{len(means)} runs, mean of means {sum(means) / len(means):.4f}")
        print(ex.statistics())


if __name__ == "__main__":
    main()
