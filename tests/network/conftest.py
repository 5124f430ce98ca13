"""Fixtures of the network-fault tests: relays, and workers that reach the broker through them.

* ``relay_factory(target)``: a :class:`relay.Relay` to ``target``, closed at teardown.
* ``relayed_cluster(n_workers, **executor_options)``: a ClusterExecutor without launchers
  and ``n_workers`` ``impexec-worker`` processes, each dialing the broker through a relay
  of its own (so a test can cut one worker's link). See :class:`RelayedCluster`.

Task functions live in ``net_tasks`` (this directory is put on the workers' PYTHONPATH,
so they import it by name, as the other areas import ``<area>_tasks``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
#: Heartbeats of the executors here: fast enough for short tests, slow enough that a
#: 0.5 s link reset does not count as a lost worker.
HEARTBEAT = {"heartbeat_interval": 0.2, "heartbeat_timeout": 2.0}
#: Seconds a worker may take to connect (a fresh interpreter on a loaded 2-core machine).
CONNECT_S = 60.0
#: Seconds a worker gets to exit after the executor shut down before it is killed.
EXIT_GRACE_S = 10.0

# Last on the path, not first: a module named like one of this directory's (``conftest``)
# must still resolve where it did for every other test of a full run.
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))
if str(HERE) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(HERE)) if p)

from relay import Relay  # noqa: E402 (found through the path set just above)

from waiting import wait_until  # noqa: E402 (tests/waiting.py)


@pytest.fixture
def relay_factory() -> Iterator[Callable[..., Relay]]:
    made: list[Relay] = []

    def make(target: tuple[str, int], **kw: Any) -> Relay:
        r = Relay(target, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def _impexec_root() -> str:
    """The directory holding the impexec package the test imported (workers use it too)."""
    import impexec

    return str(Path(impexec.__file__).resolve().parents[1])


class RelayedCluster:
    """An executor, and worker processes whose every TCP link goes through a relay.

    ``relays[i]`` carries worker slot ``i`` (its main and heartbeat connections);
    ``procs[i]`` is the process now in that slot. :meth:`start_worker` (re)starts a slot.
    """

    def __init__(self, tmp: Path, n_workers: int, shutdown: Callable[[Any], None], **options: Any):
        from impexec import ClusterExecutor
        from impexec._connection import ConnectionInfo

        self.tmp = tmp
        self._shutdown = shutdown
        self.relays: list[Relay] = []
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n_workers
        self.all_procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self._lock = threading.Lock()
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (_impexec_root(), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        self.ex = ClusterExecutor(None, address="tcp://127.0.0.1:0", **{**HEARTBEAT, **options})
        try:
            info = ConnectionInfo.read(self.ex.connection_file())
            host, port = info.address.removeprefix("tcp://").rsplit(":", 1)
            self._files = []
            for i in range(n_workers):
                self.relays.append(Relay((host, int(port)), name=f"relay{i}"))
                self._files.append(
                    dataclasses.replace(info, address=self.relays[i].address).write(
                        tmp / f"connection-relay{i}.json"
                    )
                )
        except BaseException:
            self.close()
            raise

    def start(self) -> RelayedCluster:
        """Start a worker in every slot."""
        for i in range(len(self.procs)):
            self.start_worker(i)
        return self

    def start_worker(self, i: int) -> subprocess.Popen[bytes]:
        """Start a worker in slot ``i`` (the one there, if any, should be gone)."""
        with self._lock:
            n = len(self.all_procs)
            log = self.tmp / f"worker{i}-{n}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "impexec",
                        "worker",
                        "--connect",
                        str(self._files[i]),
                        "--connect-timeout",
                        str(CONNECT_S),
                        "--tag",
                        f"relayed-{i}-{n}",
                    ],
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.procs[i] = proc
            self.all_procs.append(proc)
            self.logs.append(log)
            return proc

    def kill_worker(self, i: int) -> subprocess.Popen[bytes] | None:
        """SIGKILL the process in slot ``i``, reap it; returns it (None if the slot is empty)."""
        proc = self.procs[i]
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.procs[i] = None
        return proc

    def wait_workers(self, n: int, timeout: float = CONNECT_S) -> None:
        """Wait until ``n`` workers are connected (statistics); fail with the logs if not."""
        try:
            wait_until(lambda: self.ex.statistics().workers >= n, timeout, f"{n} workers to connect")
        except AssertionError as exc:
            pytest.fail(f"{exc}: {self.ex.statistics()}\n{self.worker_logs()}", pytrace=False)

    def worker_logs(self) -> str:
        out = []
        for log in self.logs:
            with contextlib.suppress(OSError):
                text = log.read_text(errors="replace").strip()
                if text:
                    out.append(f"--- {log.name}\n{text[-3000:]}")
        return "\n".join(out)

    def close(self) -> None:
        """Shut the executor down (bounded), then end every worker and relay, whatever happened."""
        try:
            for r in self.relays:
                with contextlib.suppress(RuntimeError):  # a dead relay thread: close() says so
                    print(r, r.stats())  # shown by pytest when the test failed
                    r.heal()  # the goodbyes must reach the workers
            self._shutdown(self.ex)
        finally:
            deadline = time.monotonic() + EXIT_GRACE_S
            for proc in self.all_procs:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
            # shown by pytest when the test failed: what the workers said, and why they left
            print(self.worker_logs())
            print("worker exit codes:", [p.returncode for p in self.all_procs])
            with contextlib.ExitStack() as stack:  # each closed; a dead relay thread raises
                for r in self.relays:
                    stack.callback(r.close)


@pytest.fixture
def relayed_cluster(
    tmp_path: Path,
    shutdown_with_deadline: Callable[[Any], None],
) -> Iterator[Callable[..., RelayedCluster]]:
    """Factory: ``relayed_cluster(n_workers, **executor_options)`` → a started RelayedCluster.

    With ``start=False`` no worker is started yet (``cluster.start_worker(i)`` does it), so
    a test can set up a fault before a worker's first connection.

    Every cluster made is closed at teardown, each whatever happened to the others.
    """
    made: list[RelayedCluster] = []

    def make(n_workers: int, *, start: bool = True, **options: Any) -> RelayedCluster:
        cluster = RelayedCluster(tmp_path, n_workers, shutdown_with_deadline, **options)
        made.append(cluster)
        return cluster.start() if start else cluster

    yield make
    with contextlib.ExitStack() as stack:
        for cluster in made:
            stack.callback(cluster.close)
