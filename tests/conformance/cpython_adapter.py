"""The thin adapter between CPython's concurrent.futures tests and ClusterExecutor.

CPython's ``test.test_concurrent_futures`` builds its test classes from mixins
(``ExecutorTest``, ``WaitTests``, ...) and an executor mixin that says which pool to
construct, as ``executor_type(max_workers=N, **kwargs)``. This module supplies that
executor type (:class:`ClusterPoolExecutor`: a ClusterExecutor with N local workers) and
the two explicit lists the suite and docs/conformance.md share:

* :data:`SKIPS`: tests that read ProcessPoolExecutor internals; nothing else may be
  skipped.
* :data:`DIFFERENCES`: tests whose expectation the Executor contract leaves open and
  where ClusterExecutor chose otherwise; each is replaced by a test of what it does
  instead (``test_cpython_futures.py``).

It imports nothing from the ``test`` package, so the lists can be checked against the
docs on an interpreter that lacks CPython's test suite; and child interpreters started by
the shutdown tests import :class:`ClusterPoolExecutor` from here.
"""

from __future__ import annotations

import os
from typing import Any

from impexec import ClusterExecutor

#: "StdlibClass.test_name" → why it cannot run against ClusterExecutor.
SKIPS: dict[str, str] = {
    "ProcessPoolExecutorTest.test_saturation": (
        "counts ProcessPoolExecutor._processes and waits on a multiprocessing semaphore"
    ),
    "ProcessPoolExecutorTest.test_idle_process_reuse_one": (
        "counts ProcessPoolExecutor._processes (on-demand process spawning)"
    ),
    "ProcessPoolExecutorTest.test_idle_process_reuse_multiple": (
        "counts ProcessPoolExecutor._processes (on-demand process spawning)"
    ),
    "ProcessPoolExecutorTest.test_max_tasks_per_child": (
        "max_tasks_per_child and _processes are ProcessPoolExecutor options and internals"
    ),
    "ProcessPoolExecutorTest.test_max_tasks_per_child_defaults_to_spawn_context": (
        "max_tasks_per_child and _mp_context are ProcessPoolExecutor options and internals"
    ),
    "ProcessPoolExecutorTest.test_max_tasks_early_shutdown": (
        "max_tasks_per_child is a ProcessPoolExecutor option"
    ),
    "ProcessPoolExecutorTest.test_ressources_gced_in_workers": (
        "needs a multiprocessing manager shared with the workers"
    ),
    "ProcessPoolExecutorTest.test_python_finalization_error": (
        "patches the thread start of ProcessPoolExecutor's queue feeder (an internal)"
    ),
    "ProcessPoolShutdownTest.test_processes_terminate": (
        "reads ProcessPoolExecutor._processes and waits on a multiprocessing semaphore"
    ),
    "ProcessPoolShutdownTest.test_context_manager_shutdown": ("reads ProcessPoolExecutor._processes"),
    "ProcessPoolShutdownTest.test_del_shutdown": (
        "reads ProcessPoolExecutor._processes, _call_queue and _executor_manager_thread"
    ),
    "ProcessPoolShutdownTest.test_shutdown_no_wait": (
        "reads ProcessPoolExecutor._processes, _call_queue and _executor_manager_thread"
    ),
    "ExecutorDeadlockTest.test_shutdown_deadlock_pickle": (
        "reads ProcessPoolExecutor._executor_manager_thread"
    ),
    "ExecutorDeadlockTest.test_gh105829_should_not_deadlock_if_wakeup_pipe_full": (
        "patches ProcessPoolExecutor's manager thread and _ThreadWakeup (internals)"
    ),
}

_LOST = (
    "a task that kills its worker is run again on another worker, up to max_retries "
    "times, then fails with WorkerLostError; the executor is not broken (on a cluster, "
    "losing a node must not end a run)"
)

