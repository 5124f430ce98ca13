"""Nothing handed to the broker while it tears down is left waiting.

The broker's teardown holds its lock while it says goodbye and closes its sockets (up to
seconds: it joins its monitor thread), and sets ``stopped`` only at the end. A task or a
``call`` that arrives in that window goes to the inbox, after the inbox was drained: the
task's future was never resolved, the call waited out its whole timeout.

To hit the window every time, the test slows the real teardown down at the point where
it closes its socket guard (the wrapped ``close`` sleeps, then closes as before).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from impexec._errors import BrokenClusterError
from impexec._scheduler import Task
from waiting import wait_until

WINDOW_S = 1.0  # how long teardown is held inside its window


@pytest.fixture
def broker_in_teardown(make_broker):
    """A running broker, then stopped; yields it while its teardown is in the window."""
    b = make_broker()
    inside = threading.Event()
    close = b._guard.close

    def slow_close() -> None:
        inside.set()
        time.sleep(WINDOW_S)
        close()

    b._guard.close = slow_close
    b.start()
    assert b.statistics(timeout=10).workers == 0
    b.stop_when_idle()
    assert inside.wait(10), "the broker did not start its teardown"
    assert not b.stopped.is_set()
    yield b
    b.join(10)
    assert not b.is_alive()


def test_a_task_handed_over_during_teardown_is_resolved(broker_in_teardown):
    task = Task(1, [b""], Future())
    broker_in_teardown.submit_now(task)  # the lock is held: it goes to the inbox
    with pytest.raises(BrokenClusterError):
        task.future.result(timeout=WINDOW_S + 5)


def test_a_call_during_teardown_returns_without_waiting_out_its_timeout(broker_in_teardown):
    t = time.monotonic()
    assert broker_in_teardown.call(lambda: "ran", timeout=10) == "ran"
    # it ran once the broker had stopped, not after its timeout (statistics() uses 10 s)
    assert time.monotonic() - t < 10
    assert broker_in_teardown.stopped.is_set()


def test_a_call_queued_behind_a_crash_is_answered(make_broker):
    # the broker thread dies on an item of its inbox; a call() queued behind it was
    # dropped by the teardown's drain and waited out its whole timeout
    b = make_broker()
    b.start()
    answer: list[object] = []
    asker = threading.Thread(target=lambda: answer.append(b.call(lambda: "ran", 10)), name="test-asker")
    try:
        with b._lock:  # the thread waits here; both land in the inbox in this order
            b.enqueue(_crash)
            asker.start()
            wait_until(lambda: len(b._inbox) >= 2, 5, "the crash and the call in the inbox")
        t = time.monotonic()
        asker.join(15)
        assert answer == ["ran"] and time.monotonic() - t < 10
        assert isinstance(b.crash, RuntimeError)
    finally:
        b.join(10)


def _crash() -> None:
    raise RuntimeError("an internal error of the broker thread (test)")
