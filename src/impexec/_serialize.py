"""Serializers, the submit-time error that names the culprit, and remote tracebacks.

Payloads are pickled with protocol 5; contiguous buffers (NumPy arrays, bytearrays,
large bytes) above ``OOB_THRESHOLD`` go out of band, so they travel as their own ZeroMQ
frames without being copied into the pickle.

Remote exceptions follow CPython's ``concurrent.futures.process`` scheme: the worker
pickles the exception together with its formatted traceback, and the client rebuilds the
original exception with a :class:`RemoteTraceback` as ``__cause__``.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import sys
import threading
import traceback
import types
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from ._errors import SerializationError

#: Buffers at least this large travel as separate frames (bytes); smaller ones stay in
#: the pickle, where one frame is cheaper than two.
OOB_THRESHOLD = 64 * 1024

Frames = list[Any]  # bytes | memoryview | pickle.PickleBuffer | zmq.Frame


class Serializer:
    """A named pickle implementation: ``dumps`` returns frames, ``loads`` takes them."""

    def __init__(self, name: str, code: int, pickler: Callable[..., Any], loads: Callable[..., Any]):
        self.name = name
        self.code = code  # travels in every header, so a worker needs no configuration
        self._fast_path = name == "cloudpickle"
        self._pickler = pickler
        self._loads = loads

    def dumps(self, obj: Any) -> Frames:
        """Pickle *obj*; the first frame is the pickle, the others out-of-band buffers."""
        buffers: list[Any] = []

        def keep(buf: pickle.PickleBuffer) -> bool:
            raw = buf.raw()
            if raw.nbytes < OOB_THRESHOLD:
                return True  # in band
            buffers.append(raw)
            return False

        if self._fast_path:
            # The C pickler is ~7x faster than building a CloudPickler. Its output is the
            # same as cloudpickle's unless it referred to something by name that the
            # worker cannot import: objects defined in __main__ (then "__main__" is in
            # the pickle) or modules registered to go by value. Anything it cannot
            # pickle at all (lambdas, local classes) raises, and cloudpickle takes over.
            try:
                data = pickle.dumps(obj, protocol=5, buffer_callback=keep)
            except Exception:
                data = None
            if data is not None and b"__main__" not in data and not _by_value_modules():
                return [data, *buffers]
            buffers.clear()

        out = io.BytesIO()
        self._pickler(out, protocol=5, buffer_callback=keep).dump(obj)
        return [out.getbuffer(), *buffers]

    def loads(self, frames: Sequence[Any]) -> Any:
        """Rebuild an object from the frames ``dumps`` made (one pickle + its buffers)."""
        return self._loads(frames[0], buffers=frames[1:])


def _by_value_modules() -> bool:
    """Has the user registered modules with cloudpickle.register_pickle_by_value?"""
    return bool(getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", None))


def _dill_serializer() -> Serializer:
    try:
        import dill
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError("serializer='dill' needs the dill package: pip install 'impexec[dill]'") from exc
    # loads runs only on frames whose HMAC was verified (see _protocol.decode)
    return Serializer("dill", 3, dill.Pickler, lambda data, buffers: dill.loads(data, buffers=buffers))  # noqa: S301


_FACTORIES: dict[str, Callable[[], Serializer]] = {
    "cloudpickle": lambda: Serializer("cloudpickle", 1, cloudpickle.CloudPickler, pickle.loads),
    "pickle": lambda: Serializer("pickle", 2, pickle.Pickler, pickle.loads),
    "dill": _dill_serializer,
}
_CODES = {"cloudpickle": 1, "pickle": 2, "dill": 3}
_CACHE: dict[str, Serializer] = {}


_RESOLVED: dict[str | int, Serializer] = {}  # by name and by code, as asked


def get_serializer(name_or_code: str | int) -> Serializer:
    """Return the serializer called *name_or_code* (a name, or its wire code)."""
    ser = _RESOLVED.get(name_or_code)  # the hot path: a code from every header
    if ser is None:
        ser = _RESOLVED[name_or_code] = _get_serializer(name_or_code)
    return ser


def _get_serializer(name_or_code: str | int) -> Serializer:
    if isinstance(name_or_code, int):
        names = [n for n, c in _CODES.items() if c == name_or_code]
        if not names:
            raise ValueError(f"unknown serializer code {name_or_code}")
        name_or_code = names[0]
    if name_or_code not in _FACTORIES:
        raise ValueError(f"serializer must be one of {sorted(_FACTORIES)}, not {name_or_code!r}")
    ser = _CACHE.get(name_or_code)
    if ser is None:
        ser = _CACHE[name_or_code] = _FACTORIES[name_or_code]()
    return ser


def _describe(obj: Any) -> str:
    text = repr(obj)
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{text} of type {type(obj).__module__}.{type(obj).__qualname__}"


def _find_culprit(
    ser: Serializer, obj: Any, path: str, depth: int = 0
) -> tuple[str, Any, BaseException] | None:
    """Depth-first search for the innermost part of *obj* that fails to pickle."""
    try:
        ser.dumps(obj)
        return None
    except Exception as exc:
        err: BaseException = exc
    if depth < 4:
        children: list[tuple[str, Any]] = []
        if isinstance(obj, (list, tuple)):
            children = [(f"{path}[{i}]", v) for i, v in enumerate(obj[:1000])]
        elif isinstance(obj, dict):
            children = [(f"{path}[{k!r}]", v) for k, v in list(obj.items())[:1000]]
        elif hasattr(obj, "__dict__") and not callable(obj):
            children = [(f"{path}.{k}", v) for k, v in list(vars(obj).items())[:1000]]
        for child_path, child in children:
            found = _find_culprit(ser, child, child_path, depth + 1)
            if found is not None:
                return found
    return path, obj, err


def serialization_error(
    ser: Serializer, named: Sequence[tuple[str, Any]], exc: BaseException
) -> SerializationError:
    """Build a SerializationError naming the first of *named* that does not pickle."""
    for label, obj in named:
        found = _find_culprit(ser, obj, label)
        if found is not None:
            where, culprit, err = found
            return SerializationError(
                f"cannot serialize {where}: {_describe(culprit)} "
                f"({type(err).__name__}: {err}) [serializer={ser.name}]"
            )
    return SerializationError(
        f"cannot serialize the task ({type(exc).__name__}: {exc}) [serializer={ser.name}]"
    )


#: Payloads at least this large that repeat from task to task (a big function pickle, a
#: ``bytes`` argument passed again and again, as pyABC does) travel once per worker.
BLOB_MIN = 64 * 1024
#: Larger payloads are not cached on workers (they would crowd out the rest and hold
#: memory for long); they travel with every task, as out-of-band frames where possible.
BLOB_MAX = 32 * 1024 * 1024


class BlobRef:
    """Stands in an argument tuple for a large ``bytes`` object held in the worker's cache."""

    __slots__ = ("digest",)

    def __init__(self, digest: bytes):
        self.digest = digest

    def __reduce__(self) -> tuple[Any, ...]:
        return BlobRef, (self.digest,)


