"""Chunk planning and lazy, bounded map iterators (ordered and unordered).

A chunk is one task whose arguments are a list of argument tuples; the worker calls the
function on each and returns the list (CPython's ``_process_chunk``). ``chunksize`` moves
between dynamic scheduling (1: one call per dispatch, best balance) and static
scheduling (``"static"``: one chunk per worker, least overhead).
"""

from __future__ import annotations

import itertools
import math
import queue
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Executor, Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from dataclasses import dataclass
from typing import Any

#: "auto" aims at this many chunks per worker: enough to balance uneven tasks, few
#: enough that per-chunk overhead is amortized.
AUTO_CHUNKS_PER_WORKER = 8
#: "auto" on an input of unknown length uses chunks of this size.
AUTO_UNKNOWN_LENGTH_CHUNK = 16
#: Default buffersize (chunks in flight or read ahead) per worker, and its floor.
BUFFER_PER_WORKER = 4
MIN_BUFFERSIZE = 64

ChunkSize = int | str


def input_length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """The number of argument tuples ``zip(*iterables)`` yields, when knowable cheaply."""
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]  # TypeError: unsized
    except TypeError:
        return None


def plan_chunksize(chunksize: ChunkSize, n_items: int | None, n_workers: int) -> int:
    """Resolve ``chunksize`` (int, "static" or "auto") to a number of calls per chunk."""
    n_workers = max(1, n_workers)
    if isinstance(chunksize, bool):
        raise TypeError("chunksize must be an int, 'static' or 'auto'")
    if isinstance(chunksize, int):
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        return chunksize
    if chunksize == "static":
        if n_items is None:
            raise TypeError("chunksize='static' needs inputs with a length (a list, a range...)")
        return max(1, math.ceil(n_items / n_workers))
    if chunksize == "auto":
        if n_items is None:
            return AUTO_UNKNOWN_LENGTH_CHUNK
        return max(1, math.ceil(n_items / (n_workers * AUTO_CHUNKS_PER_WORKER)))
    raise ValueError(f"chunksize must be an int, 'static' or 'auto', not {chunksize!r}")


def default_buffersize(n_workers: int) -> int:
    return max(MIN_BUFFERSIZE, BUFFER_PER_WORKER * max(1, n_workers))


def check_buffersize(buffersize: int | None) -> None:
    if buffersize is not None and (not isinstance(buffersize, int) or isinstance(buffersize, bool)):
        raise TypeError("buffersize must be an integer or None")
    if buffersize is not None and buffersize < 1:
        raise ValueError("buffersize must be None or > 0")


