"""The worker's function cache: a cached function is always what loading the bytes gives.

In-process, on the worker's own loader (no sockets); tests/integration/test_fresh_pickles.py
shows the same through a real executor.
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle
import pytest

import tasks
from impexec._connection import ConnectionInfo
from impexec._serialize import get_serializer
from impexec._worker import Worker

SER = get_serializer("cloudpickle")


def _worker() -> Worker:
    return Worker(ConnectionInfo(address="tcp://127.0.0.1:1", key=b"k" * 32))


def test_a_function_sent_by_reference_is_kept_and_is_the_modules_own() -> None:
    w = _worker()
    data = bytes(SER.dumps(tasks.square)[0])
    assert w._load_fn(SER, data) is tasks.square
    assert data in w._fn_cache
    assert w._load_fn(SER, data) is tasks.square


def test_a_function_sent_by_value_is_loaded_again_for_every_task() -> None:
    seen: list[int] = []

    def count(x: int) -> int:
        seen.append(x)
        return len(seen)

    w = _worker()
    data = cloudpickle.dumps(count)
    first = w._load_fn(SER, data)
    assert first(0) == 1 and first(0) == 2  # one load: one closure cell, as in any process
    again = w._load_fn(SER, data)
    assert again is not first
    assert again(0) == 1  # a task sees the state the client sent, not the last task's
    assert data not in w._fn_cache


def test_the_cache_is_keyed_by_content_and_checked_against_the_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = _worker()
    square, identity = (bytes(SER.dumps(f)[0]) for f in (tasks.square, tasks.identity))
    assert w._load_fn(SER, square) is tasks.square
    assert w._load_fn(SER, identity) is tasks.identity
    # a task rebinds the module's name: the cached object is no longer what the bytes load
    monkeypatch.setattr(tasks, "square", tasks.add)
    fresh: Any = pickle.loads(square)
    assert w._load_fn(SER, square) is fresh is tasks.add