class BlobDigests:
    """SHA-256 digests of large immutable payloads, remembered by identity.

    Hashing a pickle of megabytes takes milliseconds; the same object submitted again
    reuses its digest.
    Entries hold the object (a recycled id can then never be mistaken for it) and are
    bounded by count and by bytes.
    """

    MAX_ENTRIES = 32
    MAX_BYTES = 128 * 1024 * 1024

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[bytes, bytes]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def digest(self, data: bytes) -> bytes:
        key = id(data)
        with self._lock:
            hit = self._by_id.get(key)
            if hit is not None and hit[0] is data:
                return hit[1]
        d = hashlib.sha256(data).digest()
        with self._lock:
            while self._by_id and (
                len(self._by_id) >= self.MAX_ENTRIES or self._bytes + len(data) > self.MAX_BYTES
            ):
                old = self._by_id.pop(next(iter(self._by_id)))
                self._bytes -= len(old[0])
            if len(data) <= self.MAX_BYTES:
                self._by_id[key] = (data, d)
                self._bytes += len(data)
        return d


def _resolve(module: str, qualname: str) -> Any:
    """The object a pickle by reference to ``module.qualname`` loads here (or None)."""
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


def _named(fn: Any) -> tuple[str, str] | None:
    """(module, qualname) of a function that pickles as a mere reference, else None.

    A function or builtin whose name leads back to it pickles as its module and name and
    nothing else, unless it lives in ``__main__`` (cloudpickle sends those by value) or
    modules are registered to go by value (which ones is not worth checking here).
    """
    kind = type(fn)
    if kind is types.BuiltinFunctionType:
        if not isinstance(fn.__self__, (types.ModuleType, type(None))):
            return None  # a bound builtin method (``[].append``) pickles its object
    elif kind is not types.FunctionType:
        return None  # lambdas fail the name check below; methods, partials, objects: state
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or module == "__main__":
        return None
    if _by_value_modules() or _resolve(module, qualname) is not fn:
        return None
    return module, qualname