def _slices(it: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def chunks(iterables: tuple[Iterable[Any], ...], size: int) -> Iterator[list[tuple[Any, ...]]]:
    return _slices(zip(*iterables), size)  # noqa: B905 (shortest input ends the map, as Executor.map does)


def bare_chunks(iterable: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Chunks of a map over one input: lists of the items themselves, not of 1-tuples.

    A list of ints pickles and unpickles 3-4x faster than a list of 1-tuples holding
    them, and the worker calls ``map(fn, chunk)`` in C (``Flag.BARE``)."""
    return _slices(iter(iterable), size)


SubmitChunk = Callable[[list[tuple[Any, ...]]], "Future[list[Any]]"]


class RaisedItem:
    """In a ``return_exceptions`` chunk's result list: the exception one call raised."""

    __slots__ = ("exc",)

    def __init__(self, exc: Any):
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        return RaisedItem, (self.exc,)


def _chunk_outcome(
    f: Future[list[Any]], n: int, return_exceptions: bool, timeout: float | None = None
) -> list[Any]:
    """The results of one finished chunk; with *return_exceptions*, exceptions in place.

    A chunk that failed as a whole (its context's setup raised, its worker was lost
    max_retries times, it was cancelled) gives its exception for each of its *n* items.
    """
    if not return_exceptions:
        return f.result(timeout)
    try:
        exc = f.exception(timeout)
    except CancelledError as cancelled:
        return [cancelled] * n
    if exc is not None:
        return [exc] * n
    return [r.exc if type(r) is RaisedItem else r for r in f.result()]


def _remaining(end_time: float | None) -> float | None:
    if end_time is None:
        return None
    left = end_time - time.monotonic()
    if left <= 0:
        # Future.result raises this class too; before Python 3.11 it is not the builtin
        raise FuturesTimeoutError()
    return left


class _Feed:
    """The chunks not yet submitted, and how to submit them.

    Both are let go once the inputs are exhausted: the submit function holds the
    executor, and an iterator that has nothing left to submit must not keep an executor
    nobody else references alive (the stdlib pools shut down when collected).
    """

    def __init__(self, submit: SubmitChunk, source: Iterator[list[Any]]):
        self._submit: SubmitChunk | None = submit
        self._source: Iterator[list[Any]] | None = source

    def take(self, n: int) -> list[tuple[Future[list[Any]], int]]:
        """Submit up to *n* more chunks: [(future, items in it)]."""
        if self._submit is None or self._source is None:
            return []
        out = [(self._submit(chunk), len(chunk)) for chunk in itertools.islice(self._source, n)]
        if len(out) < n:
            self._submit = self._source = None
        return out


def _handing_out(results: list[Any]) -> Iterator[Any]:
    """Yield the items of a chunk, dropping each as it goes: a map iterator must not keep
    results it has yielded alive (the caller may be streaming large objects)."""
    results.reverse()
    while results:
        yield results.pop()


def ordered(
    submit: SubmitChunk,
    source: Iterator[list[tuple[Any, ...]]],
    buffersize: int,
    timeout: float | None,
    return_exceptions: bool = False,
) -> Iterator[Any]:
    """Yield results in input order; at most *buffersize* chunks outstanding."""
    end_time = None if timeout is None else time.monotonic() + timeout
    feed = _Feed(submit, source)
    futures: deque[tuple[Future[list[Any]], int]] = deque(feed.take(buffersize))

    def gen() -> Iterator[Any]:
        try:
            while futures:
                head, n = futures[0]
                results = _chunk_outcome(head, n, return_exceptions, _remaining(end_time))
                futures.popleft()
                futures.extend(feed.take(1))
                del head
                yield from _handing_out(results)
        finally:
            for f, _n in futures:
                f.cancel()

    return gen()


def unordered(
    submit: SubmitChunk,
    source: Iterator[list[tuple[Any, ...]]],
    buffersize: int,
    timeout: float | None,
    return_exceptions: bool = False,
) -> Iterator[Any]:
    """Yield results as chunks complete; at most *buffersize* chunks outstanding."""
    end_time = None if timeout is None else time.monotonic() + timeout
    done: queue.SimpleQueue[Future[list[Any]]] = queue.SimpleQueue()
    outstanding: dict[Future[list[Any]], int] = {}

    feed = _Feed(submit, source)

    def launch(n: int) -> None:
        for f, size in feed.take(n):
            outstanding[f] = size
            f.add_done_callback(done.put)

    launch(buffersize)

    def gen() -> Iterator[Any]:
        try:
            while outstanding:
                try:
                    f = done.get(timeout=_remaining(end_time))
                except queue.Empty:
                    raise FuturesTimeoutError() from None
                results = _chunk_outcome(f, outstanding.pop(f, 0), return_exceptions)
                del f
                launch(1)
                yield from _handing_out(results)
        finally:
            for f in outstanding:
                f.cancel()

    return gen()


@dataclass(frozen=True)
class MapCall:
    """One call of ``map`` or ``map_unordered``, its arguments as the caller gave them."""

    fn: Callable[..., Any]
    iterables: tuple[Iterable[Any], ...]
    timeout: float | None
    chunksize: ChunkSize
    buffersize: int | None
    ordered: bool
    return_exceptions: bool


class MappingExecutor(Executor):
    """The ``map`` and ``map_unordered`` of ClusterExecutor and Context, written once.

    A subclass says how to run one :class:`MapCall` in ``_map`` (a Context sends its
    chunks with its setup); the public signatures, defaults and documentation live here.
    """

    def _map(self, call: MapCall) -> Iterator[Any]:
        raise NotImplementedError

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: ChunkSize = 1,
        buffersize: int | None = None,
        return_exceptions: bool = False,
    ) -> Iterator[Any]:
        """Return an iterator of ``fn`` over the inputs, in input order.

        Args:
            fn: the callable.
            *iterables: its arguments, consumed lazily.
            timeout: seconds from this call after which ``next()`` raises TimeoutError.
            chunksize: calls per dispatched task: an int (1 = fully dynamic), ``"static"``
                (one chunk per worker; the inputs need a length) or ``"auto"``.
            buffersize: chunks in flight or read ahead at most (default: a few per worker,
                at least 64), so huge or infinite inputs run in bounded memory.
            return_exceptions: yield a call's exception in its place instead of raising
                it (which ends the map), and go on with the other calls, also those of
                the same chunk (as ``asyncio.gather(..., return_exceptions=True)``). A
                chunk that fails as a whole (its worker lost ``max_retries`` times, its
                context's setup raised, cancelled) yields its exception for each item.
                ``timeout`` still raises TimeoutError from ``next()``.
        """
        return self._map(MapCall(fn, iterables, timeout, chunksize, buffersize, True, return_exceptions))

    def map_unordered(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        chunksize: ChunkSize = 1,
        buffersize: int | None = None,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> Iterator[Any]:
        """Like :meth:`map`, but yield results in the order they complete."""
        return self._map(MapCall(fn, iterables, timeout, chunksize, buffersize, False, return_exceptions))
