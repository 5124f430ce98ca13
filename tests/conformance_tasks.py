"""Task functions of the conformance tests (imported by workers by module name)."""

from __future__ import annotations

import os
import time


class ExitAtPickle:
    """Returned by a task: pickling it on the worker raises SystemExit."""

    def __reduce__(self):
        raise SystemExit(3)


def return_exit_at_pickle():
    return ExitAtPickle()


def _exit_now():
    raise SystemExit(4)


class ExitAtClientUnpickle:
    """Returned by a task: unpickling it (on the client) raises SystemExit."""

    def __reduce__(self):
        return _exit_now, ()


def return_exit_at_client_unpickle():
    return ExitAtClientUnpickle()


class Payload:
    """A result whose lifetime the client watches with a weak reference."""

    def __init__(self, i):
        self.i = i


def make_payload(i):
    return Payload(i)


def pid(_=None):
    return os.getpid()


def exit_now(code=1):
    os._exit(code)


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value
