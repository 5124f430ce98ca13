"""Futures, from the broker's side: claimed when their task leaves, settled after.

The broker decides under its lock what becomes of each future (a result message, an
error, a cancellation) and collects it; :func:`settle` applies the collection outside the
lock, because a future's callbacks may submit, which takes the lock again. Results are
unpickled there too: a slow or hostile payload holds up no other message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ._errors import SerializationError
from ._protocol import Flag, Message
from ._records import Task
from ._serialize import get_serializer

logger = logging.getLogger("impexec._broker")

#: What the broker decided for one future: (future, RESULT message), or
#: (future, ok, value) where ok None means "cancel".
Outcome = tuple[Any, ...]


def claim(task: Task) -> bool:
    """Mark *task*'s future running as it is first sent; False if it was cancelled."""
    if task.claimed:  # a resubmitted task: claimed at its first dispatch
        return True
    task.claimed = True  # a plain attribute: Future.running() takes the future's lock
    return bool(task.future.set_running_or_notify_cancel())


def settle(outcomes: Iterable[Outcome]) -> None:
    """Apply outcomes collected under the broker's lock; one failing never stops the rest."""
    for item in outcomes:
        try:
            if len(item) == 2:
                resolve_message(*item)
            else:
                resolve(*item)
        except BaseException:  # never let one future take the broker down
            logger.exception("could not resolve a future")


def resolve_message(future: Any, msg: Message) -> None:
    """Unpickle a RESULT's payload (its signature was verified) into its future.

    Whatever unpickling raises, ``BaseException`` included (a payload whose
    ``__reduce__`` calls ``sys.exit``), lands in this future and nowhere else.
    """
    ok = bool(msg.flags & Flag.OK)
    try:
        value = get_serializer(msg.serializer).loads(msg.frames)
    except BaseException as exc:
        ok = False
        value = SerializationError(
            f"the {'result' if msg.flags & Flag.OK else 'exception'} of the task could not "
            f"be deserialized on the client: {type(exc).__name__}: {exc}"
        )
        value.__cause__ = exc
    resolve(future, ok, value)


def resolve(future: Any, ok: bool | None, value: Any) -> None:
    """Set *future*'s result (ok), exception (not ok) or cancel it (None); first one wins."""
    if ok is None:
        future.cancel()
        return
    try:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    except Exception:  # cancelled or already resolved (InvalidStateError): first one wins
        logger.debug("future already resolved", exc_info=True)
