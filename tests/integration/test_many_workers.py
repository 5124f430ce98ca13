"""Hundreds of workers on one broker: they join, share the work, leave at shutdown.

The workers are lightweight (``impexec._light_workers``: many worker identities
per process, each with its own sockets, handshake and heartbeats), so 200 of them fit
on a 2-core machine. No timing here: speed is ``benchmarks/bench_scale.py``'s job.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from impexec import ClusterExecutor
from impexec import _light_workers as light
from impexec._connection import ConnectionInfo
from waiting import wait_until

TIMEOUT = 60
N_WORKERS = 200
N_HOSTS = 2
# slow heartbeats: 200 workers on a busy 2-core machine must not be declared lost
OPTIONS = {"heartbeat_interval": 0.5, "heartbeat_timeout": 15.0}


@pytest.fixture
def cluster(
    shutdown_with_deadline: Callable[..., None],
) -> Iterator[tuple[ClusterExecutor, list[Any]]]:
    ex = ClusterExecutor(None, **OPTIONS)
    hosts = light.spawn(ex.connection_file(), N_WORKERS, N_HOSTS)
    try:
        yield ex, hosts
    finally:
        shutdown_with_deadline(ex)
        light.reap(hosts, timeout=TIMEOUT)


def _wait_workers(ex: ClusterExecutor, hosts: list[Any], n: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while ex.statistics().workers < n:
        exited = [h.returncode for h in hosts if h.poll() is not None]
        assert not exited, f"a light worker host exited early: {exited}"
        assert time.monotonic() < deadline, f"only {ex.statistics().workers} of {n} joined"
        time.sleep(0.05)


def test_hosts_split_identities_evenly() -> None:
    assert light.split(1000, 4) == [250, 250, 250, 250]
    assert light.split(10, 4) == [3, 3, 2, 2]
    assert light.split(2, 4) == [1, 1]


def test_200_workers_share_the_work_and_leave(
    cluster: tuple[ClusterExecutor, list[Any]],
) -> None:
    ex, hosts = cluster
    _wait_workers(ex, hosts, N_WORKERS)
    stats = ex.statistics()
    assert (stats.workers, stats.workers_joined) == (N_WORKERS, N_WORKERS)

    # builtins as tasks: the hosts import them by name (this module is not importable
    # there). A map of near no-op tasks, one item per task, over 200 workers:
    assert list(ex.map(abs, range(2000), timeout=TIMEOUT)) == list(range(2000))
    # chunked, and results in input order
    assert list(ex.map(pow, range(5000), [2] * 5000, chunksize=7, timeout=TIMEOUT)) == [
        x * x for x in range(5000)
    ]
    futures = [ex.submit(pow, i, 2) for i in range(600)]
    assert [f.result(timeout=TIMEOUT) for f in futures] == [i * i for i in range(600)]

    stats = ex.statistics()
    assert stats.workers == N_WORKERS
    assert stats.workers_lost == 0
    assert stats.failed == 0
    assert (stats.queued, stats.running) == (0, 0)
    # the work went to many workers, not a few (counted from the broker's records, on
    # its thread: the identities of one host share a pid, so results cannot tell)
    busy = ex._broker.call(lambda: sum(1 for w in ex._scheduler.workers.values() if w.completed), TIMEOUT)
    assert busy > N_WORKERS // 2, f"only {busy} of {N_WORKERS} workers got a task"

    ex.shutdown(wait=True)
    # every identity got SHUTDOWN: each host process ends by itself, with status 0
    assert light.reap(hosts, timeout=TIMEOUT) == [0] * N_HOSTS


def test_light_worker_exceptions_travel_back(
    cluster: tuple[ClusterExecutor, list[Any]],
) -> None:
    ex, hosts = cluster
    _wait_workers(ex, hosts, N_WORKERS)
    with pytest.raises(ZeroDivisionError):
        ex.submit(divmod, 1, 0).result(timeout=TIMEOUT)
    assert ex.submit(divmod, 7, 2).result(timeout=TIMEOUT) == (3, 1)


def test_idle_light_workers_stay_alive_past_the_heartbeat_timeout(
    shutdown_with_deadline: Callable[..., None],
) -> None:
    # The light workers' heartbeat did not echo the broker's last heartbeat-link number,
    # as the real worker's does, so an identity that got no task for heartbeat_timeout
    # could not prove it heard the broker and was declared lost: at 1,000 workers the
    # scale benchmark lost dozens mid-run (a task each went back after a 10 s stall).
    ex = ClusterExecutor(None, heartbeat_interval=0.1, heartbeat_timeout=1.0)
    hosts = light.spawn(ex.connection_file(), 8, 1)
    try:
        _wait_workers(ex, hosts, 8)
        time.sleep(3.0)  # idle for three heartbeat timeouts: the window under test
        stats = ex.statistics()
        assert (stats.workers, stats.workers_lost) == (8, 0)
        assert list(ex.map(abs, range(-40, 0), timeout=TIMEOUT)) == list(range(40, 0, -1))
    finally:
        shutdown_with_deadline(ex)
        light.reap(hosts, timeout=TIMEOUT)


class _BlindEpoll:
    """select's module as the light host sees it, with an epoll that reports nothing
    while *blind* is set (it sleeps the timeout instead), as a host busy elsewhere."""

    EPOLLIN = select.EPOLLIN

    def __init__(self, blind: threading.Event):
        self.blind = blind

    def epoll(self) -> Any:
        real = select.epoll()
        blind = self.blind

        class Epoll:
            register = real.register
            unregister = real.unregister
            close = real.close

            @staticmethod
            def poll(timeout: float = -1) -> list[tuple[int, int]]:
                if blind.is_set():
                    time.sleep(max(0.0, timeout))
                    return []
                return real.poll(timeout)

        return Epoll()


def test_a_welcome_that_arrives_before_ready_is_sent_again_is_read(
    monkeypatch: pytest.MonkeyPatch, shutdown_with_deadline: Callable[..., None]
) -> None:
    # Sending READY again took the main socket's wake-up (ZeroMQ's FD signals commands,
    # not messages) for a WELCOME that had arrived meanwhile, and the light host never
    # read that socket again: the identity counted as a worker, got tasks, never answered,
    # and was declared lost after heartbeat_timeout (the 1,000-worker benchmark's stalls)
    blind = threading.Event()
    blind.set()
    monkeypatch.setattr(light, "select", _BlindEpoll(blind))
    monkeypatch.setattr(light, "READY_RESEND_S", 0.3)
    ex = ClusterExecutor(None, heartbeat_interval=0.2, heartbeat_timeout=30.0)
    host = light.LightWorkerHost(ConnectionInfo.read(ex.connection_file()), 1)
    thread = threading.Thread(target=host.run, name="light-host", daemon=True)
    thread.start()
    try:
        wait_until(lambda: ex.statistics().workers == 1, TIMEOUT, "READY (the WELCOME is on its way)")
        time.sleep(0.8)  # blind: the WELCOME waits unread while READY goes again
        blind.clear()
        assert ex.submit(abs, -3).result(timeout=10) == 3
    finally:
        shutdown_with_deadline(ex)
        thread.join(TIMEOUT)
    assert not thread.is_alive()
