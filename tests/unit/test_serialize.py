"""Serializers, the error that names what did not pickle, and remote tracebacks."""

from __future__ import annotations

import functools
import importlib
import pickle
import sys
import threading
from pathlib import Path
from typing import Any

import cloudpickle
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
def test_error_names_the_innermost_culprit(named: list[tuple[str, Any]], where: str) -> None:
    ser = get_serializer("cloudpickle")
    err = serialization_error(ser, named, TypeError("x"))
    assert isinstance(err, SerializationError)
    assert isinstance(err, pickle.PicklingError)
    assert f"cannot serialize {where}:" in str(err)
    assert "cloudpickle" in str(err)


def test_error_names_the_type() -> None:
    err = serialization_error(get_serializer("pickle"), [("argument 0", threading.Lock())], TypeError())
    assert "_thread.lock" in str(err)


# -- function cache --------------------------------------------------------------------
# The cache may hand out old bytes only where a fresh pickle would give the same ones:
# each test changes what a callable computes between two dumps and loads the second.
def test_function_cache_reuses_the_pickle_of_a_function_sent_by_reference() -> None:
    ser = get_serializer("cloudpickle")
    cache = FunctionCache(ser)
    first = cache.dumps(tasks.square)
    assert cache.dumps(tasks.square) is first
    assert ser.loads([first]) is tasks.square
    assert cache.dumps(len) is cache.dumps(len)


def test_function_cache_forgets_dead_functions() -> None:
    ser = get_serializer("cloudpickle")
    cache = FunctionCache(ser)

    def make() -> Any:
        return lambda x: x * 3

    fn = make()
    assert ser.loads([cache.dumps(fn)])(2) == 6
    del fn
    other = make()
    assert ser.loads([cache.dumps(other)])(3) == 9


def _closure() -> tuple[Any, list[int]]:
    cell = [1]

    def read() -> int:
        return cell[0]

    return read, cell


class _Scaler:
    def __init__(self) -> None:
        self.factor = 1

    def scale(self, x: int) -> int:
        return self.factor * x

    def __call__(self, x: int) -> int:
        return self.factor * x


def _default_reader() -> Any:
    def read(value: int = 1) -> int:
        return value

    return read


@pytest.mark.parametrize("name", ["cloudpickle", "dill"])
@pytest.mark.parametrize(
    "what", ["closure cell", "bound method", "callable object", "partial's argument", "defaults"]
)
def test_function_cache_never_hands_out_a_pickle_of_an_old_state(name: str, what: str) -> None:
    read, cell = _closure()
    scaler = _Scaler()
    bound = scaler.scale
    items = [1]
    reader = _default_reader()
    cases: dict[str, tuple[Any, tuple[Any, ...], Any]] = {
        "closure cell": (read, (), lambda: cell.__setitem__(0, 2)),
        "bound method": (bound, (1,), lambda: setattr(scaler, "factor", 2)),
        "callable object": (scaler, (1,), lambda: setattr(scaler, "factor", 2)),
        "partial's argument": (functools.partial(sum, items), (), lambda: items.append(1)),
        "defaults": (reader, (), lambda: setattr(reader, "__defaults__", (2,))),
    }
    fn, args, change = cases[what]
    ser = get_serializer(name)
    cache = FunctionCache(ser)
    assert ser.loads([cache.dumps(fn)])(*args) == 1
    change()
    assert ser.loads([cache.dumps(fn)])(*args) == 2


def test_function_cache_sees_a_module_registered_to_go_by_value_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fresh_pickle_mod.py").write_text("SOURCE = 'file'\n\ndef where():\n    return SOURCE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("fresh_pickle_mod")
    ser = get_serializer("cloudpickle")
    cache = FunctionCache(ser)
    assert ser.loads([cache.dumps(mod.where)]) is mod.where  # by reference
    monkeypatch.setattr(mod, "SOURCE", "client")
    cloudpickle.register_pickle_by_value(mod)
    try:
        try:
            data = cache.dumps(mod.where)
        finally:
            cloudpickle.unregister_pickle_by_value(mod)
        loaded = ser.loads([data])
        assert loaded is not mod.where  # by value: the client's globals travel with it
        assert loaded() == "client"
        assert ser.loads([cache.dumps(mod.where)]) is mod.where  # by reference again
    finally:
        sys.modules.pop("fresh_pickle_mod", None)


def test_function_cache_does_not_send_a_name_that_now_means_another_function(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ser = get_serializer("cloudpickle")
    cache = FunctionCache(ser)
    square = tasks.square
    cache.dumps(square)
    monkeypatch.setattr(tasks, "square", tasks.identity)
    assert ser.loads([cache.dumps(square)])(3) == 9


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
