"""IMP.parallel's API (Manager, workers, contexts, tasks) on top of ClusterExecutor.

Code written for ``IMP.parallel`` runs with its import line changed::

    from impexec.compat import imp as parallel  # was: import IMP.parallel as parallel

    m = parallel.Manager()
    m.add_worker(parallel.LocalWorker())
    m.add_worker(parallel.LocalWorker())
    c = m.get_context(tasks.setup)                  # setup runs once per worker
    for dist in range(10):
        c.add_task(tasks.Task(dist))                # a callable taking setup's values
    for result in c.get_results_unordered():
        print(result)

IMP's semantics are kept: the value a context's setup returns is splatted into every
task's arguments (``task(*setup())``; a tuple or list gives several arguments), and a
context without a setup calls its tasks with no arguments. Where IMP.parallel would fail
(a setup returning ``None`` or a single non-sequence value), this layer passes no
argument or that one value. The old ``*Slave`` spellings are kept as aliases, as in IMP.

The names map onto impexec like this: ``Manager`` → one
:class:`~impexec.ClusterExecutor` started at the first ``get_results_unordered``;
``LocalWorker`` → one :class:`~impexec.LocalWorkers` process; ``SGEQsubWorkerArray(n,
options)`` → ``SGEWorkers(n, ...)``; ``Context`` → :meth:`ClusterExecutor.context`. A
worker runs one task at a time, and a task whose worker dies is run again on another
worker, as IMP does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from .._context import Context as _ExecContext
from .._errors import WorkerStartError
from .._executor import ClusterExecutor
from ..launchers.base import Launcher
from ..launchers.local import LocalWorkers

#: Seconds between checks for shutdown while waiting for the next result.
_WAIT_SLICE = 1.0


class Error(Exception):
    """Base class of the errors raised by this compatibility module (as in IMP)."""


class NoMoreWorkersError(Error):
    """Raised when no worker can run the tasks (none added, or none could start)."""


class NetworkError(Error):
    """Raised when the manager lost contact with every worker (kept for IMP code)."""


class RemoteError(Error):
    """Raised when a task (or its context's setup) raised on a worker.

    Attributes:
        exc: the original exception (also this error's ``__cause__``).
        traceback: the remote traceback, as text.
        worker: where it ran (None: impexec does not expose the worker per task).
    """

    def __init__(self, exc: BaseException, traceback: str, worker: Any = None):
        super().__init__(exc, traceback, worker)
        self.exc = exc
        self.traceback = traceback
        self.worker = worker

    def __str__(self) -> str:
        return (
            f"{type(self.exc).__name__}: {self.exc} from {self.worker or 'a worker'}\n"
            f"Remote traceback:\n{self.traceback}"
        )


# -- workers --------------------------------------------------------------------------
class Worker:
    """One worker (one process, one task at a time). Use a subclass."""

    def _launcher(self, python: str | None, count: int) -> Launcher:
        raise NotImplementedError


class LocalWorker(Worker):
    """A worker process on the manager's machine (→ :class:`~impexec.LocalWorkers`)."""

    def _launcher(self, python: str | None, count: int) -> Launcher:
        return LocalWorkers(count, python=python)

    def __repr__(self) -> str:
        return "<LocalWorker>"


class WorkerArray:
    """A group of workers started together, such as one batch-system job array."""

    def _launcher(self, python: str | None) -> Launcher:
        raise NotImplementedError


class SGEQsubWorkerArray(WorkerArray):
    """``numworker`` workers in one Grid Engine job array (→ ``SGEWorkers``).

    Args:
        numworker: the number of workers (array tasks).
        options: extra ``qsub`` options as one string, e.g. ``"-q long.q"``.

    Raises:
        ImportError: this impexec has no ``impexec.launchers.sge`` (SGEWorkers).
    """

    def __init__(self, numworker: int, options: str = ""):
        self._sge = _sge_workers_class()
        self._numworker = numworker
        self._options = options

    def _launcher(self, python: str | None) -> Launcher:
        # one ``#$`` directive line holds several options, as on the qsub command line
        extra = [self._options.strip()] if self._options.strip() else []
        return self._sge(self._numworker, python=python, extra=extra)

    def __repr__(self) -> str:
        return f"<SGEQsubWorkerArray {self._numworker} {self._options!r}>"


def _sge_workers_class() -> Callable[..., Launcher]:
    # imported here, not at module import: local-only users need no batch support
    try:
        from ..launchers.sge import SGEWorkers
    except ImportError as exc:
        raise ImportError(
            "SGEQsubWorkerArray needs impexec.launchers.sge.SGEWorkers (Grid Engine "
            f"support), which this impexec installation does not provide: {exc}"
        ) from exc
    return SGEWorkers


# -- manager and contexts -------------------------------------------------------------
class Manager:
    """Holds the workers and runs contexts' tasks on them (one ClusterExecutor).

    Args:
        python: the command that starts a Python able to import impexec (and your
            tasks' modules) on the workers; default: this interpreter.
        host: the name or address workers dial back to. Default: loopback when every
            worker is local, else this machine's host name (the broker then listens on
            all interfaces).
        output: IMP's worker output file pattern; accepted for compatibility. Local
            workers' stderr goes to this process's stderr; batch workers' output goes
            where their launcher puts it.
        **executor_options: passed to :class:`~impexec.ClusterExecutor` (e.g.
            ``heartbeat_timeout``, ``encrypt``, ``max_retries``).

    The executor starts at the first :meth:`Context.get_results_unordered`; workers must
    be added before that. :meth:`shutdown` (or leaving a ``with`` block, or interpreter
    exit) stops it.
    """

    def __init__(
        self,
        python: str | None = None,
        host: str | None = None,
        output: str = "slave%d.output",
        **executor_options: Any,
    ):
        self._python = python
        self._host = host
        self._output = output
        self._options = executor_options
        self._local = 0
        self._arrays: list[WorkerArray] = []
        self._lock = threading.Lock()
        self._executor: ClusterExecutor | None = None

    def add_worker(self, worker: Worker | WorkerArray) -> None:
        """Add a worker (e.g. :class:`LocalWorker`) or an array of them."""
        if self._executor is not None:
            raise RuntimeError("add workers before the first get_results_unordered()")
        if isinstance(worker, LocalWorker):
            self._local += 1
        elif isinstance(worker, WorkerArray):
            self._arrays.append(worker)
        else:
            raise TypeError(f"not a worker or worker array: {worker!r}")

    add_slave = add_worker

    def get_context(self, startup: Callable[[], Any] | None = None) -> Context:
        """Return a new :class:`Context`; ``startup()`` (if given) runs once per worker
        and its return values are passed to every task of the context."""
        return Context(self, startup)

    @property
    def executor(self) -> ClusterExecutor:
        """The ClusterExecutor behind this manager (started on first use)."""
        with self._lock:
            if self._executor is None:
                self._executor = self._start()
            return self._executor

    def _start(self) -> ClusterExecutor:
        launchers = [a._launcher(self._python) for a in self._arrays]
        if self._local:
            launchers.insert(0, LocalWorker()._launcher(self._python, self._local))
        if not launchers:
            raise NoMoreWorkersError("no workers were added to the Manager")
        options = dict(self._options)
        if "address" not in options:
            if self._host is None and not self._arrays:
                pass  # ClusterExecutor's default: loopback
            elif self._host in ("localhost", "127.0.0.1"):
                options["address"] = "tcp://127.0.0.1:0"
            else:
                options["address"] = "tcp://0.0.0.0:0"
                options.setdefault("advertise", self._host)
        return ClusterExecutor(launchers, **options)

    def shutdown(self) -> None:
        """Stop the workers and the executor (waits for running tasks)."""
        with self._lock:
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


class Context:
    """A set of tasks that share one setup (``startup``), run on the manager's workers.

    Created by :meth:`Manager.get_context`.
    """

    def __init__(self, manager: Manager, startup: Callable[[], Any] | None = None):
        self._manager = manager
        self._startup = startup
        self._tasks: list[Callable[..., Any]] = []
        self._ctx: _ExecContext | None = None

    def add_task(self, task: Callable[..., Any]) -> None:
        """Add a task: a picklable callable (a function, or an object with ``__call__``)
        that is called with the values the context's startup returned."""
        if not callable(task):
            raise TypeError(f"a task must be callable, not {task!r}")
        self._tasks.append(task)

    def get_results_unordered(self) -> Iterator[Any]:
        """Run the tasks added so far and yield their return values as they complete.

        Raises:
            RemoteError: a task or the startup raised on a worker (the other tasks of
                this call are cancelled).
            NoMoreWorkersError: no worker could be started.
        """
        submit = self._submitter()  # may raise: the tasks then stay for a later call
        tasks, self._tasks = self._tasks, []
        futures = {submit(_call_task, task) for task in tasks}
        return _unordered_results(futures)

    def _submitter(self) -> Callable[..., Future[Any]]:
        ex = self._manager.executor
        if self._startup is None:
            return lambda fn, task: ex.submit(fn, (), task)
        if self._ctx is None or self._ctx.closed:
            self._ctx = ex.context(_run_startup, self._startup)
        return self._ctx.submit


def _unordered_results(futures: set[Future[Any]]) -> Iterator[Any]:
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, timeout=_WAIT_SLICE, return_when=FIRST_COMPLETED)
            for fut in done:
                yield _result(fut)
    finally:
        for fut in pending:  # an error, or the caller stopped iterating
            fut.cancel()


def _result(fut: Future[Any]) -> Any:
    exc = fut.exception()
    if exc is None:
        return fut.result()
    if isinstance(exc, WorkerStartError):
        raise NoMoreWorkersError(str(exc)) from exc
    raise RemoteError(exc, str(exc.__cause__ or ""), None) from exc


# -- run on the workers ---------------------------------------------------------------
def _run_startup(startup: Callable[[], Any]) -> tuple[Any, ...]:
    """The context's setup: IMP splats the startup's return value into each task."""
    value = startup()
    if value is None:
        return ()
    if isinstance(value, (tuple, list)):
        return tuple(value)
    return (value,)


def _call_task(setup_args: tuple[Any, ...], task: Callable[..., Any]) -> Any:
    return task(*setup_args)


# IMP.parallel's older spellings.
Slave = Worker
LocalSlave = LocalWorker
SlaveArray = WorkerArray
SGEQsubSlaveArray = SGEQsubWorkerArray

__all__ = [
    "Context",
    "Error",
    "LocalSlave",
    "LocalWorker",
    "Manager",
    "NetworkError",
    "NoMoreWorkersError",
    "RemoteError",
    "SGEQsubSlaveArray",
    "SGEQsubWorkerArray",
    "Slave",
    "SlaveArray",
    "Worker",
    "WorkerArray",
]