class FunctionCache:
    """Reuses the pickle of a callable only where a fresh pickle would be the same bytes.

    That is a function pickled by reference (its module and name; the worker imports it):
    each reuse checks that the name still leads to the same function and that no module
    was registered to go by value since. Every other callable is pickled at every call:
    the bytes of a function of ``__main__``, a lambda, a closure, a bound method, a
    partial or a callable object carry values (globals it reads, closure cells,
    defaults, attributes, the object's state) that may have changed since, and a task
    must compute with the values of its submit, as with ProcessPoolExecutor.

    Keyed by identity and dropped when the function is garbage-collected, so a new
    function at a recycled address is never confused with the old one.
    """

    MAX_ENTRIES = 256

    def __init__(self, ser: Serializer):
        self._ser = ser
        self._cache: dict[int, tuple[weakref.ref[Any], bytes, str, str]] = {}

    def dumps(self, fn: Any) -> bytes:
        key = id(fn)
        hit = self._cache.get(key)
        if hit is not None:
            ref, data, module, qualname = hit
            same = ref() is fn  # apart: inside the condition, `is` narrowed fn to Optional
            if (
                same
                and fn.__module__ == module
                and fn.__qualname__ == qualname
                and not _by_value_modules()
                and _resolve(module, qualname) is fn
            ):
                return data
            del self._cache[key]
        named = _named(fn)
        data = self._pickle(fn)
        if named is None:
            return data
        try:
            ref = weakref.ref(fn, lambda _r: self._forget(key))
        except TypeError:
            return data
        if len(self._cache) >= self.MAX_ENTRIES:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = (ref, data, *named)
        return data

    def _forget(self, key: int) -> None:
        self._cache.pop(key, None)

    def _pickle(self, fn: Any) -> bytes:
        frames = self._ser.dumps(fn)
        if len(frames) == 1:
            return bytes(frames[0])
        # a callable carrying big buffers: keep it in one pickle
        out = io.BytesIO()
        self._ser._pickler(out, protocol=5).dump(fn)
        return out.getvalue()


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised on a worker."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _rebuild_exc(exc: BaseException, tb: str) -> BaseException:
    exc.__cause__ = RemoteTraceback(tb)
    return exc


class ExceptionWithTraceback:
    """Pickles as the original exception with its remote traceback text attached."""

    def __init__(self, exc: BaseException, where: str = ""):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        head = f'\n"""\n{where}' if where else '\n"""\n'
        self.exc = exc
        self.tb = f'{head}{tb}"""'
        # the traceback's frames hold locals we must not try to pickle
        exc.__traceback__ = None

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_exc, (self.exc, self.tb)
