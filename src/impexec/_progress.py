"""progress(): a live tqdm bar over a map's results or a set of futures (opt-in).

Nothing in impexec draws a bar unless the caller wraps an iterable in :func:`progress`.
The bar shows done/total, rate and ETA (tqdm's own), and, given the executor, the
workers connected, the calls that failed and those resubmitted after a worker was lost,
refreshed by a small thread every :data:`REFRESH_S` seconds even while no result arrives
(and at once when an item it yields is a failure). Without tqdm installed,
:func:`progress` passes the items through unchanged and warns once.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import IO, TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ._executor import ClusterExecutor

logger = logging.getLogger(__name__)

#: Seconds between refreshes of the executor's figures (workers, resubmitted) on the
#: bar: often enough to see a worker go, rarely enough to cost the broker nothing.
REFRESH_S = 0.5

T = TypeVar("T")

#: The "tqdm is missing" warning was given (once per process: a loop of bars must not
#: repeat it).
_warned_no_tqdm = False


def progress(
    items: Iterable[T],
    *,
    executor: ClusterExecutor | None = None,
    total: int | None = None,
    desc: str | None = None,
    file: IO[str] | None = None,
    disable: bool | None = False,
    **tqdm_options: Any,
) -> Iterator[T]:
    """Yield ``items`` while a tqdm progress bar shows how far they got.

    ``items`` is either an iterable of results (e.g. ``ex.map(...)``), yielded unchanged
    and in order, or a collection of futures, yielded as they complete (like
    :func:`concurrent.futures.as_completed`).

    Args:
        items: results to count, or futures to wait for.
        executor: adds its connected workers and resubmissions to the bar.
        total: the number of items, when ``len(items)`` does not tell (a map over a
            generator); without it the bar shows a count and rate, but no ETA.
        desc: a label in front of the bar.
        file: where to draw (default: ``sys.stderr``, as tqdm).
        disable: True hides the bar; None hides it when ``file`` is not a terminal.
        **tqdm_options: passed to ``tqdm.tqdm`` (e.g. ``unit``, ``mininterval``).

    Yields:
        The items (results in input order, or futures in completion order).
    """
    try:
        from tqdm.auto import tqdm
    except ImportError:
        _warn_no_tqdm(disable, file)
        yield from _as_iterable(items)
        return
    # results come in bursts (a chunk's calls at once, after a wait): tqdm's default,
    # a moving average of recent rates, then swings between thousands of items per
    # second and an ETA of hours; the average since the start is the honest figure
    tqdm_options.setdefault("smoothing", 0)
    bar = tqdm(total=_total(items, total), desc=desc, file=file, disable=disable, **tqdm_options)
    live = _LiveBar(bar, executor)
    try:
        for item in _as_iterable(items):
            live.count(item)
            yield item
    finally:
        live.close()


def _warn_no_tqdm(disable: bool | None, file: IO[str] | None) -> None:
    """Say once per process that there is no bar, if one would have been drawn."""
    global _warned_no_tqdm
    would_draw = not disable if disable is not None else _is_terminal(file)
    if would_draw and not _warned_no_tqdm:
        _warned_no_tqdm = True
        # a warning, not a log line: it reaches stderr without logging configured,
        # where the user is looking for the bar
        warnings.warn(
            "impexec.progress() shows no bar: tqdm is not installed "
            "(pip install tqdm); the items pass through unchanged",
            RuntimeWarning,
            stacklevel=3,  # the loop over progress(), past this function and the generator
        )


def _total(items: Iterable[Any], total: int | None) -> int | None:
    if total is not None:
        return total
    try:
        return len(items)  # type: ignore[arg-type]  # any iterable: a TypeError says unsized
    except TypeError:
        return None


class _LiveBar:
    """A tqdm bar that counts the items and, given the executor, shows its figures.

    A small thread refreshes the figures every REFRESH_S seconds, and at once when an
    item is a failure (without waiting in the caller's loop for the broker's answer).
    """

    def __init__(self, bar: Any, executor: ClusterExecutor | None) -> None:
        self.bar = bar
        self.executor = executor if not bar.disable else None
        self.stop = threading.Event()
        self.poke = threading.Event()  # a failure was yielded: refresh the figures now
        self.failed = 0  # failures seen in the items themselves (return_exceptions, futures)
        self.refresher: threading.Thread | None = None
        if self.executor is not None:
            _show_statistics(bar, self.executor)
            self.refresher = threading.Thread(target=self._refresh, name="impexec-progress", daemon=True)
            self.refresher.start()

    def count(self, item: Any) -> None:
        if _is_failure(item) and not self.bar.disable:
            self.failed += 1
            if self.refresher is not None:
                self.poke.set()
            else:
                self.bar.set_postfix(failed=self.failed, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.stop.set()
        self.poke.set()
        if self.refresher is not None:
            self.refresher.join()
        if self.executor is not None:
            _show_statistics(self.bar, self.executor)
        self.bar.close()

    def _refresh(self) -> None:
        assert self.executor is not None
        while True:
            self.poke.wait(REFRESH_S)
            self.poke.clear()
            if self.stop.is_set():
                return
            _show_statistics(self.bar, self.executor)


def _is_terminal(file: IO[str] | None) -> bool:
    import sys

    stream = file if file is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _is_failure(item: Any) -> bool:
    """An exception yielded in place (``return_exceptions=True``), or a failed future."""
    if isinstance(item, BaseException):
        return True
    if isinstance(item, Future) and item.done() and not item.cancelled():
        return item.exception() is not None
    return False


def _as_iterable(items: Iterable[Any]) -> Iterator[Any]:
    if (
        isinstance(items, (list, tuple, set, frozenset))
        and items
        and all(isinstance(f, Future) for f in items)
    ):
        return _completed(items)
    return iter(items)


def _completed(futures: Iterable[Future[Any]]) -> Iterator[Future[Any]]:
    # as_completed without its timeout bookkeeping; wait() in slices so that closing
    # this generator never leaves a thread parked in a wait
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=REFRESH_S, return_when=FIRST_COMPLETED)
        yield from done


def _show_statistics(bar: Any, executor: ClusterExecutor) -> None:
    try:
        stats = executor.statistics()
    except Exception:  # the executor went away under us: the bar goes on without figures
        logger.debug("no statistics for the progress bar", exc_info=True)
        return
    bar.set_postfix(
        workers=stats.workers,
        resubmitted=stats.resubmitted,
        failed=stats.failed,
        refresh=True,
    )


__all__ = ["REFRESH_S", "progress"]
