"""Fixtures for every test directory: leak checks, executors, sockets, a fake clock.

* ``no_leaks`` (autouse): after each test, no new thread whose name starts with
  ``impexec`` is alive and no new child process exists (after a grace period). Mark a
  test ``@pytest.mark.allow_leaks("why")`` to exempt it.
* ``executor``: a ClusterExecutor with 2 local workers and fast heartbeats, shut down
  under a deadline (a hang fails the test with every thread's stack).
* ``make_executor``: a factory for ClusterExecutors with other options; each one made is
  shut down the same way at teardown.
* ``fake_clock``: a clock that only moves when told (``fake_clock.advance(s)``).
* ``zmq_context`` and ``raw_socket(kind)``: raw ZeroMQ sockets (LINGER 0) closed at
  teardown, for talking to a broker or a worker by hand.
* ``make_broker``: a factory for bare brokers (no executor, no workers); each one still
  running at teardown is stopped and joined.
* ``shutdown_with_deadline(ex)``: the helper the fixtures use, for tests that make
  executors themselves.

Workers import task functions by module name (``tasks``, ``<area>_tasks``), so this
file puts tests/ on ``PYTHONPATH`` for every process the tests start.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

TESTS_DIR = Path(__file__).resolve().parent
#: Seconds a finished test's threads and child processes get to go away.
LEAK_GRACE_S = 5.0
#: Seconds an executor fixture's shutdown may take before the test fails (stack dump).
SHUTDOWN_DEADLINE_S = 30.0
#: Long-lived helpers of the standard library's multiprocessing, shared by every later
#: ProcessPoolExecutor: not leaks.
SHARED_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
#: Options of the standard test executor: fast heartbeats so fault tests stay short.
FAST = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.5}

# Worker processes are fresh interpreters: they find task modules through PYTHONPATH.
if str(TESTS_DIR) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_leaks(reason): skip the no_leaks check for this test (say why)",
    )


# -- leak checks -----------------------------------------------------------------------
def _impexec_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("impexec") and t.is_alive()}


def _children() -> set[tuple[int, float]]:
    try:
        kids = psutil.Process().children(recursive=True)
    except psutil.Error:
        return set()
    return {key for key in map(_child_key, kids) if key is not None}


def _child_key(p: psutil.Process) -> tuple[int, float] | None:
    """(pid, start time) of a live child that counts as a leak; None otherwise."""
    try:
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        if any(helper in " ".join(p.cmdline()) for helper in SHARED_HELPERS):
            return None
        return p.pid, p.create_time()
    except psutil.Error:
        return None  # exited meanwhile


def _describe_children(kids: set[tuple[int, float]]) -> list[str]:
    def describe(pid: int) -> str:
        try:
            return f"{pid}: {' '.join(psutil.Process(pid).cmdline())[:200]}"
        except psutil.Error:
            return f"{pid}: (gone)"

    return [describe(pid) for pid, _ in kids]


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves impexec threads or child processes behind."""
    if request.node.get_closest_marker("allow_leaks"):
        yield
        return
    threads_before = _impexec_threads()
    children_before = _children()
    yield
    # collect now, so that a ResourceWarning of an object this test dropped (an unwaited
    # Popen, an open socket) is reported for this test, not for a later one
    gc.collect()
    deadline = time.monotonic() + LEAK_GRACE_S
    while True:
        threads = _impexec_threads() - threads_before
        children = _children() - children_before
        if not threads and not children:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    problems = []
    if threads:
        problems.append("threads still alive: " + ", ".join(sorted(t.name for t in threads)))
    if children:
        problems.append("child processes still alive: " + "; ".join(_describe_children(children)))
    for pid, _ in children:  # do not let one leak fail every later test too
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    pytest.fail(f"{request.node.nodeid} leaked " + " and ".join(problems), pytrace=False)


