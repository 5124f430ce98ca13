"""asyncio: loop.run_in_executor(ex, ...) and asyncio.wrap_future(ex.submit(...))."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from impexec import ClusterExecutor

FAST = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.5}


def square(x):
    return x * x


def fail(message):
    raise ValueError(message)


def hold(seconds):
    time.sleep(seconds)
    return seconds


def touch(path):
    with open(path, "w"):
        pass
    return path


@pytest.fixture
def ex(executor):
    """The suite's executor: 2 local workers, FAST heartbeats, shut down under a deadline."""
    return executor


def test_run_in_executor_gathers_results(ex):
    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(ex, square, i) for i in range(50)))

    assert asyncio.run(main()) == [i * i for i in range(50)]


def test_wrap_future_and_exceptions(ex):
    async def main():
        ok = await asyncio.wrap_future(ex.submit(square, 7))
        with pytest.raises(ValueError, match="remote boom") as info:
            await asyncio.wrap_future(ex.submit(fail, "remote boom"))
        return ok, info.value

    ok, err = asyncio.run(main())
    assert ok == 49
    assert "remote boom" in str(err.__cause__)  # the remote traceback, as in ProcessPool


def test_as_completed_interleaves_with_other_coroutines(ex):
    async def ticker(stop):
        ticks = 0
        while not stop.is_set():
            await asyncio.sleep(0.01)
            ticks += 1
        return ticks

    async def main():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        tick_task = asyncio.create_task(ticker(stop))
        results = [
            await f
            for f in asyncio.as_completed(
                [
                    loop.run_in_executor(ex, hold, 0.2),
                    loop.run_in_executor(ex, square, 3),
                ]
            )
        ]
        stop.set()
        return results, await tick_task

    results, ticks = asyncio.run(main())
    assert sorted(results) == [0.2, 9]
    assert ticks > 0  # the loop kept running while the workers did


def test_a_timed_out_await_cancels_an_undispatched_task(tmp_path):
    marker = tmp_path / "ran"
    with ClusterExecutor(workers=1, prefetch=0, **FAST) as ex:
        assert ex.submit(square, 1).result(timeout=60) == 1

        async def main():
            loop = asyncio.get_running_loop()
            busy = loop.run_in_executor(ex, hold, 0.5)
            queued = loop.run_in_executor(ex, touch, str(marker))
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(queued, timeout=0.05)
            return await busy

        assert asyncio.run(main()) == 0.5
        # one worker, first in first out: had the cancelled task been sent, it would
        # have run before this one
        assert ex.submit(os.path.exists, str(marker)).result(timeout=60) is False
    assert not marker.exists()
    assert ex.statistics().cancelled == 1
