"""Chunk planning and the lazy, bounded map iterators, driven with plain Futures."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import Any

import pytest

from impexec._mapping import (
    AUTO_CHUNKS_PER_WORKER,
    AUTO_UNKNOWN_LENGTH_CHUNK,
    MIN_BUFFERSIZE,
    check_buffersize,
    chunks,
    default_buffersize,
    input_length,
    ordered,
    plan_chunksize,
    unordered,
)


# -- planning --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("chunksize", "n_items", "n_workers", "expected"),
    [
        (1, 1000, 4, 1),
        (7, 1000, 4, 7),
        (7, None, 4, 7),
        ("static", 1000, 4, 250),
        ("static", 1001, 4, 251),  # every item in one of 4 chunks
        ("static", 3, 4, 1),
        ("static", 0, 4, 1),
        ("static", 10, 0, 10),  # no worker yet counts as one
        ("auto", 1000, 4, 1000 // (4 * AUTO_CHUNKS_PER_WORKER) + 1),
        ("auto", 10, 4, 1),
        ("auto", None, 4, AUTO_UNKNOWN_LENGTH_CHUNK),
    ],
)
def test_plan_chunksize(chunksize: Any, n_items: int | None, n_workers: int, expected: int) -> None:
    assert plan_chunksize(chunksize, n_items, n_workers) == expected


def test_static_gives_one_chunk_per_worker() -> None:
    for n_items in (1, 5, 99, 100, 101, 12345):
        for n_workers in (1, 2, 3, 8):
            size = plan_chunksize("static", n_items, n_workers)
            assert len(list(chunks((range(n_items),), size))) <= n_workers


def test_static_needs_a_length() -> None:
    with pytest.raises(TypeError, match="length"):
        plan_chunksize("static", None, 4)


@pytest.mark.parametrize("bad", [0, -3, "dynamic", 2.5, True, None])
def test_invalid_chunksize(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        plan_chunksize(bad, 10, 2)


def test_input_length() -> None:
    assert input_length((range(10), [1, 2, 3])) == 3
    assert input_length((range(10), iter(range(5)))) is None


def test_buffersize_checks_and_default() -> None:
    check_buffersize(None)
    check_buffersize(1)
    for bad, error in (
        (0, ValueError),
        (-1, ValueError),
        (1.5, TypeError),
        (True, TypeError),
    ):
        with pytest.raises(error):
            check_buffersize(bad)
    assert default_buffersize(1) == MIN_BUFFERSIZE
    assert default_buffersize(1000) >= 1000


# -- laziness --------------------------------------------------------------------------
class Counting:
    def __init__(self, limit: int | None = None) -> None:
        self.consumed = 0
        self.limit = limit

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count() if self.limit is None else range(self.limit):
            self.consumed = i + 1
            yield i


def test_chunks_are_lazy_and_zip_the_inputs() -> None:
    src = Counting()
    it = chunks((src, itertools.count(100)), 3)
    assert next(it) == [(0, 100), (1, 101), (2, 102)]
    assert src.consumed == 3
    assert list(chunks((range(7),), 3)) == [
        [(0,), (1,), (2,)],
        [(3,), (4,), (5,)],
        [(6,)],
    ]


class Recorder:
    """A submit function: records each chunk, returns a Future the test resolves."""

    def __init__(self, *, immediate: bool = True) -> None:
        self.immediate = immediate
        self.futures: list[Future[list[Any]]] = []
        self.chunks: list[list[tuple[Any, ...]]] = []

    def __call__(self, chunk: list[tuple[Any, ...]]) -> Future[list[Any]]:
        fut: Future[list[Any]] = Future()
        self.chunks.append(chunk)
        self.futures.append(fut)
        if self.immediate:
            fut.set_result([args[0] * 10 for args in chunk])
        return fut


@pytest.mark.parametrize("run", [ordered, unordered])
def test_bounded_read_ahead_on_infinite_input(run: Any) -> None:
    src = Counting()
    submit = Recorder()
    it = run(submit, chunks((src,), 2), 3, None)
    assert src.consumed <= 3 * 2  # only buffersize chunks read before the first next()
    out = list(itertools.islice(it, 10))
    assert sorted(out) == [i * 10 for i in range(10)]
    assert src.consumed <= 10 + (3 + 1) * 2
    it.close()


def test_ordered_yields_in_input_order_whatever_completes_first() -> None:
    submit = Recorder(immediate=False)
    it = ordered(submit, chunks((range(6),), 2), 10, None)
    for fut, chunk in reversed(list(zip(submit.futures, submit.chunks, strict=True))):
        fut.set_result([a[0] for a in chunk])
    assert list(it) == [0, 1, 2, 3, 4, 5]


def test_unordered_yields_in_completion_order() -> None:
    submit = Recorder(immediate=False)
    it = unordered(submit, chunks((range(4),), 1), 10, None)
    submit.futures[2].set_result(["c"])
    assert next(it) == "c"
    submit.futures[0].set_result(["a"])
    assert next(it) == "a"
    submit.futures[3].set_result(["d"])
    submit.futures[1].set_result(["b"])
    assert list(it) == ["d", "b"]


@pytest.mark.parametrize("return_exceptions", [False, True], ids=["raising", "return_exceptions"])
@pytest.mark.parametrize("timeout", [0.05, 0], ids=["waiting", "expired"])
@pytest.mark.parametrize("run", [ordered, unordered])
def test_timeout_raises_and_closing_cancels_the_rest(
    run: Any, timeout: float, return_exceptions: bool
) -> None:
    submit = Recorder(immediate=False)
    # a timeout ends the map even when call exceptions are yielded in place
    it = run(submit, chunks((range(5),), 1), 10, timeout, return_exceptions)
    # the class Future.result raises (not the builtin before Python 3.11), both orders
    with pytest.raises(FuturesTimeoutError):
        next(it)
    it.close()
    assert all(f.cancelled() for f in submit.futures)


@pytest.mark.parametrize("run", [ordered, unordered])
def test_abandoned_iterator_cancels_unsent_chunks(run: Any) -> None:
    submit = Recorder(immediate=False)
    it = run(submit, chunks((range(5),), 1), 10, None)
    submit.futures[0].set_result(["x"])
    assert next(it) == "x"
    it.close()
    assert all(f.cancelled() for f in submit.futures[1:])


def test_exception_of_a_chunk_is_raised_at_its_place() -> None:
    submit = Recorder(immediate=False)
    it = ordered(submit, chunks((range(3),), 1), 10, None)
    submit.futures[0].set_result(["ok"])
    submit.futures[1].set_exception(ValueError("chunk 1"))
    submit.futures[2].set_result(["never seen"])
    assert next(it) == "ok"
    with pytest.raises(ValueError, match="chunk 1"):
        next(it)
