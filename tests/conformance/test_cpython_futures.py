"""CPython's own concurrent.futures tests, run against ClusterExecutor.

The tests come from the running interpreter's ``test.test_concurrent_futures`` package
(CPython 3.13 ships it; Debian packages it as ``libpython3.X-testsuite``); nothing of it
is copied here. The stdlib's ``create_executor_tests`` combines each of its test mixins
with our executor mixin, which builds a :class:`ClusterPoolExecutor` (``max_workers`` local
workers). ``cpython_adapter.SKIPS`` and ``DIFFERENCES`` name the tests that do not run
as written, each with its reason; docs/conformance.md lists the same.

Tests that start a fresh interpreter with a script (the shutdown tests) import
``{executor_type}`` from concurrent.futures: the script's import line is pointed at the
adapter module, and the child gets this checkout on its path.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import unittest
import unittest.mock
from collections.abc import Callable
from concurrent.futures import process as futures_process
from pathlib import Path
from pickle import PicklingError, UnpicklingError
from typing import Any

import pytest

try:
    from test.test_concurrent_futures import (
        test_as_completed,
        test_deadlock,
        test_init,
        test_process_pool,
        test_shutdown,
        test_wait,
        util,
    )
except ImportError as exc:
    pytest.skip(
        f"this interpreter (Python {sys.version.split()[0]}) has no test.test_concurrent_futures "
        f"package (CPython's test suite; e.g. Debian's libpython3.X-testsuite): {exc}",
        allow_module_level=True,
    )

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the adapter module, importable by name (child scripts too)
    sys.path.insert(0, str(HERE))

from cpython_adapter import DIFFERENCES, SKIPS, ClusterPoolExecutor  # noqa: E402

from impexec import SerializationError, WorkerLostError, WorkerStartError  # noqa: E402
from impexec._serialize import RemoteTraceback  # noqa: E402
from waiting import wait_until  # noqa: E402

TIMEOUT = 60  # seconds for any one wait in a replacement test (the machine is shared)

SRC = Path(__import__("impexec").__file__).resolve().parent.parent

#: The stdlib mixins run here, by the module that defines them.
MIXINS = (
    test_process_pool.ProcessPoolExecutorTest,  # includes executor.ExecutorTest
    test_as_completed.AsCompletedTests,
    test_wait.WaitTests,
    test_shutdown.ProcessPoolShutdownTest,  # includes ExecutorShutdownTest
    test_init.InitializerMixin,
    test_init.FailingInitializerMixin,
    test_deadlock.ExecutorDeadlockTest,
)


def _assert_python_ok(*args: str, **env: str):  # type: ignore[no-untyped-def]
    """The stdlib's assert_python_ok, with the script importing our executor type."""
    name = ClusterPoolExecutor.__name__
    args = tuple(
        a.replace(f"from concurrent.futures import {name}", f"from cpython_adapter import {name}")
        for a in args
    )
    path = os.pathsep.join(p for p in (str(HERE), str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return _stdlib_assert_python_ok(*args, __isolated=False, PYTHONPATH=path, **env)


_stdlib_assert_python_ok = test_shutdown.assert_python_ok


class ClusterMixin(util.ExecutorMixin):
    """The executor mixin: what the stdlib's ProcessPool*Mixin classes are for their pools."""

    executor_type = ClusterPoolExecutor

    def setUp(self) -> None:
        test_shutdown.assert_python_ok = _assert_python_ok
        self.addCleanup(setattr, test_shutdown, "assert_python_ok", _stdlib_assert_python_ok)
        super().setUp()

    def get_context(self):  # type: ignore[no-untyped-def]
        # tests pass it to executor_type (ignored there): workers are fresh interpreters
        return multiprocessing.get_context("spawn")


for _mixin in MIXINS:
    util.create_executor_tests(globals(), _mixin, executor_mixins=(ClusterMixin,))


def _generated() -> dict[str, type]:
    """Stdlib mixin name → the test class built from it here."""
    out = {}
    for obj in list(globals().values()):
        if isinstance(obj, type) and issubclass(obj, ClusterMixin) and obj is not ClusterMixin:
            for base in obj.__mro__[1:]:
                if base in MIXINS:
                    out[base.__name__] = obj
                    break
    return out


# -- the documented differences: the stdlib's test, its expectation mapped to ours -------
Test = Callable[[Any], None]


def _mapped(module: Any, **names: Any) -> Callable[[Test], Test]:
    """Run the stdlib test as written, with *names* of its *module* bound to ours."""

    def replace(original: Test) -> Test:
        def test(self: Any) -> None:
            with unittest.mock.patch.multiple(module, **names):
                original(self)

        return test

    return replace


def _killed_child(original: Test) -> Test:
    # the stdlib kills a worker and expects BrokenProcessPool for the task and for every
    # later submit; here the task is run again and the executor goes on
    def test(self: Any) -> None:
        fut = self.executor.submit(time.sleep, 1)
        wait_until(fut.running, TIMEOUT, "the task to be sent to a worker")
        for proc in self.executor.launchers[0].processes():
            proc.kill()
        self.assertIsNone(fut.result(TIMEOUT))
        self.assertGreaterEqual(self.executor.statistics().resubmitted, 1)
        self.assertEqual(self.executor.submit(pow, 2, 8).result(TIMEOUT), 256)

    return test


def _error_at_task_pickle(original: Test) -> Test:
    def test(self: Any) -> None:
        self.executor.shutdown(wait=True)
        with self.executor_type(max_workers=2) as executor:
            with self.assertRaises(PicklingError):
                executor.submit(id, test_deadlock.ErrorAtPickle())
            self.assertEqual(executor.submit(pow, 2, 8).result(TIMEOUT), 256)

    return test


def _exit_during_result_pickle(original: Test) -> Test:
    def test(self: Any) -> None:
        self._check_crash(SerializationError, test_deadlock._return_instance, test_deadlock.ExitAtPickle)

    return test


def _max_workers_zero(original: Test) -> Test:
    def test(self: Any) -> None:
        with self.assertRaises(ValueError):
            self.executor_type(max_workers=-1)
        executor = self.executor_type(max_workers=0)
        try:
            self.assertEqual(executor.launchers, [])
            fut = executor.submit(pow, 2, 8)
            self.assertEqual(executor.statistics().queued, 1)  # waits for a worker to join
            self.assertFalse(fut.done())
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        self.assertTrue(fut.cancelled())

    return test


def _failing_initializer(original: Test) -> Test:
    def test(self: Any) -> None:
        fut = self.executor.submit(test_init.get_init_status)
        with self.assertRaises(WorkerStartError) as cm:
            fut.result(TIMEOUT)
        self.assertIn("ValueError: error in initializer", str(cm.exception))
        with self.assertRaises(WorkerStartError):
            self.executor.submit(test_init.get_init_status)

    return test


def _after_workers_connected(original: Test) -> Test:
    def test(self: Any) -> None:
        wait_until(
            lambda: self.executor.statistics().workers == self.worker_count, TIMEOUT, "the workers to connect"
        )
        original(self)

    return test


_lost = _mapped(test_deadlock, BrokenProcessPool=WorkerLostError)
#: How each test in DIFFERENCES runs instead (the same keys: checked below).
REPLACEMENTS: dict[str, Callable[[Test], Test]] = {
    "ProcessPoolExecutorTest.test_killed_child": _killed_child,
    "ExecutorDeadlockTest.test_crash_during_func_exec_on_worker": _lost,
    "ExecutorDeadlockTest.test_crash_at_task_unpickle": _lost,
    "ExecutorDeadlockTest.test_crash_during_result_pickle_on_worker": _lost,
    "ExecutorDeadlockTest.test_crash_big_data": _lost,
    "ExecutorDeadlockTest.test_shutdown_deadlock": _lost,
    "ExecutorDeadlockTest.test_exit_at_task_unpickle": _mapped(test_deadlock, BrokenProcessPool=SystemExit),
    "ExecutorDeadlockTest.test_error_at_task_unpickle": _mapped(
        test_deadlock, BrokenProcessPool=UnpicklingError
    ),
    "ExecutorDeadlockTest.test_error_at_task_pickle": _error_at_task_pickle,
    "ExecutorDeadlockTest.test_exit_during_result_pickle_on_worker": _exit_during_result_pickle,
    "ExecutorDeadlockTest.test_error_during_result_unpickle_in_result_handler": _mapped(
        test_deadlock, BrokenProcessPool=SerializationError
    ),
    "ExecutorDeadlockTest.test_exit_during_result_unpickle_in_result_handler": _mapped(
        test_deadlock, BrokenProcessPool=SerializationError
    ),
    "ProcessPoolExecutorTest.test_max_workers_negative": _max_workers_zero,
    "ProcessPoolExecutorTest.test_traceback": _mapped(futures_process, _RemoteTraceback=RemoteTraceback),
    "ProcessPoolShutdownTest.test_cancel_futures": _after_workers_connected,
    "FailingInitializerMixin.test_initializer": _failing_initializer,
}


def _apply_lists() -> None:
    classes = _generated()
    for key in [*SKIPS, *DIFFERENCES]:
        mixin, test = key.split(".")
        cls = classes.get(mixin)
        if cls is None or not hasattr(cls, test):
            continue  # reported by test_every_listed_test_exists
        original = getattr(cls, test)
        if key in SKIPS:
            setattr(cls, test, unittest.skip(SKIPS[key])(original))
        elif key in REPLACEMENTS:
            replaced = REPLACEMENTS[key](original)
            replaced.__name__ = test
            replaced.__doc__ = f"Documented difference: {DIFFERENCES[key]}"
            setattr(cls, test, replaced)


_apply_lists()


def test_every_listed_test_exists() -> None:
    """A skip or difference for a test that no longer exists is a stale list: fail."""
    classes = _generated()
    stale = []
    for key in [*SKIPS, *DIFFERENCES]:
        mixin, test = key.split(".")
        if mixin not in classes or not hasattr(classes[mixin], test):
            stale.append(key)
    assert not stale, f"listed but not in this Python's test_concurrent_futures: {stale}"


def test_every_difference_has_its_replacement() -> None:
    assert set(REPLACEMENTS) == set(DIFFERENCES)
    assert not set(SKIPS) & set(DIFFERENCES)


def test_the_suite_ran_something() -> None:
    """Each stdlib mixin produced a class here with tests in it."""
    classes = _generated()
    assert set(classes) == {m.__name__ for m in MIXINS}
    for cls in classes.values():
        assert any(name.startswith("test_") for name in dir(cls))
