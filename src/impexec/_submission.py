"""Calls into Tasks: the caller's thread pickles each call, so a failure names its culprit.

A large ``bytes`` argument, or a large function pickle, travels once per worker: the task
carries its digest, and the broker sends the bytes only to workers that lack them.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ._protocol import Flag
from ._scheduler import Task
from ._serialize import (
    BLOB_MAX,
    BLOB_MIN,
    BlobDigests,
    BlobRef,
    FunctionCache,
    Serializer,
    serialization_error,
)


class TaskMaker:
    """Builds an executor's tasks with its serializer: numbered, pickled, blobs split off."""

    def __init__(self, ser: Serializer):
        self.ser = ser
        self._fncache = FunctionCache(ser)
        self._digests = BlobDigests()
        self._ids = itertools.count(1)

    def dumps_once(self, fn: Any, obj: Any, label: str) -> bytes:
        """Pickle *obj* into one self-contained frame; errors name the culprit."""
        try:
            out = io.BytesIO()
            self.ser._pickler(out, protocol=5).dump(obj)
            return out.getvalue()
        except Exception as exc:
            raise serialization_error(
                self.ser, [(label, fn), (f"the arguments of {label}", obj)], exc
            ) from exc

    def dumps_fn(self, fn: Callable[..., Any]) -> bytes:
        """The pickle of a map's callable, made once for all its chunks."""
        try:
            return self._fncache.dumps(fn)
        except Exception as exc:
            raise serialization_error(self.ser, [("the callable", fn)], exc) from exc

    def call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], ctx_id: int = 0
    ) -> Task:
        """The task of one ``fn(*args, **kwargs)``."""
        ser = self.ser
        try:
            fn_frame = self._fncache.dumps(fn)
            blobs: dict[bytes, bytes] = {}
            if any(type(a) is bytes and BLOB_MIN <= len(a) <= BLOB_MAX for a in (*args, *kwargs.values())):
                args = tuple(self._blob_ref(a, blobs) for a in args)
                kwargs = {k: self._blob_ref(v, blobs) for k, v in kwargs.items()}
            frames = ser.dumps((args, kwargs))
        except Exception as exc:
            named = [
                ("the callable", fn),
                *((f"argument {i}", a) for i, a in enumerate(args)),
                *((f"keyword argument {k!r}", v) for k, v in kwargs.items()),
            ]
            raise serialization_error(ser, named, exc) from exc
        fn_part, flags = self._fn_part(fn_frame, blobs)
        return Task(
            next(self._ids),
            [fn_part, *frames],
            Future(),
            ctx_id,
            flags=flags,
            ser=ser.code,
            blobs=tuple(blobs.items()),
        )

    def chunk(
        self,
        fn_frame: bytes,
        chunk: list[Any],
        ctx_id: int = 0,
        bare: bool = False,
        item_errors: bool = False,
    ) -> Task:
        """One map chunk: a list of argument tuples, or with *bare* of single arguments."""
        ser = self.ser
        try:
            frames = ser.dumps(chunk)
        except Exception as exc:
            what = "argument" if bare else "arguments"
            named = [(f"the {what} {args!r:.60}", args) for args in chunk]
            raise serialization_error(ser, named, exc) from exc
        blobs: dict[bytes, bytes] = {}
        fn_part, flags = self._fn_part(fn_frame, blobs)
        if bare:
            flags |= Flag.BARE
        if item_errors:
            flags |= Flag.ITEM_ERRORS
        return Task(
            next(self._ids),
            [fn_part, *frames],
            Future(),
            ctx_id,
            flags=Flag.CHUNK | flags,
            ser=ser.code,
            items=len(chunk),
            blobs=tuple(blobs.items()),
        )

    def _blob_ref(self, value: Any, blobs: dict[bytes, bytes]) -> Any:
        """A large ``bytes`` argument travels once per worker: send a reference instead."""
        if type(value) is bytes and BLOB_MIN <= len(value) <= BLOB_MAX:
            digest = self._digests.digest(value)
            blobs[digest] = value
            return BlobRef(digest)
        return value

    def _fn_part(self, fn_frame: bytes, blobs: dict[bytes, bytes]) -> tuple[bytes, int]:
        """The function frame, or the digest of it when it is large (sent once per worker)."""
        if not BLOB_MIN <= len(fn_frame) <= BLOB_MAX:
            return fn_frame, 0
        digest = self._digests.digest(fn_frame)
        blobs[digest] = fn_frame
        return digest, Flag.FN_BLOB