#: "StdlibClass.test_name" → what ClusterExecutor does instead, and why. Each such test
#: runs with the stdlib's own assertions, its expected error mapped to ours (or, where
#: that cannot be said by a mapping, as the replacement in test_cpython_futures.py).
DIFFERENCES: dict[str, str] = {
    "ProcessPoolExecutorTest.test_killed_child": _LOST,
    "ExecutorDeadlockTest.test_crash_during_func_exec_on_worker": _LOST,
    "ExecutorDeadlockTest.test_crash_at_task_unpickle": _LOST,
    "ExecutorDeadlockTest.test_crash_during_result_pickle_on_worker": _LOST,
    "ExecutorDeadlockTest.test_crash_big_data": _LOST,
    "ExecutorDeadlockTest.test_shutdown_deadlock": _LOST,
    "ExecutorDeadlockTest.test_exit_at_task_unpickle": (
        "SystemExit raised while the worker unpickles a task's arguments is that task's "
        "exception, as SystemExit raised by the task itself is; the worker lives on "
        "(the stdlib pools break)"
    ),
    "ExecutorDeadlockTest.test_error_at_task_unpickle": (
        "an error unpickling a task's arguments on the worker is that task's exception; "
        "the worker lives on (the stdlib pools break)"
    ),
    "ExecutorDeadlockTest.test_error_at_task_pickle": (
        "submit() pickles on the caller's thread and raises SerializationError (a "
        "PicklingError) naming the argument at once, instead of failing the future later"
    ),
    "ExecutorDeadlockTest.test_exit_during_result_pickle_on_worker": (
        "SystemExit raised while the worker pickles a result gives that task "
        "SerializationError and the worker lives on (the stdlib pool passes SystemExit on)"
    ),
    "ExecutorDeadlockTest.test_error_during_result_unpickle_in_result_handler": (
        "a result that cannot be unpickled on the client fails its own future with "
        "SerializationError; the executor is not broken"
    ),
    "ExecutorDeadlockTest.test_exit_during_result_unpickle_in_result_handler": (
        "SystemExit raised while the client unpickles a result fails that future with "
        "SerializationError; the executor is not broken"
    ),
    "ProcessPoolExecutorTest.test_max_workers_negative": (
        "workers=0 is valid: no local workers, they join with impexec-worker or through "
        "launchers; a negative count is still a ValueError"
    ),
    "ProcessPoolExecutorTest.test_traceback": (
        "the remote traceback is attached as impexec's RemoteTraceback, not the private "
        "concurrent.futures.process._RemoteTraceback; same .tb text and printing"
    ),
    "FailingInitializerMixin.test_initializer": (
        "a worker whose initializer raises fails to start; once every launched worker "
        "failed, futures and submit() get WorkerStartError with the workers' output (not "
        "BrokenExecutor: a worker that starts later, e.g. on another node, clears it)"
    ),
    "ProcessPoolShutdownTest.test_cancel_futures": (
        "tasks wait in the client's queue until a worker has connected, so right after "
        "construction every one is cancellable; the stdlib pools have already moved a few "
        "to their workers' queue (the test runs once the workers are connected)"
    ),
}

#: Tests of what a stdlib module tests that is not an executor (see docs/conformance.md).
NOT_RUN: dict[str, str] = {
    "test_future": "tests the Future class itself; ClusterExecutor returns the stdlib's Future",
    "test_thread_pool": "tests ThreadPoolExecutor (its threads, its default size)",
    "test_init.FailingInitializerResourcesTest": (
        "checks multiprocessing's resource tracker after a ProcessPoolExecutor test"
    ),
}


class ClusterPoolExecutor(ClusterExecutor):
    """A ClusterExecutor built the way the stdlib tests build pools.

    ``max_workers`` becomes that many local worker processes (default: the CPU count, as
    ProcessPoolExecutor). ``mp_context`` is accepted and ignored: workers are always
    fresh interpreters, as with the "spawn" start method. Everything else is passed on.
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None, **kwargs: Any):
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        super().__init__(max_workers, **kwargs)
