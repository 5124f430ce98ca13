"""The executors under comparison.

Every entry of :data:`EXECUTORS` is an :class:`ExecutorSpec`.  ``spec.open(workers)`` is
a context manager that builds a fresh executor with that many worker processes on this
machine, yields a :class:`concurrent.futures.Executor`, and on exit shuts it down (and
everything it started) within ``shutdown_timeout`` seconds, raising
:class:`ShutdownError` if that did not happen (the runner then reports the cell's
figures with a warning, or an error if the body had failed too).

Features only some executors have are described by capability flags (``spec.caps``);
a workload declares the flags it ``requires`` (its cell reads "n/a" where they are
missing) or checks them itself to choose a fallback (e.g. ``map(chunksize="static")``
only where :data:`MAP_STATIC` is present).

Adding an executor: write a factory ``def _mine(workers) -> ContextManager[Executor]``
(usually ``return _managed(ex, close)``), then append an ``ExecutorSpec`` to
``EXECUTORS``.  Imports of the executor's package belong inside the factory, so that an
unavailable package only removes that column.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import importlib
import importlib.metadata
import importlib.util
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

# --- capability flags --------------------------------------------------------------

#: ``map`` accepts ``chunksize="static"`` (one even chunk per worker).
MAP_STATIC = "map_static"
#: ``map`` honours an integer ``chunksize`` (dask's adapter accepts and ignores it).
MAP_CHUNKSIZE = "map_chunksize"
#: ``ex.map_unordered(fn, *its, chunksize=...)`` (yields in completion order).
MAP_UNORDERED = "map_unordered"
#: ``ex.context(setup, *args)`` -> an Executor whose tasks get setup's value first.
CONTEXT = "context"
#: ``ex.statistics()`` (workers, queued, running, done, failed, resubmitted).
STATISTICS = "statistics"
#: ``shutdown(wait, cancel_futures=...)`` is accepted.
CANCEL_FUTURES = "cancel_futures"
#: A worker that dies has its tasks transparently resubmitted (no broken executor).
RESUBMIT = "resubmit"
#: The worker processes are descendants of this (client) process, so a workload can
#: find them with psutil (e.g. to SIGKILL one).
LOCAL_PROCESSES = "local_processes"
#: ``workers=`` may be large (hundreds or more) on one machine.
MANY_WORKERS = "many_workers"


class ShutdownError(RuntimeError):
    """An executor did not shut down within its time limit (or its shutdown raised)."""


def call_bounded(fn: Callable[[], object], timeout: float, what: str) -> None:
    """Run ``fn()`` in a daemon thread; raise ShutdownError if it fails or overruns."""
    box: dict[str, BaseException] = {}

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # reported to the caller below
            box["exc"] = exc

    t = threading.Thread(target=target, name=f"bench-{what}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise ShutdownError(f"{what} did not finish within {timeout:g} s")
    if "exc" in box:
        exc = box["exc"]
        raise ShutdownError(f"{what} raised {type(exc).__name__}: {exc}") from exc


#: Time allowed to each executor's shutdown (set by the runner from --timeout).
SHUTDOWN_TIMEOUT = 30.0


@contextlib.contextmanager
def _managed(ex: cf.Executor, close: Callable[[bool], None]) -> Iterator[cf.Executor]:
    """Yield ``ex``; on exit call ``close(ok)`` (ok: the body did not raise), bounded.

    A failing close after a failing body is only printed (the body's exception wins).
    """
    try:
        yield ex
    except BaseException:
        try:
            call_bounded(lambda: close(False), SHUTDOWN_TIMEOUT, "shutdown")
        except ShutdownError as exc:
            print(f"[bench] also: {exc}", file=sys.stderr)
        raise
    call_bounded(lambda: close(True), SHUTDOWN_TIMEOUT, "shutdown")


# --- factories ---------------------------------------------------------------------


def _impexec(workers: int):
    import impexec

    ex = impexec.ClusterExecutor(workers=workers)

    def close(ok: bool) -> None:
        ex.shutdown(wait=True, cancel_futures=not ok)

    return _managed(ex, close)


def _process(workers: int):
    ex = cf.ProcessPoolExecutor(max_workers=workers)  # the platform's default context

    def close(ok: bool) -> None:
        ex.shutdown(wait=True, cancel_futures=not ok)

    return _managed(ex, close)


def _loky(workers: int):
    import loky

    # A fresh loky.ProcessPoolExecutor, not get_reusable_executor(): the reusable one
    # outlives shutdown-less use and would hide the start-up cost between workloads.
    ex = loky.ProcessPoolExecutor(max_workers=workers)

    def close(ok: bool) -> None:
        ex.shutdown(wait=True, kill_workers=not ok)

    return _managed(ex, close)


def _dask(workers: int):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,  # no bokeh server, no port clash
    )
    try:
        client = Client(cluster)
    except BaseException:
        cluster.close()
        raise
    # pure=False: the adapter forwards its kwargs to client.submit/map, whose default
    # pure=True gives identical calls (submit(noop) N times) one key, so dask would run
    # the task once and the benchmark would measure nothing.
    ex = client.get_executor(pure=False)

    def close(ok: bool) -> None:
        try:
            ex.shutdown(wait=ok)
        finally:
            try:
                client.close(timeout=SHUTDOWN_TIMEOUT / 2)
            finally:
                cluster.close(timeout=SHUTDOWN_TIMEOUT / 2)

    return _managed(ex, close)


class _SubmitMapExecutor(cf.Executor):
    """Another executor's submit with concurrent.futures' own map (one task per item).

    ipyparallel's executor hands map() to ``LoadBalancedView.imap``, which takes
    neither ``chunksize`` nor ``timeout``; the base class's map takes both (and, like
    dask's adapter, sends every item as its own task)."""

    def __init__(self, inner: cf.Executor):
        self._inner = inner

    def submit(self, fn, /, *args, **kwargs):
        return self._inner.submit(fn, *args, **kwargs)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._inner.shutdown(wait=wait)


@contextlib.contextmanager
def _ipyparallel(workers: int):
    import ipyparallel as ipp

    cluster = ipp.Cluster(n=workers, log_level=40)
    rc = cluster.start_and_connect_sync(activate=False)
    try:
        rc.wait_for_engines(workers, timeout=60)
        ex = _SubmitMapExecutor(
            rc.executor() if callable(getattr(rc, "executor", None)) else (rc.load_balanced_view().executor)
        )

        def close(ok: bool) -> None:
            try:
                ex.shutdown(wait=ok)
            finally:
                try:
                    rc.close()
                finally:
                    cluster.stop_cluster_sync()

        with _managed(ex, close) as managed:
            yield managed
    except BaseException:
        with contextlib.suppress(Exception):
            cluster.stop_cluster_sync()
        raise


def _parsl(workers: int):  # interchange.py must be on PATH (the venv's bin/)
    from parsl.concurrent import ParslPoolExecutor
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    # Parsl writes logs, submit scripts and certificates under run_dir (default
    # ./runinfo, i.e. into the checkout): keep them in a directory of the cell's own
    run_dir = tempfile.mkdtemp(prefix="bench-parsl-")
    config = Config(
        executors=[
            HighThroughputExecutor(
                max_workers_per_node=workers,
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
            )
        ],
        usage_tracking=0,
        run_dir=run_dir,
    )
    ex = ParslPoolExecutor(config=config)

    def close(ok: bool) -> None:
        try:
            ex.shutdown(wait=ok)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    return _managed(ex, close)


class _RayExecutor(cf.Executor):
    """The thinnest concurrent.futures face on Ray: a remote call per submit."""

    def __init__(self, ray) -> None:
        self._ray = ray
        self._remote: dict[object, object] = {}
        self._shutdown = False

    def submit(self, fn, /, *args, **kwargs):
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self._ray.remote(num_cpus=1)(fn)
        return remote.remote(*args, **kwargs).future()

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._shutdown = True


def _ray(workers: int):
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    ex = _RayExecutor(ray)

    def close(ok: bool) -> None:
        ex.shutdown()
        ray.shutdown()

    return _managed(ex, close)


# --- self-test executors: misbehave on purpose, to check the runner's safeguards ---


class _HangingExecutor(cf.Executor):
    """Accepts tasks and never runs them; its shutdown never returns."""

    def submit(self, fn, /, *args, **kwargs):
        return cf.Future()

    def shutdown(self, wait=True, *, cancel_futures=False):
        threading.Event().wait()


def _selftest_hang(workers: int):
    ex = _HangingExecutor()
    return _managed(ex, lambda ok: ex.shutdown())


def _selftest_stuck(workers: int):
    """The constructor never returns (nothing bounds it but the runner's kill)."""
    threading.Event().wait()


class _FailingExecutor(cf.ThreadPoolExecutor):
    """Every task fails."""

    def submit(self, fn, /, *args, **kwargs):
        return super().submit(_fail, fn)


def _fail(fn):
    raise RuntimeError(f"self-test: refusing to run {getattr(fn, '__name__', fn)}")


def _selftest_fail(workers: int):
    ex = _FailingExecutor(max_workers=workers)
    return _managed(ex, lambda ok: ex.shutdown(wait=True))


@contextlib.contextmanager
def _selftest_leak(workers: int):
    """A working ProcessPoolExecutor that also starts a process it never stops."""
    import subprocess

    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with _process(workers) as ex:
        yield ex


# --- the table of executors --------------------------------------------------------


@dataclass(frozen=True)
class ExecutorSpec:
    name: str  #: used by --only
    label: str  #: column header
    factory: Callable[[int], contextlib.AbstractContextManager[cf.Executor]]
    modules: tuple[str, ...]  #: must be importable for the executor to be available
    packages: tuple[str, ...]  #: distributions whose versions are reported
    caps: frozenset[str] = frozenset()
    optional: bool = False  #: skipped silently-with-a-note when not importable
    reference: bool = False  #: ratios are taken against this one
    description: str = ""
    notes: tuple[str, ...] = field(default=())
    hidden: bool = False  #: only run when named in --only (self-tests)

    def open(self, workers: int) -> contextlib.AbstractContextManager[cf.Executor]:
        """A context manager yielding a fresh executor with ``workers`` workers."""
        return self.factory(workers)

    def has(self, *caps: str) -> bool:
        return all(c in self.caps for c in caps)

    def available(self) -> tuple[bool, str]:
        """(True, "") if importable, else (False, reason) — imports the modules."""
        for mod in self.modules:
            if importlib.util.find_spec(mod.split(".")[0]) is None:
                return False, f"{mod} is not installed"
            try:
                importlib.import_module(mod)
            except Exception as exc:  # a half-written package, a broken install
                return False, f"import {mod} failed: {type(exc).__name__}: {exc}"
        return True, ""

    def versions(self) -> dict[str, str]:
        out = {}
        for dist in self.packages:
            try:
                out[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                out[dist] = "not installed"
        return out


EXECUTORS: tuple[ExecutorSpec, ...] = (
    ExecutorSpec(
        name="impexec",
        label="impexec",
        factory=_impexec,
        modules=("impexec",),
        packages=("impexec", "pyzmq", "cloudpickle"),
        caps=frozenset(
            {
                MAP_STATIC,
                MAP_CHUNKSIZE,
                MAP_UNORDERED,
                CONTEXT,
                STATISTICS,
                CANCEL_FUTURES,
                RESUBMIT,
                LOCAL_PROCESSES,
                MANY_WORKERS,
            }
        ),
        description="impexec.ClusterExecutor(workers=N)",
    ),
    ExecutorSpec(
        name="process",
        label="ProcessPool",
        factory=_process,
        modules=("concurrent.futures",),
        packages=(),
        caps=frozenset({MAP_CHUNKSIZE, CANCEL_FUTURES, LOCAL_PROCESSES}),
        reference=True,
        description="concurrent.futures.ProcessPoolExecutor(max_workers=N), default start method",
    ),
    ExecutorSpec(
        name="loky",
        label="loky",
        factory=_loky,
        modules=("loky",),
        packages=("loky", "cloudpickle"),
        caps=frozenset({MAP_CHUNKSIZE, LOCAL_PROCESSES}),
        description="loky.ProcessPoolExecutor(max_workers=N)",
    ),
    ExecutorSpec(
        name="dask",
        label="dask",
        factory=_dask,
        modules=("distributed",),
        packages=("dask", "distributed", "tornado", "msgpack"),
        caps=frozenset({RESUBMIT, LOCAL_PROCESSES}),
        description="distributed.Client(LocalCluster(n_workers=N, threads_per_worker=1,"
        " processes=True)).get_executor(pure=False)",
        notes=(
            "dask: the concurrent.futures adapter ignores map(chunksize=...): every "
            "item is its own task, so the four map rows measure the same thing.",
            "dask: get_executor(pure=False) — with the default pure=True identical "
            "calls share one key and run once (submit(noop) x N would be 1 task).",
        ),
    ),
    ExecutorSpec(
        name="ipyparallel",
        label="ipyparallel",
        factory=_ipyparallel,
        modules=("ipyparallel",),
        packages=("ipyparallel",),
        caps=frozenset({LOCAL_PROCESSES}),
        optional=True,
        description="ipyparallel.Cluster(n=N) load-balanced view executor (map: one task per item)",
        notes=(
            "ipyparallel: its executor's map (LoadBalancedView.imap) takes no chunksize or "
            "timeout, so the runner uses concurrent.futures' map over its submit: every item "
            "is its own task.",
        ),
    ),
    ExecutorSpec(
        name="parsl",
        label="parsl",
        factory=_parsl,
        modules=("parsl",),
        packages=("parsl",),
        caps=frozenset({LOCAL_PROCESSES}),
        optional=True,
        description="parsl.concurrent.ParslPoolExecutor(HighThroughputExecutor)",
    ),
    ExecutorSpec(
        name="ray",
        label="ray",
        factory=_ray,
        modules=("ray",),
        packages=("ray",),
        caps=frozenset(),
        optional=True,
        description="ray.init(num_cpus=N) + remote(fn).remote(...).future()",
    ),
)

#: Misbehaving executors that check the runner's timeouts, error cells and leftover
#: detection: ``--only process,selftest-hang,selftest-fail,selftest-leak --quick``
#: (``selftest-stuck`` takes the runner's hard kill: --timeout + ~40 s per cell).
SELFTESTS: tuple[ExecutorSpec, ...] = tuple(
    ExecutorSpec(
        name=f"selftest-{kind}",
        label=f"selftest-{kind}",
        factory=factory,
        modules=(),
        packages=(),
        caps=frozenset(caps),
        hidden=True,
        description=desc,
    )
    for kind, factory, caps, desc in (
        (
            "hang",
            _selftest_hang,
            {MAP_CHUNKSIZE},
            "never runs a task; shutdown never returns",
        ),
        ("stuck", _selftest_stuck, {MAP_CHUNKSIZE}, "its constructor never returns"),
        ("fail", _selftest_fail, {MAP_CHUNKSIZE}, "every task raises"),
        (
            "leak",
            _selftest_leak,
            {MAP_CHUNKSIZE, LOCAL_PROCESSES},
            "a ProcessPoolExecutor plus a process it never stops",
        ),
    )
)

BY_NAME = {spec.name: spec for spec in EXECUTORS + SELFTESTS}
REFERENCE = next(spec for spec in EXECUTORS if spec.reference)
