"""Context: an Executor view whose tasks get the value of a setup run once per worker."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, wait
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._executor import ClusterExecutor

_ids = itertools.count(1)


class Context(Executor):
    """Tasks submitted here run as ``fn(setup_value, *args, **kwargs)`` on a worker.

    Created by :meth:`ClusterExecutor.context`. The setup runs lazily, at most once per
    worker, the first time that worker runs a task of this context, and its value stays
    cached there (a worker keeps up to ``max_contexts`` contexts, least recently used
    evicted and set up again when needed). A setup that raises fails this context's tasks
    on that worker with its exception; the failure is cached like a value, so the setup
    is not re-run on that worker for every task.

    ``close()``, ``shutdown()`` or leaving the ``with`` block waits for the context's tasks
    and drops the cached value on every worker that holds it.
    """

    def __init__(self, executor: ClusterExecutor, setup: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]):
        self._ex = executor
        self.id = next(_ids)
        self._lock = threading.Lock()
        self._closed = False
        self._futures: set[Future[Any]] = set()
        frame = executor._dumps_once(setup, (setup, args, kwargs), "the context's setup")
        executor._broker.register_context(self.id, [frame], executor._ser.code)

    def _track(self, fut: Future[Any]) -> Future[Any]:
        with self._lock:
            self._futures.add(fut)
        fut.add_done_callback(self._untrack)
        return fut

    def _untrack(self, fut: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(fut)

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("cannot schedule new futures after the context was closed")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Submit ``fn(setup_value, *args, **kwargs)``; see :meth:`ClusterExecutor.submit`."""
        self._check()
        return self._track(self._ex._submit(fn, args, kwargs, ctx_id=self.id))

    def _submit_chunk(self, fn: Callable[..., Any], fn_frame: bytes, chunk: list[tuple[Any, ...]]) -> Future[Any]:
        self._check()
        return self._track(self._ex._submit_chunk(fn, fn_frame, chunk, ctx_id=self.id))

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int | str = 1, buffersize: int | None = None) -> Iterator[Any]:
        """Like :meth:`ClusterExecutor.map`, each call getting the setup value first."""
        self._check()
        return self._ex._map(fn, iterables, timeout, chunksize, buffersize, self, ordered=True)

    def map_unordered(self, fn: Callable[..., Any], *iterables: Iterable[Any], chunksize: int | str = 1,
                      buffersize: int | None = None, timeout: float | None = None) -> Iterator[Any]:
        """Like :meth:`ClusterExecutor.map_unordered`, each call getting the setup value first."""
        self._check()
        return self._ex._map(fn, iterables, timeout, chunksize, buffersize, self, ordered=False)

    def close(self) -> None:
        """Wait for this context's tasks, then drop its cached value on every worker."""
        self.shutdown(wait=True)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            already = self._closed
            self._closed = True
            pending = list(self._futures)
        if cancel_futures:
            for f in pending:
                f.cancel()
        if already and not wait:
            return
        if wait:
            wait_all(pending)
            self._drop()
        else:
            threading.Thread(target=lambda: (wait_all(pending), self._drop()),
                             name="impexec-context-close", daemon=True).start()

    def _drop(self) -> None:
        broker = self._ex._broker
        if not broker.stopped.is_set():
            broker.enqueue(lambda: broker.drop_context(self.id))

    @property
    def closed(self) -> bool:
        return self._closed


def wait_all(futures: list[Future[Any]]) -> None:
    if futures:
        wait(futures)
