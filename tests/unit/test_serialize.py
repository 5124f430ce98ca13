"""Serializers, the error that names what did not pickle, and remote tracebacks."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest

import tasks
from impexec import SerializationError
from impexec._serialize import (
    OOB_THRESHOLD,
    ExceptionWithTraceback,
    FunctionCache,
    RemoteTraceback,
    get_serializer,
    serialization_error,
)

NAMES = ["cloudpickle", "pickle", "dill"]


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name: str) -> None:
    ser = get_serializer(name)
    obj = {"a": [1, 2.5, "x"], "b": (None, b"bytes")}
    assert ser.loads(ser.dumps(obj)) == obj
    assert get_serializer(ser.code) is ser  # the wire code names it


@pytest.mark.parametrize("name", NAMES)
def test_large_buffers_travel_out_of_band(name: str) -> None:
    np = pytest.importorskip("numpy")
    ser = get_serializer(name)
    array = np.arange(OOB_THRESHOLD, dtype=np.float64)
    frames = ser.dumps((array, b"small"))
    if name != "dill":  # dill 0.4 pickles arrays with its own reducer, always in band
        assert len(frames) == 2  # the pickle + the array's buffer as its own frame
        assert memoryview(frames[1]).nbytes == array.nbytes
    back, small = ser.loads([bytes(f) for f in frames])
    assert small == b"small"
    assert np.array_equal(back, array)


def test_small_buffers_stay_in_band() -> None:
    frames = get_serializer("pickle").dumps(pickle.PickleBuffer(bytearray(100)))
    assert len(frames) == 1


def test_lambdas_need_cloudpickle_or_dill() -> None:
    fn = lambda x: x + 1  # noqa: E731
    for name in ("cloudpickle", "dill"):
        ser = get_serializer(name)
        assert ser.loads(ser.dumps(fn))(1) == 2
    with pytest.raises(Exception):  # noqa: B017 - pickle's own error type varies by version
        get_serializer("pickle").dumps(fn)


def test_unknown_serializer() -> None:
    with pytest.raises(ValueError, match="cloudpickle"):
        get_serializer("json")
    with pytest.raises(ValueError):
        get_serializer(99)


# -- naming the culprit ----------------------------------------------------------------
class Holder:
    def __init__(self) -> None:
        self.fine = 1
        self.lock = threading.Lock()


@pytest.mark.parametrize(
    ("named", "where"),
    [
        ([("argument 0", threading.Lock())], "argument 0"),
        ([("argument 0", [1, 2, threading.Lock()])], "argument 0[2]"),
        ([("argument 1", {"k": (0, threading.Lock())})], "argument 1['k'][1]"),
        ([("argument 0", Holder())], "argument 0.lock"),
        (
            [("argument 0", 1), ("keyword argument 'x'", tasks.ErrorAtPickle())],
            "keyword argument 'x'",
        ),
    ],
)
def test_error_names_the_innermost_culprit(
    named: list[tuple[str, Any]], where: str
) -> None:
    ser = get_serializer("cloudpickle")
    err = serialization_error(ser, named, TypeError("x"))
    assert isinstance(err, SerializationError)
    assert isinstance(err, pickle.PicklingError)
    assert f"cannot serialize {where}:" in str(err)
    assert "cloudpickle" in str(err)


def test_error_names_the_type() -> None:
    err = serialization_error(
        get_serializer("pickle"), [("argument 0", threading.Lock())], TypeError()
    )
    assert "_thread.lock" in str(err)


# -- function cache --------------------------------------------------------------------
def test_function_cache_reuses_bytes_and_forgets_dead_functions() -> None:
    ser = get_serializer("cloudpickle")
    cache = FunctionCache(ser)

    def make() -> Any:
        return lambda x: x * 3

    fn = make()
    first = cache.dumps(fn)
    assert cache.dumps(fn) is first
    assert ser.loads([first])(2) == 6
    del fn
    other = make()
    assert ser.loads([cache.dumps(other)])(3) == 9


# -- remote tracebacks -----------------------------------------------------------------
def _raise_here() -> None:
    raise KeyError("remote problem")


@pytest.mark.parametrize("name", NAMES)
def test_remote_exception_keeps_type_and_traceback(name: str) -> None:
    ser = get_serializer(name)
    try:
        _raise_here()
    except KeyError as exc:
        wrapped = ExceptionWithTraceback(exc, "on worker w1\n")
    back = ser.loads(ser.dumps(wrapped))
    assert type(back) is KeyError
    assert back.args == ("remote problem",)
    cause = back.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "_raise_here" in str(cause)
    assert "on worker w1" in str(cause)
    assert "KeyError: 'remote problem'" in str(cause)
