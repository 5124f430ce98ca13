"""A parameter sweep that keeps going past failures, with a progress bar.

    python examples/06_sweep.py

Some parameters make ``fit`` raise (here: when it does not converge). A plain ``map``
would stop at the first of them; ``return_exceptions=True`` yields each item's result
or exception, in order, and the sweep goes on, chunked and with the model set up once
per worker (a context: its tasks go through ``ctx.map``, not ``ex.map``). The bar
(tqdm, if installed) shows the failures as they come; from another terminal,
``impexec top <connection file>`` shows the same run live.
"""

import math

from impexec import ClusterExecutor, progress

PARAMS = [i / 10 for i in range(400)]


def load_model(scale):
    """The expensive setup (reading a structure, building restraints...): once per worker."""
    return {"scale": scale}


def fit(model, theta):
    if math.sin(theta) < -0.95:  # about 10% of the parameters
        raise ArithmeticError(f"no convergence at theta={theta:.1f}")
    return model["scale"] * math.cos(theta) ** 2


def main():
    with ClusterExecutor(workers=2) as ex:
        print("connection file for `impexec top`:", ex.connection_file())
        with ex.context(load_model, 2.0) as ctx:
            outcomes = ctx.map(fit, PARAMS, chunksize="auto", return_exceptions=True)
            results, failures = {}, {}
            for theta, out in zip(
                PARAMS,
                progress(outcomes, executor=ex, total=len(PARAMS), desc="sweep", disable=None),
                strict=True,
            ):
                if isinstance(out, Exception):
                    failures[theta] = out
                else:
                    results[theta] = out
        stats = ex.statistics()
    print(f"{len(results)} results, {len(failures)} failures (of {len(PARAMS)} parameters)")
    first = next(iter(failures.items()))
    print(f"first failure: theta={first[0]:.1f}: {first[1]!r}")
    print(f"statistics: done={stats.done} failed={stats.failed} (calls; {stats.tasks_done} chunks)")
    if len(results) + len(failures) != len(PARAMS) or stats.failed != len(failures):
        raise SystemExit("the sweep lost items")


if __name__ == "__main__":
    main()
