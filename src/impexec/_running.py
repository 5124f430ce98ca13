"""Running one task on a worker: its function, context, blobs and result.

:class:`TaskRunner` is the part of :class:`._worker.Worker` that turns a TASK message into
a RESULT: the caches that make repeated work cheap (context setups, large payloads by
digest, functions sent by reference) and the rules that keep a task's failure its own.
"""

from __future__ import annotations

import time
import types
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ._errors import SerializationError
from ._mapping import RaisedItem
from ._protocol import Flag, Kind, Message
from ._serialize import BlobRef, ExceptionWithTraceback, _resolve, get_serializer

#: Cached unpickled functions (keyed by their pickled bytes; only those sent by reference).
FUNCTION_CACHE_SIZE = 128
_NAMED_TYPES = (types.FunctionType, types.BuiltinFunctionType)


class _SetupCache:
    """Values of context setups on this worker, least recently used evicted."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._entries: OrderedDict[Any, Any] = OrderedDict()

    def get(self, ctx_id: Any) -> Any:
        entry = self._entries.get(ctx_id)
        if entry is not None:
            self._entries.move_to_end(ctx_id)
        return entry

    def put(self, ctx_id: Any, entry: Any) -> None:
        self._entries[ctx_id] = entry
        self._entries.move_to_end(ctx_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def drop(self, ctx_id: int) -> None:
        self._entries.pop(ctx_id, None)


class TaskRunner:
    """Runs tasks (mixed into Worker, which sets the caches and provides ``_encode``)."""

    _fn_cache: OrderedDict[bytes, Any]
    _setups: _SetupCache
    _blobs: _SetupCache
    _max_frame: int
    _encode: Callable[..., list[Any]]

    def _take_blobs(self, msg: Message, first: int) -> int:
        """Store the blobs that came with *msg*, touch the others in table order.

        Returns the index of the frame after the blobs, or -1 if a blob the table says we
        hold is missing (the broker's mirror of this cache was wrong).
        """
        table = bytes(msg.frames[first])
        i = first + 1
        lacking = False
        for k in range(0, len(table) - 32, 33):
            digest = table[k : k + 32]
            if table[k + 32]:
                frame = msg.frames[i]
                i += 1
                # sent again though held (the broker forgot it after a recall): keep the
                # object we have, so a task sees the same object for the same payload
                if self._blobs.get(digest) is None:
                    self._blobs.put(digest, frame.bytes if hasattr(frame, "bytes") else bytes(frame))
            elif self._blobs.get(digest) is None:
                lacking = True
        return -1 if lacking else i

    def _blob(self, digest: bytes) -> Any:
        entry = self._blobs._entries.get(digest)
        if entry is None:
            raise RuntimeError("a payload the broker sent once is no longer cached on this worker")
        return entry

    def _load_fn(self, ser: Any, frame: Any) -> Any:
        data = frame.bytes if hasattr(frame, "bytes") else bytes(frame)
        fn = self._fn_cache.get(data)
        if fn is not None and _resolve(fn.__module__, fn.__qualname__) is fn:
            return fn
        fn = ser.loads([data])
        # Only a function that loaded as its module's own object is kept: loading the
        # bytes again would give that object anyway. One sent by value is loaded anew for
        # every task, as in ProcessPoolExecutor: a task that changes its globals, closure
        # cells or defaults must not change what the next task computes.
        if (
            type(fn) in _NAMED_TYPES
            and _resolve(getattr(fn, "__module__", None) or "", getattr(fn, "__qualname__", "")) is fn
        ):
            self._fn_cache[data] = fn
            if len(self._fn_cache) > FUNCTION_CACHE_SIZE:
                self._fn_cache.popitem(last=False)
        return fn

    def _context_value(self, msg: Message, ser: Any) -> tuple[bool, Any] | None:
        entry: tuple[bool, Any] | None = self._setups.get(msg.ctx_id)
        if entry is not None:
            return entry
        if not msg.flags & Flag.HAS_SETUP:
            return None
        try:
            setup, args, kwargs = ser.loads([msg.frames[0]])
            entry = (True, setup(*args, **kwargs))
        except BaseException as exc:
            entry = (False, ExceptionWithTraceback(exc, "(in the context's setup)\n"))
        self._setups.put(msg.ctx_id, entry)
        return entry

    def _run_task(self, msg: Message) -> list[Any]:
        """Run one TASK message; return the encoded RESULT (or a NEED_SETUP answer)."""
        started = time.perf_counter()
        ser = get_serializer(msg.serializer)
        first = 1 if msg.flags & Flag.HAS_SETUP else 0
        if msg.flags & Flag.HAS_BLOBS:
            first = self._take_blobs(msg, first)
        outcome = self._call(msg, ser, first) if first >= 0 else None
        if outcome is None:  # lacks the context, or a blob the broker thought we held
            return self._encode(
                Kind.RESULT, task_id=msg.task_id, flags=Flag.NEED_SETUP, serializer=msg.serializer
            )
        ok, value, raised = outcome
        run_us = int((time.perf_counter() - started) * 1e6)
        ok, frames = self._result_frames(ser, ok, value)
        return self._encode(
            Kind.RESULT,
            task_id=msg.task_id,
            flags=Flag.OK if ok else 0,
            ctx_id=raised,
            aux=run_us,
            serializer=msg.serializer,
            frames=frames,
        )

    def _call(self, msg: Message, ser: Any, first: int) -> tuple[bool, Any, int] | None:
        """(ok, value, calls that raised) of the task; None if its context is not here.

        The value is a result, a chunk's list of them, or the exception to send.
        """
        try:
            prefix: tuple[Any, ...] = ()
            if msg.ctx_id:
                entry = self._context_value(msg, ser)
                if entry is None:
                    return None
                if not entry[0]:
                    return False, entry[1], 0
                prefix = (entry[1],)
            fn_frame = msg.frames[first]
            if msg.flags & Flag.FN_BLOB:
                fn_frame = self._blob(bytes(fn_frame))
            fn = self._load_fn(ser, fn_frame)
            call = ser.loads(msg.frames[first + 1 :])
            if msg.flags & Flag.CHUNK:
                if msg.flags & Flag.ITEM_ERRORS:
                    value, raised = _each(fn, prefix, call, bool(msg.flags & Flag.BARE), ser)
                    return True, value, raised
                if not msg.flags & Flag.BARE:
                    return True, [fn(*prefix, *args) for args in call], 0
                if prefix:
                    return True, [fn(prefix[0], arg) for arg in call], 0
                return True, list(map(fn, call)), 0
            args, kwargs = call
            if msg.flags & Flag.HAS_BLOBS:
                args = tuple(self._blob(a.digest) if type(a) is BlobRef else a for a in args)
                kwargs = {k: self._blob(v.digest) if type(v) is BlobRef else v for k, v in kwargs.items()}
            return True, fn(*prefix, *args, **kwargs), 0
        except BaseException as exc:
            return False, ExceptionWithTraceback(exc), 0

    def _result_frames(self, ser: Any, ok: bool, value: Any) -> tuple[bool, list[Any]]:
        """The frames of a result; a value that does not serialize (or is too large for
        the broker) becomes a SerializationError, and the worker lives on."""
        try:
            frames: list[Any] = ser.dumps(value)
            if self._max_frame and any(memoryview(f).nbytes > self._max_frame for f in frames):
                # sent anyway, ZeroMQ would cut the connection and the task would never end
                raise ValueError(
                    f"a frame of it is larger than the broker accepts ({self._max_frame} "
                    "bytes; see IMPEXEC_MAX_MESSAGE_SIZE)"
                )
            return ok, frames
        except BaseException as exc:  # SystemExit from a __reduce__ too: the worker lives on
            what = "result" if ok else f"exception {type(getattr(value, 'exc', value)).__name__}"
            err = SerializationError(
                f"the task's {what} could not be serialized on the worker: {type(exc).__name__}: {exc}"
            )
            if not ok:
                err.__cause__ = None
            return False, ser.dumps(ExceptionWithTraceback(err))


def _each(fn: Any, prefix: tuple[Any, ...], call: list[Any], bare: bool, ser: Any) -> tuple[list[Any], int]:
    """Run every call of a chunk; one that raises yields its exception, the rest go on."""
    out: list[Any] = []
    raised = 0
    for args in call:
        try:
            out.append(fn(*prefix, args) if bare else fn(*prefix, *args))
        except BaseException as exc:
            raised += 1
            wrapped = ExceptionWithTraceback(exc)
            try:  # one exception that does not pickle must not cost the chunk's results
                ser.dumps(wrapped)
            except Exception as err:
                wrapped = ExceptionWithTraceback(
                    SerializationError(
                        f"the call's exception {type(exc).__name__} could not be serialized on the "
                        f"worker: {type(err).__name__}: {err}"
                    )
                )
            out.append(RaisedItem(wrapped))
    return out, raised
