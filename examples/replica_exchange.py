"""Replica-exchange Monte Carlo of a 2-D double well, with the model set up once per worker.

    python examples/replica_exchange.py

The workflow of IMP's sampling codes: build a model (expensive), then alternate short
sampling runs and swaps. Here the "model" is the potential
U(x, y) = 4 (x^2 - 1)^2 + y^2 tabulated on a 601 x 601 grid; ``time.sleep(1.0)`` in
``build_model`` stands for the seconds a real model takes to build (reading structures,
setting up restraints). It runs in a context: once per worker, not once per task.

Each round every replica runs Metropolis steps at its temperature on a worker (about
0.2 s); the client then proposes swaps between neighbouring temperatures with the
replica-exchange Metropolis criterion min(1, exp((1/T_i - 1/T_j)(E_i - E_j))).
"""

import math
import os
import random
import time
import uuid

import numpy as np

from impexec import ClusterExecutor

TEMPERATURES = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]
ROUNDS = 15
STEPS = 12_000  # Metropolis steps per replica per round
LIMIT, N = 3.0, 601  # the grid covers [-LIMIT, LIMIT]^2 with N x N points


def build_model(limit: float, n: int) -> dict:
    time.sleep(1.0)  # stands for an expensive model build
    axis = np.linspace(-limit, limit, n)
    x, y = np.meshgrid(axis, axis, indexing="ij")
    table = 4.0 * (x**2 - 1.0) ** 2 + y**2
    return {
        "table": table.tolist(),
        "limit": limit,
        "scale": (n - 1) / (2 * limit),
        "setup": (os.getpid(), uuid.uuid4().hex[:6]),
    }


def sample(model: dict, state: tuple, temperature: float, steps: int, seed: int) -> tuple:
    """Metropolis steps from *state*; returns (state, energy, accepted moves, setup id)."""
    table, limit, scale = model["table"], model["limit"], model["scale"]
    rng = random.Random(seed)

    def energy(x: float, y: float) -> float:
        return table[round((x + limit) * scale)][round((y + limit) * scale)]

    x, y = state
    e, accepted = energy(x, y), 0
    for _ in range(steps):
        nx, ny = x + rng.gauss(0.0, 0.25), y + rng.gauss(0.0, 0.25)
        if abs(nx) >= limit or abs(ny) >= limit:
            continue  # outside the model: rejected
        ne = energy(nx, ny)
        if ne <= e or rng.random() < math.exp((e - ne) / temperature):
            x, y, e, accepted = nx, ny, ne, accepted + 1
    return (x, y), e, accepted, model["setup"]


def main() -> None:
    start = time.perf_counter()
    states = [(-1.0, 0.0)] * len(TEMPERATURES)  # every replica starts in the left well
    moves = [0] * len(TEMPERATURES)
    swaps_tried, swaps_done = [0] * (len(TEMPERATURES) - 1), [0] * (len(TEMPERATURES) - 1)
    setups, right_well = set(), 0
    rng = random.Random(1)
    with ClusterExecutor(workers=2) as ex, ex.context(build_model, LIMIT, N) as ctx:
        for r in range(ROUNDS):
            seeds = [rng.randrange(2**32) for _ in TEMPERATURES]
            results = list(ctx.map(sample, states, TEMPERATURES, [STEPS] * len(states), seeds))
            states = [res[0] for res in results]
            energies = [res[1] for res in results]
            for i, (_, _, accepted, setup) in enumerate(results):
                moves[i] += accepted
                setups.add(setup)
            for i in range(r % 2, len(TEMPERATURES) - 1, 2):  # alternate even and odd pairs
                delta = (1 / TEMPERATURES[i] - 1 / TEMPERATURES[i + 1]) * (energies[i] - energies[i + 1])
                swaps_tried[i] += 1
                if delta >= 0 or rng.random() < math.exp(delta):
                    swaps_done[i] += 1
                    states[i], states[i + 1] = states[i + 1], states[i]
            right_well += states[0][0] > 0
    print(
        f"{ROUNDS} rounds x {len(TEMPERATURES)} replicas x {STEPS} steps "
        f"in {time.perf_counter() - start:.1f} s"
    )
    for t, m in zip(TEMPERATURES, moves, strict=True):
        print(f"  T={t:<4}  move acceptance {m / (ROUNDS * STEPS):6.1%}")
    for i, (tried, done) in enumerate(zip(swaps_tried, swaps_done, strict=True)):
        print(f"  swap T={TEMPERATURES[i]} <-> {TEMPERATURES[i + 1]}: {done}/{tried} accepted")
    print(f"  coldest replica in the right-hand well after {right_well}/{ROUNDS} rounds")
    print(
        f"setup ran {len(setups)} times (once per worker: {sorted(setups)}), "
        f"for {ROUNDS * len(TEMPERATURES)} tasks"
    )


if __name__ == "__main__":
    main()
