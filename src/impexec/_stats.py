"""Statistics: the snapshot of an executor that ``ClusterExecutor.statistics()`` returns.

The scheduler fills it in (it holds the counts); the command line's status and live view
read the same fields from the broker's status replies.
"""

from __future__ import annotations

from dataclasses import dataclass


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
