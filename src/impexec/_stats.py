"""Statistics: the snapshot of an executor that ``ClusterExecutor.statistics()`` returns,
and the Counters the scheduler keeps for it.

The command line's status and live view read the same fields from the broker's status
replies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._records import Task


@dataclass(frozen=True)
class Statistics:
    """A snapshot of the executor (``ClusterExecutor.statistics()``).

    The counts of calls (``queued`` ... ``cancelled``) count items: a map chunk of 64
    calls counts 64, as a progress bar over the map does. The ``tasks_*`` counts are the
    same for units of dispatch (one submit, or one chunk).

    Attributes:
        workers: workers connected now.
        queued: calls waiting in the broker, not yet sent to a worker.
        running: calls held by workers (running, or queued there by prefetch).
        done: calls that completed with a result.
        failed: calls that completed with an exception (their own, or WorkerLostError);
            every call of a chunk that raised counts (none of them gives a result),
            except with ``map(..., return_exceptions=True)``, where only those that raised.
        resubmitted: calls that went back to the queue because their worker was lost.
        cancelled: calls cancelled before they were sent.
        workers_lost: workers that vanished (no goodbye).
        workers_joined: workers that connected since the start.
        rebalanced: queued tasks a busy worker gave back so that an idle one could run them.
        tasks_queued, tasks_running, tasks_done, tasks_failed, tasks_resubmitted,
        tasks_cancelled: the same counts in tasks (a chunk is one task).
    """

    workers: int = 0
    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    resubmitted: int = 0
    cancelled: int = 0
    workers_lost: int = 0
    workers_joined: int = 0
    rebalanced: int = 0
    tasks_queued: int = 0
    tasks_running: int = 0
    tasks_done: int = 0
    tasks_failed: int = 0
    tasks_resubmitted: int = 0
    tasks_cancelled: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Counters:
    """What happened so far, counted in tasks and in calls (a map chunk holds many)."""

    def __init__(self) -> None:
        self.tasks = dict.fromkeys(
            ("done", "failed", "resubmitted", "cancelled", "workers_lost", "workers_joined", "rebalanced"), 0
        )
        # the same outcomes counted in calls (a chunk holds task.items), and the calls
        # of open tasks: what statistics() reports to users
        self.items = dict.fromkeys(("done", "failed", "resubmitted", "cancelled", "open"), 0)

    def closed(self, task: Task, outcome: str, raised: int = 0) -> None:
        """A task closed with *outcome*; its calls leave the open count."""
        self.tasks[outcome] += 1
        self.items["open"] -= task.items
        if raised:  # a return_exceptions chunk: some of its calls raised, the rest did not
            self.items["failed"] += raised
            self.items["done"] += task.items - raised
        else:
            self.items[outcome] += task.items

    def resubmitted(self, task: Task) -> None:
        self.tasks["resubmitted"] += 1
        self.items["resubmitted"] += task.items

    def snapshot(self, workers: int, tasks_queued: int, tasks_running: int, items_running: int) -> Statistics:
        st, it = self.tasks, self.items
        return Statistics(
            workers=workers,
            queued=max(0, it["open"] - items_running),
            running=items_running,
            done=it["done"],
            failed=it["failed"],
            resubmitted=it["resubmitted"],
            cancelled=it["cancelled"],
            workers_lost=st["workers_lost"],
            workers_joined=st["workers_joined"],
            rebalanced=st["rebalanced"],
            tasks_queued=tasks_queued,
            tasks_running=tasks_running,
            tasks_done=st["done"],
            tasks_failed=st["failed"],
            tasks_resubmitted=st["resubmitted"],
            tasks_cancelled=st["cancelled"],
        )
