"""ClusterExecutor: the concurrent.futures.Executor users hold.

The caller's thread serializes each task (so ``submit`` can name what does not pickle)
and hands it to the broker thread; a launcher thread starts, watches and replaces
workers. See docs/internals.md for the life of a task.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from . import _lifecycle as lifecycle
from ._broker import Broker
from ._connection import CurveKeys, dial_info, parse_key
from ._context import Context, SubmitChunk
from ._errors import BrokenClusterError
from ._lifecycle import Core
from ._mapping import (
    MapCall,
    MappingExecutor,
    bare_chunks,
    check_buffersize,
    chunks,
    default_buffersize,
    input_length,
    plan_chunksize,
)
from ._mapping import ordered as _ordered_iter  # _map's "ordered" is its flag
from ._mapping import unordered as _unordered_iter
from ._scheduler import DEFAULT_MAX_CONTEXTS, Scheduler, Statistics, Task
from ._serialize import get_serializer
from ._submission import TaskMaker
from .launchers.base import Launcher
from .launchers.local import LocalWorkers

logger = logging.getLogger("impexec")


class ClusterExecutor(MappingExecutor):
    """An Executor whose workers run anywhere and talk to it over ZeroMQ.

    Args:
        workers: an int (that many :class:`LocalWorkers`), a :class:`Launcher`, a list of
            launchers, or None (no workers yet; they join with ``impexec-worker``).
        address: where the broker binds, e.g. ``"tcp://0.0.0.0:5555"``; default: loopback
            on a free port.
        advertise: host name or address workers should dial, when it is not the bind
            address (default: the bind address, or this host's name for a wildcard bind).
        max_retries: attempts beyond the first for a task whose worker vanished.
        heartbeat_interval: seconds between heartbeats (both directions).
        heartbeat_timeout: seconds of silence after which a worker (or, seen from a
            worker, the broker) counts as gone.
        serializer: "cloudpickle" (default), "dill" or "pickle".
        initializer: callable run once in every worker process at its start.
        initargs: arguments of ``initializer``.
        key: the HMAC key (bytes or hex text, at least 16 bytes); default: 32 random bytes.
        encrypt: encrypt traffic with CurveZMQ.
        prefetch: tasks a worker may hold beyond the one it runs; default: adaptive
            (1 for long tasks, more for very short ones).
        max_contexts: contexts a worker keeps set up at once (least recently used evicted).
    """

    def __init__(
        self,
        workers: int | Launcher | Sequence[Launcher] | None = None,
        *,
        address: str | None = None,
        advertise: str | None = None,
        max_retries: int = 3,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 10.0,
        serializer: str = "cloudpickle",
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        key: bytes | str | None = None,
        encrypt: bool = False,
        prefetch: int | None = None,
        max_contexts: int = DEFAULT_MAX_CONTEXTS,
    ):
        if heartbeat_interval <= 0 or heartbeat_timeout <= heartbeat_interval:
            raise ValueError("need 0 < heartbeat_interval < heartbeat_timeout")
        if max_contexts < 1:
            raise ValueError("max_contexts must be >= 1")
        self._tasks = TaskMaker(get_serializer(serializer))
        self._launchers = self._make_launchers(workers)
        init_frames = self._initializer_frames(initializer, initargs)
        self._key = parse_key(key) if key is not None else os.urandom(32)
        curve = CurveKeys.make() if encrypt else None
        self._scheduler = Scheduler(
            max_retries=max_retries,
            heartbeat_timeout=heartbeat_timeout,
            prefetch=prefetch,
            max_contexts=max_contexts,
        )
        self._shutdown_lock = threading.Lock()
        self._core = Core(self._scheduler, self._launchers)
        # a forked child shares this process's sockets but not its threads: it must not
        # use the executor (it would wait for ever on a broker that is not its own)
        self._pid = os.getpid()
        try:
            self._open(
                address, advertise, curve, init_frames, heartbeat_interval, heartbeat_timeout, max_contexts
            )
        except BaseException:
            self._core.undo_start()
            raise
        lifecycle.live.add(self)
        finalizer = weakref.finalize(self, Core.collected, self._core)
        finalizer.atexit = False  # at exit, _lifecycle's exit hook shuts everything down

    def _initializer_frames(
        self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]
    ) -> list[bytes] | None:
        if initializer is None:
            return None
        return [self._tasks.dumps_once(initializer, (initializer, tuple(initargs)), "the initializer")]

    def _open(
        self,
        address: str | None,
        advertise: str | None,
        curve: CurveKeys | None,
        init_frames: list[bytes] | None,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        max_contexts: int,
    ) -> None:
        """The second half of ``__init__``: the broker bound at *address* (and, for workers
        on this machine, at a Unix socket), the workers' connection, the threads."""
        session = os.urandom(8)
        self._broker = Broker(
            scheduler=self._scheduler,
            key=self._key,
            session=session,
            address=address or "tcp://127.0.0.1:0",
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            welcome_extra={"max_contexts": max_contexts},
            initializer_frames=init_frames,
            initializer_serializer=self._tasks.ser.code,
            curve_secret=curve.server_secret if curve else None,
            on_worker_joined=self._core.worker_joined,
            curve_clients=(curve.client_public,) if curve else (),
            extra_binds=self._core.local_binds(),
        )
        self._core.broker = self._broker  # from now on, a failure stops it
        self._conn = dial_info(self._broker.address, advertise, self._key, session, curve)
        self._launcher_thread = self._core.start(self._conn)

    # the shared state, under the names the executor's methods use
    @property
    def _shutdown(self) -> bool:
        return self._core.shutdown

    @property
    def _tmpdir(self) -> Path | None:
        return self._core.tmpdir

    @property
    def connection_file_path(self) -> Path:
        """The connection file in the private directory (written when first asked for)."""
        return self._core.connection_file_path()

    @staticmethod
    def _make_launchers(workers: Any) -> list[Launcher]:
        if workers is None:
            return []
        if isinstance(workers, bool):
            raise TypeError("workers must be an int, a Launcher, a list of launchers or None")
        if isinstance(workers, int):
            return [LocalWorkers(workers)] if workers else []
        if isinstance(workers, Launcher):
            return [workers]
        launchers = list(workers)
        for launcher in launchers:
            if not isinstance(launcher, Launcher):
                raise TypeError(f"not a Launcher: {launcher!r}")
        return launchers

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"this ClusterExecutor belongs to process {self._pid}, not to this forked "
                "child: its broker runs in the parent. Create executors after forking, or "
                "a new one in the child"
            )

    def _check_open(self) -> None:
        self._check_process()
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if lifecycle.interpreter_exiting():
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self._broker.ended:
            raise RuntimeError("cannot schedule new futures: the run was ended by `impexec end`")
        if self._broker.crash is not None or self._broker.stopped.is_set():
            raise BrokenClusterError(f"the impexec broker thread died: {self._broker.crash!r}")
        if self._core.start_error is not None:
            raise self._core.start_error

    def _enqueue(self, task: Task) -> Future[Any]:
        with self._shutdown_lock:
            self._check_open()
            self._broker.submit_now(task)
        future: Future[Any] = task.future  # the scheduler keeps it opaque (Any)
        return future

    def _submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], ctx_id: int = 0
    ) -> Future[Any]:
        self._check_open()
        return self._enqueue(self._tasks.call(fn, args, kwargs, ctx_id))

    def _submit_chunk(
        self,
        fn: Callable[..., Any],
        fn_frame: bytes,
        chunk: list[Any],
        ctx_id: int = 0,
        bare: bool = False,
        item_errors: bool = False,
    ) -> Future[Any]:
        """One map chunk: a list of argument tuples, or with *bare* of single arguments."""
        self._check_open()
        return self._enqueue(self._tasks.chunk(fn_frame, chunk, ctx_id, bare, item_errors))

    # -- the Executor interface ------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` on a worker and return its Future.

        Raises:
            RuntimeError: after :meth:`shutdown`.
            SerializationError: ``fn`` or an argument cannot be serialized (named).
            WorkerStartError: no worker could be started (the launchers gave up).
        """
        return self._submit(fn, args, kwargs)

    def _map(self, call: MapCall, submit_chunk: SubmitChunk | None = None) -> Iterator[Any]:
        """Run a map; a context passes *submit_chunk*, which sends its chunks with its setup."""
        fn, iterables, buffersize = call.fn, call.iterables, call.buffersize
        check_buffersize(buffersize)
        self._check_open()
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        n_workers = self.worker_count()
        size = plan_chunksize(call.chunksize, input_length(iterables), n_workers)
        fn_frame = self._tasks.dumps_fn(fn)
        submit_chunk = submit_chunk or self._submit_chunk
        bufsize = buffersize or default_buffersize(n_workers)
        bare = len(iterables) == 1
        source = bare_chunks(iterables[0], size) if bare else chunks(iterables, size)
        run = _ordered_iter if call.ordered else _unordered_iter
        item_errors = bool(call.return_exceptions)
        return run(
            lambda chunk: submit_chunk(fn, fn_frame, chunk, bare=bare, item_errors=item_errors),
            source,
            bufsize,
            call.timeout,
            item_errors,
        )

    def context(self, setup: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Context:
        """Return a :class:`Context`: an Executor whose tasks get ``setup(*args, **kwargs)``.

        The setup runs at most once per worker, lazily, and its value is passed as the
        first argument of each of the context's tasks on that worker.
        """
        self._check_open()
        return Context(_ContextHost(self), setup, args, kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; finish (or cancel) the queued ones; stop the workers.

        Args:
            wait: block until every pending future is done and the workers are stopped.
            cancel_futures: cancel the tasks not yet sent to a worker.
        """
        with self._shutdown_lock:
            first = not self._shutdown
            self._core.shutdown = True
        broker = self._broker
        if cancel_futures and not broker.stopped.is_set():
            broker.enqueue(broker.cancel_pending)
        if first:
            broker.stop_when_idle()
        if wait:
            broker.join()
            self._launcher_thread.join()
            lifecycle.live.discard(self)
        # without wait, it stays listed (weakly) and its launcher thread running:
        # the exit hook waits for its work and its workers

    # -- introspection -----------------------------------------------------------------------
    def statistics(self) -> Statistics:
        """A snapshot: workers, queued, running, done, failed, resubmitted (and more)."""
        self._check_process()
        if self._broker.stopped.is_set():
            return self._scheduler.statistics()
        return self._broker.statistics()

    def worker_count(self) -> int:
        """Workers connected now, or, before any connected, the number requested (≥ 1)."""
        n = len(self._scheduler.workers)
        if n:
            return n
        return max(1, sum(launcher.n for launcher in self._launchers))

    @property
    def max_workers(self) -> int:
        """The size of the pool, the number of tasks this executor can run at once (≥ 1).

        The number of workers the launchers keep running, or the number connected when
        more have joined (workers started with ``impexec-worker``). Unlike
        :meth:`worker_count` it does not shrink while launched workers are still
        starting: a library that sizes its queue of tasks by it keeps every worker busy
        once they are all there. Also readable as ``_max_workers``, the attribute of
        the standard library's pools that dask and others read.
        """
        connected = len(self._scheduler.workers)
        target = sum(launcher.n for launcher in self._launchers)
        return max(1, connected, target)

    @property
    def _max_workers(self) -> int:
        # the stdlib pools' attribute: dask's Executor scheduler and its "processes"
        # scheduler with pool= read it to decide how many tasks to keep in flight
        return self.max_workers

    def connection_file(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write the connection file (mode 0600) for workers and ``impexec status``.

        Returns:
            Its path. Without ``path``, a file in a private temporary directory that
            lives as long as the executor.
        """
        if path is None:
            return str(self.connection_file_path)
        return str(self._conn.write(path))

    @property
    def address(self) -> str:
        """The address workers dial (``tcp://host:port``)."""
        return self._conn.address

    @property
    def launchers(self) -> list[Launcher]:
        return list(self._launchers)

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else f"{len(self._scheduler.workers)} workers"
        return f"<ClusterExecutor {self.address} {state}>"


def _drop_context(broker: Broker, ctx_id: int) -> None:
    """Forget a context's setup on the broker and drop its value on every worker."""
    if not broker.stopped.is_set():
        broker.enqueue(lambda: broker.drop_context(ctx_id))


class _ContextHost:
    """The executor as one of its contexts sees it (``_context.ContextHost``)."""

    def __init__(self, ex: ClusterExecutor):
        self._ex = ex
        self.submit = ex._submit
        self.submit_chunk = ex._submit_chunk
        self.map = ex._map

    def open(
        self, ctx_id: int, setup: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[[], None]:
        tasks, broker = self._ex._tasks, self._ex._broker
        frame = tasks.dumps_once(setup, (setup, args, kwargs), "the context's setup")
        broker.register_context(ctx_id, [frame], tasks.ser.code)
        return functools.partial(_drop_context, broker, ctx_id)  # not the executor
