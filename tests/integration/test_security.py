"""Security against a real broker and real workers: nothing unauthenticated is deserialized.

Every forged message carries the *sentinel* (tests/security_tasks.py): a pickle whose
unpickling creates a marker directory. The ``sentinel`` fixture fails the test if the
marker ever appears. Each test also checks the refusal was logged at WARNING (and that
the log holds no key material) and that the executor still computes afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import impexec._outcomes as outcomes_module
from impexec._connection import ConnectionInfo
from impexec._protocol import HEADER, RECORD_FIXED, SIG_SIZE, ZERO_COPY_THRESHOLD, Flag, Kind, decode, encode
from impexec._security import MAX_MESSAGE_SIZE_ENV, parse_size
from impexec._serialize import get_serializer
from impexec._worker import EXIT_NO_BROKER, Worker
from processes import start_worker
from security_tasks import (
    HB_SUFFIX,
    FakeWorker,
    client_replies,
    client_request,
    drop_count,
    marker_path,
    sentinel_pickle,
)
from waiting import wait_until

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE support")


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[bytes]:
    """A pickle that creates a marker when unpickled; the test fails if it ever was."""
    marker = marker_path(tmp_path)
    yield sentinel_pickle(marker)
    assert not marker.exists(), "an unauthenticated pickle was deserialized"


@pytest.fixture
def warnings_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="impexec")
    return caplog


def conn_of(ex: Any) -> ConnectionInfo:
    return ConnectionInfo.read(ex.connection_file())


def dealer(
    raw_socket: Any,
    conn: ConnectionInfo,
    *,
    identity: bytes | None = None,
    curve: tuple[str, str, str] | None = None,
) -> zmq.Socket[Any]:
    """A DEALER connected to the broker; *curve* = (server key, client public, client secret)."""
    sock = raw_socket(zmq.DEALER, identity=identity)
    if curve is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve[0].encode())
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve[1].encode())
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve[2].encode())
    sock.connect(conn.address)
    return sock


def result_with(sentinel: bytes, key: bytes, session: bytes, seq: int = 5, task_id: int = 1) -> list[Any]:
    """A RESULT whose value is the sentinel, signed with *key* for *session*."""
    return encode(
        key, Kind.RESULT, session, seq, task_id=task_id, flags=Flag.OK, serializer=1, frames=[sentinel]
    )


def fake_worker(raw_socket: Any, conn: ConnectionInfo, *, hb: bool = False) -> FakeWorker:
    """A FakeWorker on fresh sockets (with a heartbeat socket if *hb*), not yet joined."""
    wid = os.urandom(16)
    return FakeWorker(
        dealer(raw_socket, conn, identity=wid),
        conn.key,
        wid,
        dealer(raw_socket, conn, identity=wid + HB_SUFFIX) if hb else None,
    )


def assert_logged(caplog: pytest.LogCaptureFixture, text: str, *secrets: bytes | str | None) -> None:
    wait_until(
        lambda: text in caplog.text, 10, f"a WARNING containing {text!r} (the log is under Captured log)"
    )
    for secret in secrets:
        if secret:
            s = secret.hex() if isinstance(secret, bytes) else secret
            assert s not in caplog.text, "key material in the log"


def leave(fake: FakeWorker) -> None:
    """The fake worker says GOODBYE (else the executor's work would wait for it)."""
    fake.send(Kind.GOODBYE, frames=[json.dumps({"reason": "test"}).encode()])
    fake.expect(Kind.SHUTDOWN)


def assert_still_works(ex: Any) -> None:
    assert list(ex.map(abs, range(-20, 0), timeout=60)) == list(range(20, 0, -1))


def test_sentinel_is_effective(tmp_path: Path) -> None:
    """The control: unpickling the sentinel does leave the marker."""
    marker = marker_path(tmp_path)
    pickle.loads(sentinel_pickle(marker))
    assert marker.is_dir()


def test_wrong_key_dropped_and_logged(
    make_executor: Any, raw_socket: Any, sentinel: bytes, warnings_log: pytest.LogCaptureFixture
) -> None:
    ex = make_executor(1)
    conn = conn_of(ex)
    wrong = os.urandom(32)
    sock = dealer(raw_socket, conn)
    sock.send_multipart(result_with(sentinel, wrong, conn.session))
    assert_logged(warnings_log, "bad signature", conn.key)
    assert drop_count(ex) >= 1
    # a READY under the wrong key does not make a worker, and gets no WELCOME
    wid = os.urandom(16)
    with pytest.raises(TimeoutError):
        FakeWorker(dealer(raw_socket, conn, identity=wid), wrong, wid).join()
    assert ex.statistics().workers == 1
    assert_still_works(ex)


def test_wrong_session_refused(
    make_executor: Any, raw_socket: Any, sentinel: bytes, warnings_log: pytest.LogCaptureFixture
) -> None:
    """Right key, another session (another executor sharing the key, or an old capture).

    "Right key" is the key the broker expects from the socket: keys are per peer and per
    direction now, so a status client signs with the client key and a worker with its own.
    """
    ex = make_executor(1, heartbeat_timeout=60)  # the fake worker must not be declared lost
    conn = conn_of(ex)
    other = bytes(b ^ 0xFF for b in conn.session)
    sock = dealer(raw_socket, conn)  # a status client
    sock.send_multipart(client_request(conn.key, Kind.STATUS, other, 1, frames=[sentinel]))
    assert_logged(warnings_log, "another session", conn.key)
    assert client_replies(sock, conn.key, 0.5) == []
    # a joined (READY'd) worker is held to the session too, on both its links
    fake = fake_worker(raw_socket, conn, hb=True)
    fake.join()
    assert fake.hb is not None
    before = drop_count(ex)
    fake.sock.send_multipart(
        fake.encode(
            Kind.RESULT, session=other, seq=2, task_id=1, flags=Flag.OK, serializer=1, frames=[sentinel]
        )
    )
    fake.hb.send_multipart(fake.encode_hb(session=other))
    wait_until(lambda: drop_count(ex) >= before + 2, 10, "2 more dropped messages")
    assert Kind.HEARTBEAT not in [m.kind for m in fake.recv(0.5, fake.hb)]
    # the same heartbeat in this session is answered: the session alone was refused
    fake.hb.send_multipart(fake.encode_hb())
    assert fake.expect(Kind.HEARTBEAT, 10, fake.hb).session == conn.session
    assert drop_count(ex) == before + 2
    leave(fake)
    assert_still_works(ex)


def test_unhashed_large_payloads_refused_from_a_tcp_peer(
    make_executor: Any, raw_socket: Any, sentinel: bytes, warnings_log: pytest.LogCaptureFixture
) -> None:
    """Flag.LOCAL (large payloads outside the MAC) is for Unix-socket peers only.

    A worker that joined over TCP (its READY does not say local) and sends a RESULT whose
    out-of-band payload is left out of the MAC is refused, sentinel unread; the local
    workers of the same executor use the flag, and their big results arrive intact.
    """
    import numpy as np

    ex = make_executor(1, heartbeat_timeout=60)
    conn = conn_of(ex)
    fake = fake_worker(raw_socket, conn)  # tcp://127.0.0.1
    fake.join()
    assert not is_local(ex, fake.wid)
    unhashed = fake.encode(
        Kind.RESULT,
        task_id=1,
        flags=Flag.OK,
        serializer=1,
        frames=[sentinel, bytes(ZERO_COPY_THRESHOLD)],
        local=True,
    )
    assert HEADER.unpack(bytes(unhashed[0])[32 : 32 + HEADER.size])[3] & Flag.LOCAL
    fake.sock.send_multipart(unhashed)
    assert_logged(warnings_log, "not on a Unix socket", conn.key)
    leave(fake)
    assert ex.submit(abs, -1).result(timeout=60) == 1  # the local worker has joined
    local_workers = [w for w in ex._scheduler.workers if w != fake.wid]
    assert local_workers and all(is_local(ex, w) for w in local_workers)
    arr = np.arange(2_000_000, dtype=np.float64)  # 16 MB each way
    assert np.array_equal(ex.submit(np.negative, arr).result(timeout=60), -arr)
    assert_still_works(ex)


def is_local(ex: Any, wid: bytes) -> bool:
    """The broker takes worker *wid*'s large payloads by length only (Flag.LOCAL)."""
    return bool(ex._broker.call(lambda: ex._broker._peers.get(wid).local, 10))


# A RESULT with an inline payload (the sentinel) and an out-of-band one (64 KiB): the
# block [signature, header, table, sentinel] then the big frame (see impexec._protocol).
TRUNCATIONS = {
    "signature only": lambda f: [f[0][:SIG_SIZE]],
    "header cut short": lambda f: [f[0][: SIG_SIZE + HEADER.size // 2], *f[1:]],
    "signature cut short": lambda f: [f[0][16:], *f[1:]],
    "table cut short": lambda f: [f[0][: RECORD_FIXED + 2], *f[1:]],
    "inline payload cut short": lambda f: [f[0][:-3], *f[1:]],
    "out-of-band frame missing": lambda f: f[:1],
    "out-of-band frame cut short": lambda f: [f[0], f[1][: len(f[1]) // 2]],
    "second record cut": lambda f: [f[0] + f[0][:60], *f[1:], *f[1:]],
    "empty frames": lambda f: [b"", b""],
}


@pytest.mark.parametrize("how", sorted(TRUNCATIONS))
def test_truncated_frames_dropped(
    how: str, make_executor: Any, raw_socket: Any, sentinel: bytes, warnings_log: pytest.LogCaptureFixture
) -> None:
    """A joined worker's RESULT, signed with its key: whole, the broker would take it, so
    the truncation alone is what gets it refused (once)."""
    ex = make_executor(1, heartbeat_timeout=60)  # the fake worker must not be declared lost
    conn = conn_of(ex)
    fake = fake_worker(raw_socket, conn)
    fake.join()
    whole = [
        bytes(f)
        for f in fake.encode(
            Kind.RESULT, task_id=1, flags=Flag.OK, serializer=1, frames=[sentinel, bytes(ZERO_COPY_THRESHOLD)]
        )
    ]
    assert len(whole) == 2  # the block, then the out-of-band frame
    fake.sock.send_multipart(TRUNCATIONS[how](whole))
    assert_logged(warnings_log, "dropped a message", conn.key)
    assert drop_count(ex) == 1
    leave(fake)
    assert drop_count(ex) == 1
    assert_still_works(ex)


def test_replayed_frames_refused(
    make_executor: Any,
    raw_socket: Any,
    sentinel: bytes,
    monkeypatch: pytest.MonkeyPatch,
    warnings_log: pytest.LogCaptureFixture,
) -> None:
    """Signed messages sent again: same connection, a new connection, another routing id.

    Protocol 3 numbers a worker's main link and sends lost messages again, so a number
    seen before is absorbed there without a word (a resend or a replay: never taken
    twice, never counted as a drop), while the heartbeat link still refuses a number not
    above the last one. Keys are bound to the worker, so a capture replayed under another
    routing id no longer even verifies.
    """
    ex = make_executor(None, heartbeat_timeout=60)  # the fake worker must not be declared lost
    ex._broker._drop_log.interval = 0  # log every refusal: the reasons are checked below
    conn = conn_of(ex)
    fake = fake_worker(raw_socket, conn, hb=True)
    fake.join()
    assert fake.hb is not None
    heartbeat = fake.encode_hb()
    fake.hb.send_multipart(heartbeat)
    assert [m.kind for m in fake.recv(5, fake.hb)] == [Kind.HEARTBEAT]
    # 1. a heartbeat sent again on the heartbeat link: its number is not above the last
    fake.hb.send_multipart(heartbeat)
    assert_logged(warnings_log, "replayed or reordered", conn.key)
    assert Kind.HEARTBEAT not in [m.kind for m in fake.recv(0.3, fake.hb)]
    assert drop_count(ex) == 1
    # ... and a RESULT sent again on the main link is taken once: the future resolves
    # with the first, the second never reaches the broker's handler, and the payload is
    # deserialized once
    results: list[int] = []
    handlers = ex._broker._handlers
    real = handlers[Kind.RESULT]

    def spy(peer: Any, w: Any, is_hb: bool, msg: Any) -> None:
        results.append(msg.task_id)
        real(peer, w, is_hb, msg)

    handlers[Kind.RESULT] = spy  # one dict store: atomic for the broker thread
    unpickled: list[int] = []
    resolve = outcomes_module.resolve_message

    def counted(future: Any, msg: Any) -> None:
        unpickled.append(msg.task_id)
        resolve(future, msg)

    monkeypatch.setattr(outcomes_module, "resolve_message", counted)
    fut = ex.submit(abs, -3)
    task = fake.expect(Kind.TASK)
    answer = fake.send(
        Kind.RESULT,
        task_id=task.task_id,
        flags=Flag.OK,
        serializer=task.serializer,
        frames=get_serializer(task.serializer).dumps(3),
    )
    assert fut.result(timeout=10) == 3
    fake.sock.send_multipart(answer)
    # barrier: GOODBYE goes after the replay on the same connection, answered in order
    leave(fake)
    assert results == unpickled == [task.task_id]
    assert drop_count(ex) == 1  # absorbed, not refused
    stats = ex.statistics()
    assert (stats.done, stats.failed, stats.workers_joined) == (1, 0, 1)
    # 2. its READY replayed from a new connection with the same routing id: it reads as
    #    a resend of READY number 1 (its WELCOME lost), so it makes no second worker
    fake.sock.close(linger=0)
    again = dealer(raw_socket, conn, identity=fake.wid)
    again.send_multipart(fake.ready)
    # barrier: a refusable message right behind it on the same connection is counted
    again.send_multipart(fake.encode(Kind.GOODBYE, session=bytes(8), seq=fake.seq + 1))
    wait_until(lambda: drop_count(ex) == 2, 10, "2 dropped messages")
    assert_logged(warnings_log, "another session", conn.key)
    assert ex.statistics().workers_joined == 1
    # 3. the RESULT and the heartbeat replayed under a routing id that never said READY:
    #    they were signed for the fake worker, not for this one
    stranger = os.urandom(16)
    main = dealer(raw_socket, conn, identity=stranger)
    hb = dealer(raw_socket, conn, identity=stranger + HB_SUFFIX)
    before = drop_count(ex)
    main.send_multipart(answer)
    hb.send_multipart(heartbeat)
    wait_until(lambda: drop_count(ex) >= before + 2, 10, "2 more dropped messages")
    assert_logged(warnings_log, "bad signature", conn.key)
    #    and a key holder's RESULT (carrying a pickle) signed for that routing id: refused
    #    before the payload is looked at
    main.send_multipart(
        FakeWorker(main, conn.key, stranger).encode(
            Kind.RESULT,
            session=conn.session,
            seq=99,
            task_id=task.task_id,
            flags=Flag.OK,
            serializer=1,
            frames=[sentinel],
        )
    )
    wait_until(lambda: drop_count(ex) >= before + 3, 10, "3 more dropped messages")
    assert_logged(warnings_log, "never sent READY", conn.key)
    assert results == unpickled == [task.task_id]


def test_reflected_heartbeat_replies_do_not_keep_a_cut_off_worker(
    make_executor: Any, raw_socket: Any, warnings_log: pytest.LogCaptureFixture
) -> None:
    """Someone on the path, without encryption and without the key, cuts a worker off and
    sends the broker its own HEARTBEAT replies back under the worker's heartbeat identity.

    The worker's heartbeat link runs through *path*, a DEALER with the worker's heartbeat
    routing id that only carries bytes and never uses a key; once the worker is cut off,
    it echoes every frame the broker sent it. Each echo fails its signature (a broker's
    message is signed with the broker-to-worker key of that worker, and the broker
    verifies with the worker-to-broker one), the worker is declared lost after
    heartbeat_timeout, and its task goes to another worker.

    On protocol 2 this failed: one key signed both directions, and the broker numbered all
    its messages with one rising counter, so each echoed reply verified, passed the
    per-socket "number above the last" check, counted as the worker's heartbeat and drew a
    fresh reply to echo: the worker stayed (workers_lost 0) and its task pending.
    """
    ex = make_executor(None, heartbeat_interval=0.1, heartbeat_timeout=2.0)
    ex._broker._drop_log.interval = 0  # every refusal logged: its reason is checked
    conn = conn_of(ex)
    wid = os.urandom(16)
    worker = FakeWorker(dealer(raw_socket, conn, identity=wid), conn.key, wid)
    worker.join()
    fut = ex.submit(abs, -7)
    task = worker.expect(Kind.TASK)
    path = dealer(raw_socket, conn, identity=wid + HB_SUFFIX)
    # before the cut: the worker's heartbeats go through the path and are answered
    seen: list[list[bytes]] = []
    for _ in range(3):
        path.send_multipart(worker.encode_hb())
        assert path.poll(5000), "no heartbeat reply"
        seen.append(path.recv_multipart())
    assert all(m.kind == Kind.HEARTBEAT for f in seen for m in decode(worker.rx, f, conn.session))
    # the cut: the worker sends nothing more; the path echoes what the broker sent it
    before = drop_count(ex)
    echoed = 0
    deadline = time.monotonic() + 30
    while ex.statistics().workers_lost == 0:
        assert time.monotonic() < deadline, "the cut-off worker was never declared lost"
        for frames in seen:
            path.send_multipart(frames)
            echoed += 1
        while path.poll(100):  # a reply to an echo, were one taken: echoed next round
            seen.append(path.recv_multipart())
    stats = ex.statistics()
    assert (stats.workers_lost, stats.workers, stats.resubmitted) == (1, 0, 1)
    assert echoed >= 10  # the echo went on past the heartbeat timeout
    assert_logged(warnings_log, "bad signature", conn.key)
    wait_until(lambda: drop_count(ex) - before == echoed, 10, "every echoed frame to be refused")
    assert (stats.queued, stats.running) == (1, 0)  # the task is back in the queue
    # ... and runs on the next worker: its second attempt
    other = fake_worker(raw_socket, conn)
    other.join()
    again = other.expect(Kind.TASK)
    assert (again.task_id, again.aux) == (task.task_id, task.aux + 1)
    ser = get_serializer(again.serializer)
    other.send(
        Kind.RESULT, task_id=again.task_id, flags=Flag.OK, serializer=again.serializer, frames=ser.dumps(7)
    )
    assert fut.result(timeout=10) == 7
    leave(other)


def test_replayed_stop_workers_refused(
    make_executor: Any, raw_socket: Any, warnings_log: pytest.LogCaptureFixture
) -> None:
    ex = make_executor(None)
    conn = conn_of(ex)
    stop = client_request(conn.key, Kind.STOP_WORKERS, conn.session, 1_000_000)
    first = dealer(raw_socket, conn)
    first.send_multipart(stop)
    assert [m.kind for m in client_replies(first, conn.key, 5)] == [Kind.STATUS_REPLY]
    second = dealer(raw_socket, conn)
    second.send_multipart(stop)
    assert_logged(warnings_log, "replayed STOP_WORKERS", conn.key)
    assert client_replies(second, conn.key, 0.3) == []


def test_plaintext_client_cannot_talk_to_encrypting_broker(
    make_executor: Any, raw_socket: Any, warnings_log: pytest.LogCaptureFixture
) -> None:
    ex = make_executor(1, encrypt=True)
    conn = conn_of(ex)
    assert conn.server_key and conn.client_public and conn.client_secret
    sock = dealer(raw_socket, conn)  # no CURVE, but the right key and session
    sock.send_multipart(client_request(conn.key, Kind.STATUS, conn.session, 1))
    assert_logged(warnings_log, "handshake failed", conn.key, conn.client_secret)
    assert client_replies(sock, conn.key, 0.3) == []
    assert drop_count(ex) == 0  # no message ever reached the broker
    assert_still_works(ex)


def test_curve_client_with_wrong_client_key_refused_by_zap(
    make_executor: Any, raw_socket: Any, warnings_log: pytest.LogCaptureFixture
) -> None:
    ex = make_executor(1, encrypt=True)
    conn = conn_of(ex)
    assert conn.server_key
    public, secret = (k.decode() for k in zmq.curve_keypair())
    intruder = dealer(raw_socket, conn, curve=(conn.server_key, public, secret))
    intruder.send_multipart(client_request(conn.key, Kind.STATUS, conn.session, 1))
    assert_logged(warnings_log, "not this executor's", conn.key, conn.client_secret, secret)
    assert client_replies(intruder, conn.key, 0.3) == []
    assert drop_count(ex) == 0
    # the same request with the executor's client key is answered
    friend = dealer(
        raw_socket, conn, curve=(conn.server_key, conn.client_public or "", conn.client_secret or "")
    )
    friend.send_multipart(client_request(conn.key, Kind.STATUS, conn.session, 2))
    replies = client_replies(friend, conn.key, 10)
    assert [m.kind for m in replies] == [Kind.STATUS_REPLY]
    assert "workers" in replies[0].json()
    assert_still_works(ex)


def _run_worker(conn: ConnectionInfo) -> int:
    box: list[int] = []
    # a daemon: should the worker hang, this test fails and the session still ends
    t = threading.Thread(
        target=lambda: box.append(Worker(conn, connect_timeout=1.5).run()), name="test-worker", daemon=True
    )
    t.start()
    t.join(30)
    assert not t.is_alive(), "the worker did not give up within 30 s of its 1.5 s connect timeout"
    return box[0]


@pytest.mark.parametrize("wrong", ["server key", "client key", "no curve"])
def test_worker_with_wrong_curve_keys_cannot_join(
    wrong: str, make_executor: Any, warnings_log: pytest.LogCaptureFixture
) -> None:
    """The real worker code with a doctored connection file gets no WELCOME."""
    ex = make_executor(None, encrypt=True)
    conn = conn_of(ex)
    public, secret = (k.decode() for k in zmq.curve_keypair())
    doctored = {
        "server key": {"server_key": public},
        "client key": {"client_public": public, "client_secret": secret},
        "no curve": {"server_key": None, "client_public": None, "client_secret": None},
    }[wrong]
    bad = ConnectionInfo(**{**conn.__dict__, **doctored})
    assert _run_worker(bad) == EXIT_NO_BROKER
    assert ex.statistics().workers == 0
    if wrong != "server key":  # a wrong server key fails on the client's side of the handshake
        assert_logged(warnings_log, "dropped a connection", conn.key, conn.client_secret)


def test_worker_with_right_connection_file_works_encrypted(make_executor: Any, tmp_path: Path) -> None:
    """encrypt=True end to end: launched workers and one joining with `impexec-worker`."""
    ex = make_executor(1, encrypt=True)
    path = ex.connection_file(tmp_path / "conn.json")
    assert os.stat(path).st_mode & 0o777 == 0o600
    joiner = start_worker(
        path, "--connect-timeout", "30", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: ex.statistics().workers == 2, 60, "the joining worker to join")
        assert list(ex.map(pow, range(50), [3] * 50, timeout=60)) == [i**3 for i in range(50)]
        done = ex.statistics()
        assert done.failed == 0
    finally:
        ex.shutdown(wait=True)
        try:
            joiner.wait(30)
        finally:
            if joiner.poll() is None:
                joiner.kill()
                joiner.wait(10)


def test_oversize_message_drops_the_peer_not_the_broker(
    monkeypatch: pytest.MonkeyPatch, make_executor: Any, raw_socket: Any, sentinel: bytes
) -> None:
    monkeypatch.setenv(MAX_MESSAGE_SIZE_ENV, "64K")
    ex = make_executor(1)
    assert ex._broker._guard.max_message_size == parse_size("64K") == 65536
    conn = conn_of(ex)
    sock = dealer(raw_socket, conn)
    # signed with a wrong key: had it reached the broker, it would count as dropped there
    big = result_with(sentinel + b"\0" * 100_000, os.urandom(32), conn.session)
    sock.send_multipart(big)
    # ZeroMQ cuts the connection at the oversize frame (a request sent right behind it may
    # go down with it); the DEALER reconnects, and a small request is answered again
    for seq in range(1, 21):
        sock.send_multipart(client_request(conn.key, Kind.STATUS, conn.session, seq))
        replies = client_replies(sock, conn.key, 1.0)
        if replies:
            break
    assert [m.kind for m in replies] == [Kind.STATUS_REPLY]
    assert drop_count(ex) == 0
    assert_still_works(ex)


def test_group_readable_connection_file_refused(make_executor: Any, tmp_path: Path) -> None:
    ex = make_executor(None)
    path = ex.connection_file(tmp_path / "conn.json")
    key = ConnectionInfo.read(path).key.hex()
    os.chmod(path, 0o640)
    with pytest.raises(PermissionError, match="chmod 600"):
        ConnectionInfo.read(path)
    status = subprocess.run(
        [sys.executable, "-m", "impexec", "status", str(path)], capture_output=True, text=True, timeout=60
    )
    assert status.returncode != 0
    assert "chmod 600" in status.stderr
    assert key not in status.stderr + status.stdout


def big_bytes(n: int) -> bytes:
    return b"\1" * n


def test_result_larger_than_the_limit_fails_its_future_only(
    monkeypatch: pytest.MonkeyPatch, make_executor: Any
) -> None:
    """The worker knows the broker's limit and fails the task instead of losing its link."""
    monkeypatch.setenv(MAX_MESSAGE_SIZE_ENV, "64K")
    ex = make_executor(1)
    fut = ex.submit(big_bytes, 200_000)
    with pytest.raises(Exception, match="larger than the broker accepts"):
        fut.result(timeout=60)
    assert ex.submit(big_bytes, 1000).result(timeout=60) == b"\1" * 1000
    assert_still_works(ex)


def test_connection_info_repr_hides_secrets() -> None:
    key = os.urandom(32)
    public, secret = (k.decode() for k in zmq.curve_keypair())
    conn = ConnectionInfo(
        address="tcp://127.0.0.1:1", key=key, server_key=public, client_public=public, client_secret=secret
    )
    text = repr(conn) + str(conn)
    assert key.hex() not in text and repr(key) not in text and secret not in text
    assert ConnectionInfo.from_json(conn.to_json()) == conn  # the file still has them


@pytest.mark.parametrize("encrypt", [False, True])
def test_exposed_bind_warns_unless_encrypted(
    encrypt: bool, make_executor: Any, warnings_log: pytest.LogCaptureFixture
) -> None:
    ex = make_executor(None, address="tcp://0.0.0.0:0", encrypt=encrypt)
    conn = conn_of(ex)
    exposed = [r.getMessage() for r in warnings_log.records if "without encrypt=True" in r.getMessage()]
    if encrypt:
        assert exposed == []
    else:
        assert len(exposed) == 1 and "can read the tasks and results" in exposed[0]
    assert conn.key.hex() not in warnings_log.text
