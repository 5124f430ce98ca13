"""Where :class:`._scheduler.Scheduler` looks for a worker: the pools of free slots.

Every connected worker that may take a task is in exactly one of two pools, by how much it
holds: ``idle`` (nothing) or ``partial`` (less than the capacity). A third set, ``full``,
keeps the workers that are out of both only because they hold ``capacity`` tasks, so that a
rise of the adaptive capacity finds them without a scan of every worker. Draining and
isolated workers are in none. Looking a worker up, filing it and picking one are O(1) in
the number of workers (the context-locality scan is bounded by LOCALITY_SCAN).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from ._records import WorkerRecord

#: How many workers with free slots are examined for one already holding a task's
#: context before falling back to any free worker (keeps assign O(1)).
LOCALITY_SCAN = 16


class Pools:
    """The idle, partial and full workers, kept in the order the scheduler picks from."""

    def __init__(self) -> None:
        # workers holding nothing, the most recently idle first: it is still spinning for
        # work and its caches are warm (sequential round trips then stay on one worker,
        # as fast as with one worker), and one that died idle drifts to the back
        self.idle: OrderedDict[bytes, WorkerRecord] = OrderedDict()
        # workers with a free slot; insertion order = who has waited longest
        self.partial: dict[bytes, WorkerRecord] = {}
        # out of both only because they hold `capacity` tasks (not draining, not
        # isolated): the only ones a rise of the adaptive capacity can return to a pool
        self.full: dict[bytes, WorkerRecord] = {}

    def join(self, w: WorkerRecord) -> None:
        """A new worker: idle, behind those that have been idle for less time."""
        self.idle[w.ident] = w

    def discard(self, ident: bytes) -> None:
        """The worker takes nothing more (it drains, or it is gone)."""
        self.idle.pop(ident, None)
        self.partial.pop(ident, None)
        self.full.pop(ident, None)

    def refile(self, w: WorkerRecord, capacity: int) -> None:
        """Put *w* in the pool that matches how many tasks it holds."""
        ident = w.ident
        held = len(w.assigned)
        self.full.pop(ident, None)
        if w.draining or w.isolated or held >= capacity:
            self.idle.pop(ident, None)
            self.partial.pop(ident, None)
            if not (w.draining or w.isolated):
                self.full[ident] = w
        elif held == 0:
            self.partial.pop(ident, None)
            if ident not in self.idle:
                self.idle[ident] = w
                self.idle.move_to_end(ident, last=False)
        else:
            self.idle.pop(ident, None)
            # to the back: the next task goes to another worker with free slots, so
            # prefetched work spreads round-robin (left in place, the first partial worker
            # took every task up to its capacity, which adaptive prefetch can make 65
            # after a burst of tiny tasks, while another worker idled)
            self.partial.pop(ident, None)
            self.partial[ident] = w

    def pick(self, ctx_id: int) -> WorkerRecord | None:
        """A worker with a free slot, idle ones first, preferring one holding *ctx_id*."""
        for pool in (self.idle, self.partial):
            if pool:
                return _holding(pool.values(), ctx_id) or next(iter(pool.values()))
        return None

    def pick_idle(self, ctx_id: int) -> WorkerRecord:
        """An idle worker (there must be one), preferring one holding *ctx_id*."""
        return _holding(self.idle.values(), ctx_id) or next(iter(self.idle.values()))

    def check(self, w: WorkerRecord, capacity: int) -> None:
        """Raise AssertionError if *w* is not where :meth:`refile` puts it (for tests)."""
        ident, held = w.ident, len(w.assigned)
        pooled = ident in self.idle or ident in self.partial
        assert sum(ident in p for p in (self.idle, self.partial, self.full)) <= 1, w
        if w.draining:
            assert not pooled and ident not in self.full, f"draining {w.name} in a pool"
        elif w.isolated:
            assert held > 0, f"{w.name} isolated with nothing to run"
            assert not pooled, f"isolated {w.name} in a pool"
        else:
            if held < capacity:
                assert pooled, f"{w.name} holds {held} < {capacity} tasks, in no pool"
            assert (ident in self.idle) == (held == 0 and pooled), w.name


def _holding(workers: Iterable[WorkerRecord], ctx_id: int) -> WorkerRecord | None:
    """The first of the first LOCALITY_SCAN + 1 *workers* that holds context *ctx_id*."""
    if not ctx_id:
        return None
    for n, w in enumerate(workers):
        if ctx_id in w.contexts:
            return w
        if n >= LOCALITY_SCAN:
            break
    return None
