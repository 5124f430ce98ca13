"""IMP.parallel-style code on impexec: only the import line changes.

    python examples/imp_parallel_compat.py

This is IMP.parallel's own pattern (a Manager, workers added to it, a context whose
setup builds a model once per worker, tasks that receive what the setup returned): score
a harmonic distance restraint at ten distances, on two local workers. For a Grid Engine
cluster, add ``parallel.SGEQsubWorkerArray(20, "-q long.q")`` instead of the local
workers. New code can use ``ClusterExecutor.context`` directly (see
03_context_setup_cache.py).
"""

from impexec.compat import imp as parallel  # was: import IMP.parallel as parallel


def setup():
    """Runs once per worker: build the 'model' and return what every task receives."""
    restraint = {"k": 1.0, "x0": 0.0}  # a harmonic restraint, rest length 0
    particle = {"x": 0.0}
    return restraint, particle  # a tuple: splatted into the task's arguments


class Task:
    """A task carries its own parameters and is called with the setup's values."""

    def __init__(self, dist: float):
        self.dist = dist

    def __call__(self, restraint: dict, particle: dict) -> tuple[float, float]:
        particle["x"] = self.dist
        return self.dist, 0.5 * restraint["k"] * (particle["x"] - restraint["x0"]) ** 2


def main() -> None:
    with parallel.Manager() as m:
        m.add_worker(parallel.LocalWorker())  # IMP's older spelling: LocalSlave / add_slave
        m.add_worker(parallel.LocalWorker())
        c = m.get_context(setup)
        for dist in range(10):
            c.add_task(Task(dist))
        results = []
        for dist, score in c.get_results_unordered():  # in the order they complete
            print(f"distance {dist}: score {score}")
            results.append((dist, score))
    if sorted(results) != [(d, 0.5 * d * d) for d in range(10)]:
        raise SystemExit(f"unexpected results: {results}")


if __name__ == "__main__":
    main()
