"""Sweeps that keep going past failures: ``map(..., return_exceptions=True)``.

A sweep over many parameters wants every result and every error, in order, with the
batching of ``chunksize`` and the setup of a context; and the figures of
``statistics()`` count the calls, as a progress bar over the map does.
"""

from __future__ import annotations

from concurrent.futures import CancelledError, Future

import pytest

import sweep_tasks as st
from impexec import SerializationError, WorkerLostError
from impexec._mapping import RaisedItem, _chunk_outcome

N = 300
WAIT = 120


def check_sweep(out, xs, scale=1):
    assert len(out) == len(xs)
    for x, got in zip(xs, out, strict=True):
        if x % 7 == 3:
            assert isinstance(got, ValueError), (x, got)
            assert str(got) == f"no fit for {x}"
            # the worker's traceback travels with it, as with a raising submit
            assert "no fit for" in str(got.__cause__)
        else:
            assert got == x * x * scale, (x, got)


@pytest.mark.parametrize("chunksize", [1, 16, "auto", "static"])
def test_map_yields_each_result_or_exception_in_order(executor, chunksize):
    xs = list(range(N))
    out = list(executor.map(st.evaluate, xs, chunksize=chunksize, return_exceptions=True, timeout=WAIT))
    check_sweep(out, xs)


def test_map_without_the_option_still_stops_at_the_first_failure(executor):
    it = executor.map(st.evaluate, range(N), chunksize=1, timeout=WAIT)
    assert [next(it) for _ in range(3)] == [0, 1, 4]
    with pytest.raises(ValueError, match="no fit for 3"):
        next(it)
    chunked = executor.map(st.evaluate, range(N), chunksize=16, timeout=WAIT)
    with pytest.raises(ValueError, match="no fit for 3"):  # the chunk's other items go with it
        next(chunked)


def test_map_over_several_inputs(executor):
    xs = list(range(100))
    out = list(
        executor.map(st.evaluate_pair, xs, [1] * 100, chunksize=8, return_exceptions=True, timeout=WAIT)
    )
    for x, got in zip(xs, out, strict=True):
        assert isinstance(got, ValueError) if x % 7 == 3 else got == x * x + 1


def test_map_unordered_yields_every_item_once(executor):
    xs = list(range(N))
    out = list(
        executor.map_unordered(st.evaluate, xs, chunksize="auto", return_exceptions=True, timeout=WAIT)
    )
    values = sorted(v for v in out if not isinstance(v, BaseException))
    errors = sorted(str(v) for v in out if isinstance(v, ValueError))
    assert values == sorted(x * x for x in xs if x % 7 != 3)
    assert errors == sorted(f"no fit for {x}" for x in xs if x % 7 == 3)
    assert len(out) == N


def test_context_map_keeps_going(executor):
    with executor.context(st.make_model, 10) as ctx:
        xs = list(range(N))
        out = list(ctx.map(st.with_model, xs, chunksize="auto", return_exceptions=True, timeout=WAIT))
        check_sweep(out, xs, scale=10)
        out = list(ctx.map_unordered(st.with_model, xs, chunksize=32, return_exceptions=True, timeout=WAIT))
        assert sum(isinstance(v, ValueError) for v in out) == sum(x % 7 == 3 for x in xs)


def test_failed_setup_gives_its_exception_for_every_item(executor):
    with executor.context(st.make_model, 1, fail=True) as ctx:
        out = list(ctx.map(st.with_model, range(40), chunksize=8, return_exceptions=True, timeout=WAIT))
    assert len(out) == 40
    assert all(isinstance(v, RuntimeError) and "did not load" in str(v) for v in out)


def test_an_exception_that_does_not_pickle_costs_only_its_item(executor):
    out = list(
        executor.map(
            st.unpicklable_error_at, range(20), [7] * 20, chunksize=20, return_exceptions=True, timeout=WAIT
        )
    )
    assert out[:7] == list(range(7)) and out[8:] == list(range(8, 20))
    assert isinstance(out[7], SerializationError)
    assert "Unpicklable" in str(out[7])


def test_a_chunk_that_kills_its_worker_gives_worker_lost_for_its_items(make_executor):
    ex = make_executor(2, max_retries=0)
    out = list(ex.map(st.kill_at, range(40), [13] * 40, chunksize=10, return_exceptions=True, timeout=WAIT))
    assert out[:10] == list(range(10)) and out[20:] == list(range(20, 40))
    assert all(isinstance(v, WorkerLostError) for v in out[10:20])


def test_statistics_count_items_not_chunks(executor):
    """A 300-item map in chunks of 16 ends with done=300, not with the 19 chunks."""
    assert len(list(executor.map(st.identity, range(N), chunksize=16, timeout=WAIT))) == N
    stats = executor.statistics()
    assert (stats.done, stats.failed, stats.queued, stats.running) == (N, 0, 0, 0)
    assert stats.tasks_done == -(-N // 16)


def test_statistics_count_the_items_that_raised(executor):
    out = list(executor.map(st.evaluate, range(N), chunksize=16, return_exceptions=True, timeout=WAIT))
    n_failed = sum(isinstance(v, ValueError) for v in out)
    stats = executor.statistics()
    assert n_failed == sum(x % 7 == 3 for x in range(N))
    assert (stats.done, stats.failed) == (N - n_failed, n_failed)
    assert (stats.tasks_done, stats.tasks_failed) == (-(-N // 16), 0)


def test_a_raising_chunk_counts_all_its_items_failed(executor):
    with pytest.raises(ValueError):
        list(executor.map(st.evaluate, range(16), chunksize=16, timeout=WAIT))
    stats = executor.statistics()
    assert (stats.failed, stats.done, stats.tasks_failed) == (16, 0, 1)


# -- the unpacking of one chunk, on plain futures ---------------------------------------
def test_chunk_outcome_unpacks_and_spreads():
    ok: Future = Future()
    err = ValueError("x")
    ok.set_result([1, RaisedItem(err), 3])
    assert _chunk_outcome(ok, 3, True) == [1, err, 3]
    failed: Future = Future()
    failed.set_exception(KeyError("k"))
    got = _chunk_outcome(failed, 2, True)
    assert len(got) == 2 and all(isinstance(v, KeyError) for v in got)
    with pytest.raises(KeyError):
        _chunk_outcome(failed, 2, False)
    cancelled: Future = Future()
    cancelled.cancel()
    got = _chunk_outcome(cancelled, 2, True)
    assert len(got) == 2 and all(isinstance(v, CancelledError) for v in got)
