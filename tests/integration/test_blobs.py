"""Large repeated payloads travel once per worker (content-addressed cache, bounded)."""

from __future__ import annotations

import os

import blob_tasks as bt
from impexec import ClusterExecutor
from impexec._scheduler import MAX_BLOBS
from impexec._serialize import BLOB_MIN

FAST = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.5}


def test_repeated_bytes_argument_is_sent_once_per_worker():
    payload = os.urandom(2 * BLOB_MIN)
    with ClusterExecutor(workers=2, **FAST) as ex:
        results = [
            f.result(timeout=60)
            for f in [ex.submit(bt.same_object_as_last_call, payload, i) for i in range(100)]
        ]
    assert [r[3] for r in results] == [len(payload) + i for i in range(100)]
    # each worker's first call (in the order it ran them, which is not the order of
    # submission once a queued task is given back and runs elsewhere) got a fresh
    # object; every later call on that worker got the cached one
    fresh = sorted((pid, calls) for pid, calls, same, _ in results if not same)
    pids = sorted({pid for pid, *_ in results})
    assert fresh == [(pid, 0) for pid in pids]


def test_many_distinct_blobs_rotate_through_the_bounded_cache():
    blobs = [os.urandom(BLOB_MIN + k) for k in range(MAX_BLOBS + 5)]
    with ClusterExecutor(workers=2, **FAST) as ex:
        futs = [
            ex.submit(bt.length_plus, blobs[i % len(blobs)], i, extra=blobs[(i * 7) % len(blobs)])
            for i in range(3 * len(blobs))
        ]
        got = [f.result(timeout=60) for f in futs]
    want = [len(blobs[i % len(blobs)]) + len(blobs[(i * 7) % len(blobs)]) + i for i in range(3 * len(blobs))]
    assert got == want


def test_large_closure_function_in_map_and_submit():
    data = os.urandom(3 * BLOB_MIN)

    def model(i):  # a closure over a large object: its pickle is a blob
        return len(data) * 2 + i

    with ClusterExecutor(workers=2, **FAST) as ex:
        assert list(ex.map(model, range(50), chunksize=3, timeout=60)) == [
            len(data) * 2 + i for i in range(50)
        ]
        assert [ex.submit(model, i).result(timeout=60) for i in range(10)] == [
            len(data) * 2 + i for i in range(10)
        ]