# -- executors -------------------------------------------------------------------------
def shutdown_with_deadline(ex: Any, deadline: float = SHUTDOWN_DEADLINE_S) -> None:
    """``ex.shutdown(wait=True, cancel_futures=True)``; fail with stacks if it hangs."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            ex.shutdown(wait=True, cancel_futures=True)
        except BaseException as exc:  # reported in the test's thread below
            errors.append(exc)

    # not named impexec*: the leak check must not count the helper itself
    t = threading.Thread(target=run, name="test-shutdown", daemon=True)
    t.start()
    t.join(deadline)
    if t.is_alive():
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        pytest.fail(
            f"shutdown of {ex!r} took more than {deadline} s (stacks on stderr)",
            pytrace=False,
        )
    if errors:
        raise errors[0]


@pytest.fixture(name="shutdown_with_deadline")
def _shutdown_with_deadline_fixture() -> Callable[..., None]:
    """:func:`shutdown_with_deadline`, for tests that make their own executors."""
    return shutdown_with_deadline


@pytest.fixture
def make_executor() -> Iterator[Callable[..., Any]]:
    """Factory: ``make_executor(workers=2, **options)`` → a ClusterExecutor.

    Each one made is shut down at teardown.

    Defaults to fast heartbeats (``FAST``); explicit options win.
    """
    from impexec import ClusterExecutor

    made: list[Any] = []

    def make(workers: Any = 2, **options: Any) -> Any:
        ex = ClusterExecutor(workers, **{**FAST, **options})
        made.append(ex)
        return ex

    yield make
    for ex in reversed(made):
        shutdown_with_deadline(ex)


@pytest.fixture
def executor(make_executor: Callable[..., Any]) -> Any:
    """A ClusterExecutor with 2 local workers and heartbeats of 0.05 s / 0.5 s."""
    return make_executor(2)


# -- clock -----------------------------------------------------------------------------
class FakeClock:
    """A monotonic clock for I/O-free code: ``clock()`` reads, ``advance(s)`` moves."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        self.now += seconds
        return self.now


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


# -- raw ZeroMQ ------------------------------------------------------------------------
@pytest.fixture
def zmq_context() -> Iterator[zmq.Context[Any]]:
    """A private ZeroMQ context, terminated at teardown (close sockets before)."""
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def raw_socket(
    zmq_context: zmq.Context[Any],
) -> Iterator[Callable[..., zmq.Socket[Any]]]:
    """Factory: ``raw_socket(zmq.DEALER, identity=b"...")`` → a socket with LINGER 0.

    Every socket it made is closed at teardown.
    """
    made: list[zmq.Socket[Any]] = []

    def make(kind: int, *, identity: bytes | None = None, rcvtimeo_ms: int = 5000) -> zmq.Socket[Any]:
        sock = zmq_context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, rcvtimeo_ms)
        sock.setsockopt(zmq.SNDTIMEO, rcvtimeo_ms)
        if identity is not None:
            sock.setsockopt(zmq.IDENTITY, identity)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close(linger=0)


# -- a bare broker ---------------------------------------------------------------------
@pytest.fixture
def make_broker() -> Iterator[Callable[..., Any]]:
    """Factory: ``make_broker(**options)`` -> a bound, not yet started ``Broker`` with its
    own ``Scheduler``; explicit options win over the defaults.

    A broker still running at teardown is asked to stop and joined; one that does not end
    fails the test (its thread would outlive it).
    """
    from impexec._broker import Broker
    from impexec._scheduler import Scheduler

    made: list[Any] = []

    def make(**options: Any) -> Any:
        defaults = {  # fresh secrets, a loopback port, quick heartbeats
            "key": os.urandom(32),
            "session": os.urandom(8),
            "address": "tcp://127.0.0.1:0",
            "heartbeat_interval": 0.1,
            "heartbeat_timeout": 1.0,
            "welcome_extra": {},
        }
        broker = Broker(scheduler=Scheduler(), **{**defaults, **options})
        made.append(broker)
        return broker

    yield make
    for broker in made:
        if broker.is_alive():
            broker.stop_when_idle()
            broker.join(10)
            assert not broker.is_alive(), "a broker did not stop within 10 s"
