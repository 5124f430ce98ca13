"""Context: an Executor view whose tasks get the value of a setup run once per worker.

Life of a context (see docs/contexts.md)::

    ex.context(setup, *args)   pickle (setup, args, kwargs) once; the broker keeps the frame
    ctx.submit(fn, x)          TASK(ctx_id) → the scheduler sends the setup frame along
                               (Flag.HAS_SETUP) to a worker it does not know to hold it
    on the worker              the first task runs setup(*args) and caches the value (or the
                               exception); every task runs fn(value, x); least recently
                               used contexts are evicted beyond max_contexts, and a worker
                               that lacks one answers NEED_SETUP, so the task comes again
                               with the setup
    ctx.close()                wait for the context's tasks; DROP_CONTEXT to its holders
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from typing import Any, Protocol

from ._mapping import MapCall, MappingExecutor

_ids = itertools.count(1)

#: Submits one map chunk of a context (see ContextHost.submit_chunk).
SubmitChunk = Callable[..., Future[Any]]


class ContextHost(Protocol):
    """The executor as its contexts see it: all a Context asks of it.

    :meth:`ClusterExecutor.context` hands one to each Context it makes, so that a context
    depends on these calls only and on none of the executor's private members.
    """

    def open(
        self, ctx_id: int, setup: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[[], None]:
        """Pickle the setup and register it under *ctx_id*; return the call that forgets
        it again (on the broker and on every worker holding its value).

        The returned call becomes the context's finalizer, so it must not refer to the
        executor (a forgotten context would keep a forgotten executor alive).

        Raises:
            SerializationError: the setup or its arguments cannot be pickled (named).
        """
        ...

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], ctx_id: int
    ) -> Future[Any]:
        """Serialize and queue ``fn(setup_value, *args, **kwargs)``, as the executor's submit."""
        ...

    def submit_chunk(
        self,
        fn: Callable[..., Any],
        fn_frame: bytes,
        chunk: list[Any],
        ctx_id: int,
        bare: bool,
        item_errors: bool,
    ) -> Future[Any]:
        """Queue one map chunk (calls of the already pickled *fn_frame*)."""
        ...

    def map(self, call: MapCall, submit_chunk: SubmitChunk) -> Iterator[Any]:
        """The executor's map, each chunk submitted through *submit_chunk*."""
        ...


class Context(MappingExecutor):
    """Tasks submitted here run as ``fn(setup_value, *args, **kwargs)`` on a worker.

    Created by :meth:`ClusterExecutor.context`. The setup runs lazily, at most once per
    worker, the first time that worker runs a task of this context, and its value stays
    cached there (a worker keeps up to ``max_contexts`` contexts, least recently used
    evicted and set up again when needed). A setup that raises fails this context's tasks
    on that worker with its exception; the failure is cached like a value, so the setup
    is not re-run on that worker for every task.

    Its ``map`` and ``map_unordered`` call ``fn(setup_value, *items)``. They consume the
    inputs lazily (at most ``buffersize`` chunks ahead), so iterate the result before
    closing the context: chunks not yet sent at ``close()`` raise RuntimeError when the
    iterator reaches them.

    ``close()``, ``shutdown()`` or leaving the ``with`` block waits for the context's tasks
    and drops the cached value on every worker that holds it. A context that is garbage
    collected without being closed is dropped the same way (it has no open task then:
    each of its futures refers to it).
    """

    def __init__(
        self, host: ContextHost, setup: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ):
        self._host = host
        self.id = next(_ids)
        self._name = getattr(setup, "__qualname__", type(setup).__name__)
        # reentrant: pickling an argument may run user code that submits here
        self._lock = threading.RLock()
        self._closed = False
        self._futures: set[Future[Any]] = set()
        self._release = weakref.finalize(self, host.open(self.id, setup, args, kwargs))
        self._release.atexit = False  # at exit the executor's own shutdown ends everything

    def _submitted(self, submit: Callable[[], Future[Any]]) -> Future[Any]:
        # check and registration under one lock: a close() that starts meanwhile either
        # sees this future (and waits for it) or makes this submit raise
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after the context was closed")
            fut = submit()
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
        """Schedule ``fn(setup_value, *args, **kwargs)`` and return its Future.

        Raises:
            RuntimeError: after :meth:`close` (or after the executor's shutdown).
            SerializationError: ``fn`` or an argument cannot be serialized (named).
        """
        return self._submitted(lambda: self._host.submit(fn, args, kwargs, self.id))

    def _submit_chunk(
        self,
        fn: Callable[..., Any],
        fn_frame: bytes,
        chunk: list[Any],
        bare: bool = False,
        item_errors: bool = False,
    ) -> Future[Any]:
        return self._submitted(
            lambda: self._host.submit_chunk(fn, fn_frame, chunk, self.id, bare, item_errors)
        )

    def _map(self, call: MapCall) -> Iterator[Any]:
        self._check()
        return self._host.map(call, self._submit_chunk)

    def close(self) -> None:
        """Wait for this context's tasks, then drop its cached value on every worker."""
        self.shutdown(wait=True)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; once the submitted ones are done, drop the setup everywhere.

        Args:
            wait: block until the context's tasks are done and the drop is sent.
            cancel_futures: cancel the context's tasks not yet sent to a worker.
        """
        with self._lock:
            self._closed = True
            pending = list(self._futures)
        if cancel_futures:
            for f in pending:
                f.cancel()
        if wait:
            _wait_all(pending)
            self._release()
        elif self._release.alive:
            threading.Thread(
                target=self._release_when_done, args=(pending,), name="impexec-context-close", daemon=True
            ).start()

    def _release_when_done(self, pending: list[Future[Any]]) -> None:
        _wait_all(pending)
        self._release()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` or :meth:`shutdown` was called."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._futures)} pending"
        return f"<Context {self.id} ({self._name}) {state}>"


def _wait_all(futures: list[Future[Any]]) -> None:
    if futures:
        wait(futures)
