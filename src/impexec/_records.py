"""What the scheduler keeps track of: tasks, connected workers, and its decisions.

Records: :mod:`._scheduler` changes them, the broker reads them. A WorkerRecord also
mirrors the worker's caches (contexts set up, blobs held), to know what to send along.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

PENDING, ASSIGNED, DONE = "pending", "assigned", "done"


@dataclass(eq=False)
class Task:
    """A unit of dispatch: one submit, or one chunk of a map."""

    id: int
    frames: list[Any]  # serialized function, arguments and buffers
    future: Any = None  # opaque here; the broker resolves it
    ctx_id: int = 0
    flags: int = 0
    ser: int = 1  # wire code of the serializer that made ``frames``
    items: int = 1  # calls in this task (a map chunk holds several)
    blobs: tuple[tuple[bytes, Any], ...] = ()  # (digest, data) of large repeated payloads
    attempts: int = 0  # attempts charged: its worker died while running it
    suspect: bool = False  # was held by a worker that died: runs isolated (see assign)
    claimed: bool = False  # the broker set its future running (at its first dispatch)
    # what its current assignment carried that its worker did not hold: the setup, the
    # digests of blobs (forgotten again if the worker gives the task back unstarted)
    sent_setup: bool = False
    sent_blobs: frozenset[bytes] = frozenset()
    sent_seq: int = 0  # number of the message that carried its current assignment (0: unknown)
    state: str = PENDING
    worker: bytes | None = None
    lost_on: list[str] = field(default_factory=list)


@dataclass(eq=False)
class WorkerRecord:
    """What the broker knows of one connected worker."""

    ident: bytes
    name: str
    tag: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    last_seen: float = 0.0
    joined: float = 0.0
    assigned: dict[int, Task] = field(default_factory=dict)  # in send order; first runs
    contexts: OrderedDict[int, None] = field(default_factory=OrderedDict)  # LRU mirror
    blobs: OrderedDict[bytes, None] = field(default_factory=OrderedDict)  # LRU mirror
    draining: bool = False
    isolated: bool = False  # running a suspect task alone: gets nothing else meanwhile
    recalling: float = 0.0  # when it was asked to give back queued tasks (0: not asked)
    completed: int = 0
    items_done: int = 0  # calls of the tasks it completed (a chunk holds many)

    def hold_context(self, ctx_id: int, max_contexts: int) -> bool:
        """Mirror the worker's context cache for a task of *ctx_id*; True if the worker
        lacks the context (the setup goes along)."""
        if ctx_id in self.contexts:
            self.contexts.move_to_end(ctx_id)
            return False
        self.contexts[ctx_id] = None
        while len(self.contexts) > max_contexts:
            self.contexts.popitem(last=False)
        return True

    def hold_blobs(self, task: Task, max_blobs: int) -> frozenset[bytes]:
        """Mirror the worker's blob cache for *task*; return the digests it lacks.

        The worker touches and inserts the task's blobs in the same order when it runs the
        task (tasks run in the order sent), and evicts with the same bound, so the mirror
        stays exact; if it ever is not, the worker answers NEED_SETUP and the task is
        sent again with everything.
        """
        missing = set()
        for digest, _data in task.blobs:
            if digest in self.blobs:
                self.blobs.move_to_end(digest)
            else:
                missing.add(digest)
                self.blobs[digest] = None
                while len(self.blobs) > max_blobs:
                    self.blobs.popitem(last=False)
        return frozenset(missing)

    def forget(self, task: Task, *, sent_only: bool) -> None:
        """Drop *task*'s context and blobs from the mirror: those its assignment carried
        (*sent_only*), or all of them (the worker said it lacks one)."""
        if task.sent_setup or not sent_only:
            self.contexts.pop(task.ctx_id, None)
        for digest in task.sent_blobs if sent_only else (d for d, _data in task.blobs):
            self.blobs.pop(digest, None)


@dataclass
class Assignment:
    worker: WorkerRecord
    task: Task

    @property
    def with_setup(self) -> bool:
        """The worker does not hold the task's context: send the setup along."""
        return self.task.sent_setup

    @property
    def missing_blobs(self) -> frozenset[bytes]:
        """Blobs to send along (the worker lacks them)."""
        return self.task.sent_blobs


@dataclass
class LostTask:
    """A task that failed for good because its workers kept vanishing."""

    task: Task
    attempts: int
