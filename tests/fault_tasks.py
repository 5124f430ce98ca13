"""Task functions and crash helpers for the fault-tolerance tests (imported by workers)."""

from __future__ import annotations

import os
import signal
import time


def double(x):
    return 2 * x


def sleep_double(x, seconds=0.01):
    time.sleep(seconds)
    return 2 * x


def whoami(x=None):
    return os.getpid()


def slow_whoami(seconds, started=None):
    if started is not None:  # a file the test waits for: the task is running now
        with open(started, "w"):
            pass
    # short sleeps against a monotonic deadline: a process stopped (SIGSTOP) past the
    # deadline ends the task as soon as it resumes. One long sleep does not on Python 3.10,
    # whose time.sleep restarts its whole timeout after the stop (3.11 sleeps to a deadline)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.02))
    return os.getpid()


def _segfault():
    import ctypes

    ctypes.string_at(0)


def die(how):
    """Crash the calling process in the way named."""
    if how == "raise":
        raise RuntimeError("task failed on purpose")
    if how == "exit":
        os._exit(7)
    if how == "segv":
        _segfault()
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    raise ValueError(how)


def crash_task(how):
    die(how)
    return "unreachable"


def _rebuild_and_die(how):
    die(how)


class DieAtUnpickle:
    """Pickles fine on the client; unpickling it (on the worker) crashes as told."""

    def __init__(self, how):
        self.how = how

    def __reduce__(self):
        return _rebuild_and_die, (self.how,)


class DieAtPickle:
    """Returned by a task: pickling it (on the worker) crashes as told."""

    def __init__(self, how):
        self.how = how

    def __reduce__(self):
        die(self.how)
        return (str, ())


def return_die_at_pickle(how):
    return DieAtPickle(how)


def _rebuild_raise():
    raise RuntimeError("cannot unpickle this on the client")


class RaiseAtClientUnpickle:
    def __reduce__(self):
        return _rebuild_raise, ()


def return_raise_at_client_unpickle():
    return RaiseAtClientUnpickle()


def setup_dies(how):
    die(how)


def use_setup(value, x):
    return x
