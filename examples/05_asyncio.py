"""asyncio: await cluster work from coroutines, with no thread of your own.

    python examples/05_asyncio.py

``loop.run_in_executor(ex, fn, *args)`` and ``asyncio.wrap_future(ex.submit(...))`` turn
impexec futures into awaitables, so a web handler or an async pipeline can fan work out
to the workers while the event loop keeps serving. ``asyncio.wait_for`` timing out on a
task that has not been sent yet cancels it: it never runs.
"""

import asyncio
import time

from impexec import ClusterExecutor


def simulate(seed: int) -> float:
    time.sleep(0.1)  # stands for a CPU-heavy computation on a worker
    return (seed * 7919) % 1000 / 1000


async def heartbeat(stop: asyncio.Event) -> int:
    beats = 0
    while not stop.is_set():
        await asyncio.sleep(0.05)
        beats += 1
    return beats


async def main(ex: ClusterExecutor) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    beats = asyncio.create_task(heartbeat(stop))

    # fan out and gather, in input order
    values = await asyncio.gather(*(loop.run_in_executor(ex, simulate, s) for s in range(20)))
    print(f"gathered {len(values)} results, mean {sum(values) / len(values):.3f}")

    # a submitted future, awaited
    one = await asyncio.wrap_future(ex.submit(simulate, 42))
    print(f"simulate(42) = {one}")

    # a result we will not wait long for: timing out cancels it if not yet sent
    try:
        await asyncio.wait_for(loop.run_in_executor(ex, simulate, 7), timeout=0.01)
    except asyncio.TimeoutError:
        print("simulate(7) timed out and was cancelled")

    stop.set()
    print(f"the event loop ran {await beats} heartbeats meanwhile")


if __name__ == "__main__":
    with ClusterExecutor(workers=2) as executor:
        asyncio.run(main(executor))
