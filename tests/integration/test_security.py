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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from impexec._connection import ConnectionInfo
from impexec._protocol import HEADER, ZERO_COPY_THRESHOLD, Flag, Kind, encode
from impexec._security import MAX_MESSAGE_SIZE_ENV, parse_size
from impexec._worker import EXIT_NO_BROKER, Worker
from security_tasks import (
    drop_count,
    join_as_fake_worker,
    marker_path,
    recv_messages,
    sentinel_pickle,
    wait_for,
)

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


def dealer(raw_socket: Any, conn: ConnectionInfo, *, identity: bytes | None = None,
           curve: tuple[str, str, str] | None = None) -> zmq.Socket[Any]:
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
    return encode(key, Kind.RESULT, session, seq, task_id=task_id, flags=Flag.OK,
                  serializer=1, frames=[sentinel])


def assert_logged(caplog: pytest.LogCaptureFixture, text: str, *secrets: bytes | str | None) -> None:
    assert wait_for(lambda: text in caplog.text, 10), f"no WARNING containing {text!r}:\n{caplog.text}"
    for secret in secrets:
        if secret:
            s = secret.hex() if isinstance(secret, bytes) else secret
            assert s not in caplog.text, "key material in the log"


def leave(fake: zmq.Socket[Any], conn: ConnectionInfo, seq: int) -> None:
    """The fake worker says GOODBYE (else the executor's work would wait for it)."""
    fake.send_multipart(encode(conn.key, Kind.GOODBYE, conn.session, seq,
                               frames=[json.dumps({"reason": "test"}).encode()]))
    assert wait_for(lambda: Kind.SHUTDOWN in [m.kind for m in recv_messages(fake, conn.key, 0.2)])


def assert_still_works(ex: Any) -> None:
    assert list(ex.map(abs, range(-20, 0), timeout=60)) == list(range(20, 0, -1))


def test_sentinel_is_effective(tmp_path: Path) -> None:
    """The control: unpickling the sentinel does leave the marker."""
    marker = marker_path(tmp_path)
    pickle.loads(sentinel_pickle(marker))
    assert marker.is_dir()


def test_wrong_key_dropped_and_logged(make_executor: Any, raw_socket: Any, sentinel: bytes,
                                      warnings_log: pytest.LogCaptureFixture) -> None:
    ex = make_executor(1)
    conn = conn_of(ex)
    wrong = os.urandom(32)
    sock = dealer(raw_socket, conn)
    sock.send_multipart(result_with(sentinel, wrong, conn.session))
    assert_logged(warnings_log, "bad signature", conn.key)
    assert drop_count(ex) >= 1
    # a READY under the wrong key does not make a worker, and gets no WELCOME
    wid = os.urandom(16)
    sock2 = dealer(raw_socket, conn, identity=wid)
    with pytest.raises(TimeoutError):
        join_as_fake_worker(sock2, wrong, wid)
    assert ex.statistics().workers == 1
    assert_still_works(ex)


def test_wrong_session_refused(make_executor: Any, raw_socket: Any, sentinel: bytes,
                               warnings_log: pytest.LogCaptureFixture) -> None:
    """Right key, another session (another executor sharing the key, or an old capture)."""
    ex = make_executor(1, heartbeat_timeout=60)  # the fake worker must not be declared lost
    conn = conn_of(ex)
    other = bytes(b ^ 0xFF for b in conn.session)
    sock = dealer(raw_socket, conn)
    sock.send_multipart(result_with(sentinel, conn.key, other))
    assert_logged(warnings_log, "another session", conn.key)
    # a joined (READY'd) peer is held to the session too, and STATUS as well
    wid = os.urandom(16)
    fake = dealer(raw_socket, conn, identity=wid)
    join_as_fake_worker(fake, conn.key, wid)
    before = drop_count(ex)
    fake.send_multipart(result_with(sentinel, conn.key, other, seq=2))
    fake.send_multipart(encode(conn.key, Kind.STATUS, other, 3))
    assert wait_for(lambda: drop_count(ex) >= before + 2)
    assert Kind.STATUS_REPLY not in [m.kind for m in recv_messages(fake, conn.key, 0.5)]
    leave(fake, conn, 4)
    assert_still_works(ex)


def test_unhashed_large_payloads_refused_from_a_tcp_peer(make_executor: Any, raw_socket: Any,
                                                          sentinel: bytes,
                                                          warnings_log: pytest.LogCaptureFixture) -> None:
    """Flag.LOCAL (large payloads outside the MAC) is for Unix-socket peers only.

    A worker that joined over TCP (its READY does not say local) and sends a RESULT whose
    out-of-band payload is left out of the MAC is refused, sentinel unread; the local
    workers of the same executor use the flag, and their big results arrive intact.
    """
    import numpy as np

    ex = make_executor(1, heartbeat_timeout=60)
    conn = conn_of(ex)
    wid = os.urandom(16)
    fake = dealer(raw_socket, conn, identity=wid)  # tcp://127.0.0.1
    join_as_fake_worker(fake, conn.key, wid)
    assert wid not in ex._broker._local
    unhashed = encode(conn.key, Kind.RESULT, conn.session, 2, task_id=1, flags=Flag.OK, serializer=1,
                      frames=[sentinel, bytes(ZERO_COPY_THRESHOLD)], local=True)
    assert HEADER.unpack(bytes(unhashed[0])[32:80])[3] & Flag.LOCAL
    fake.send_multipart(unhashed)
    assert_logged(warnings_log, "not on a Unix socket", conn.key)
    leave(fake, conn, 3)
    assert ex.submit(abs, -1).result(timeout=60) == 1  # the local worker has joined
    local_workers = [w for w in ex._scheduler.workers if w != wid]
    assert local_workers and all(w in ex._broker._local for w in local_workers)
    arr = np.arange(2_000_000, dtype=np.float64)  # 16 MB each way
    assert np.array_equal(ex.submit(np.negative, arr).result(timeout=60), -arr)
    assert_still_works(ex)


# A RESULT with an inline payload (the sentinel) and an out-of-band one (64 KiB): the
# block [signature, header, table, sentinel] then the big frame (see impexec._protocol).
TRUNCATIONS = {
    "signature only": lambda f: [f[0][:32]],
    "header cut short": lambda f: [f[0][:52], *f[1:]],
    "signature cut short": lambda f: [f[0][16:], *f[1:]],
    "table cut short": lambda f: [f[0][:82], *f[1:]],
    "inline payload cut short": lambda f: [f[0][:-3], *f[1:]],
    "out-of-band frame missing": lambda f: f[:1],
    "out-of-band frame cut short": lambda f: [f[0], f[1][: len(f[1]) // 2]],
    "second record cut": lambda f: [f[0] + f[0][:60], *f[1:], *f[1:]],
    "empty frames": lambda f: [b"", b""],
}


@pytest.mark.parametrize("how", sorted(TRUNCATIONS))
def test_truncated_frames_dropped(how: str, make_executor: Any, raw_socket: Any, sentinel: bytes,
                                  warnings_log: pytest.LogCaptureFixture) -> None:
    ex = make_executor(1)
    conn = conn_of(ex)
    whole = [bytes(f) for f in encode(conn.key, Kind.RESULT, conn.session, 5, task_id=1, flags=Flag.OK,
                                      serializer=1, frames=[sentinel, bytes(ZERO_COPY_THRESHOLD)])]
    assert len(whole) == 2  # the block, then the out-of-band frame
    sock = dealer(raw_socket, conn)
    sock.send_multipart(TRUNCATIONS[how](whole))
    assert_logged(warnings_log, "dropped a message", conn.key)
    assert drop_count(ex) == 1
    assert_still_works(ex)


def test_replayed_frames_refused(make_executor: Any, raw_socket: Any, sentinel: bytes,
                                 warnings_log: pytest.LogCaptureFixture) -> None:
    """Signed messages sent again: same connection, a new connection, another routing id."""
    ex = make_executor(1, heartbeat_timeout=60)  # the fake worker must not be declared lost
    ex._broker._drop_log.interval = 0  # log every refusal: the reasons are checked below
    conn = conn_of(ex)
    wid = os.urandom(16)
    fake = dealer(raw_socket, conn, identity=wid)
    join_as_fake_worker(fake, conn.key, wid)
    heartbeat = encode(conn.key, Kind.HEARTBEAT, conn.session, 2)
    fake.send_multipart(heartbeat)
    assert [m.kind for m in recv_messages(fake, conn.key, 5)] == [Kind.HEARTBEAT]
    # 1. the same message again on the same connection: seq not increasing
    fake.send_multipart(heartbeat)
    assert_logged(warnings_log, "replayed or reordered", conn.key)
    assert Kind.HEARTBEAT not in [m.kind for m in recv_messages(fake, conn.key, 0.3)]
    # 2. its READY replayed from a new connection with the same routing id
    fake.close(linger=0)
    ready = {"worker": wid.hex(), "pid": 0, "host": "fake", "tag": ""}
    before = drop_count(ex)
    for _ in range(40):
        # ZeroMQ refuses a duplicate routing id until it has seen the old connection go,
        # and such a refused connection is of no further use: try again on a fresh one
        again = dealer(raw_socket, conn, identity=wid)
        again.send_multipart(encode(conn.key, Kind.READY, b"\0" * 8, 1,
                                    frames=[json.dumps(ready).encode()]))
        if wait_for(lambda: drop_count(ex) > before, 0.5):
            break
        again.close(linger=0)
    assert drop_count(ex) > before
    assert_logged(warnings_log, "READY from a worker id seen before", conn.key)
    # 3. a captured RESULT (carrying a pickle) replayed under a routing id that never
    #    said READY: refused before the payload is looked at
    stranger = dealer(raw_socket, conn, identity=os.urandom(16))
    before = drop_count(ex)
    stranger.send_multipart(result_with(sentinel, conn.key, conn.session, seq=99))
    stranger.send_multipart(heartbeat)
    assert wait_for(lambda: drop_count(ex) >= before + 2)
    assert_logged(warnings_log, "never sent READY", conn.key)
    leave(again, conn, 10)  # the fake worker's routing id, with a fresh number
    assert_still_works(ex)


def test_replayed_stop_workers_refused(make_executor: Any, raw_socket: Any,
                                       warnings_log: pytest.LogCaptureFixture) -> None:
    ex = make_executor(None)
    conn = conn_of(ex)
    stop = encode(conn.key, Kind.STOP_WORKERS, conn.session, 1_000_000)
    first = dealer(raw_socket, conn)
    first.send_multipart(stop)
    assert [m.kind for m in recv_messages(first, conn.key, 5)] == [Kind.STATUS_REPLY]
    second = dealer(raw_socket, conn)
    second.send_multipart(stop)
    assert_logged(warnings_log, "replayed STOP_WORKERS", conn.key)
    assert recv_messages(second, conn.key, 0.3) == []


def test_plaintext_client_cannot_talk_to_encrypting_broker(
    make_executor: Any, raw_socket: Any, warnings_log: pytest.LogCaptureFixture
) -> None:
    ex = make_executor(1, encrypt=True)
    conn = conn_of(ex)
    assert conn.server_key and conn.client_public and conn.client_secret
    sock = dealer(raw_socket, conn)  # no CURVE, but the right key and session
    sock.send_multipart(encode(conn.key, Kind.STATUS, conn.session, 1))
    assert_logged(warnings_log, "handshake failed", conn.key, conn.client_secret)
    assert recv_messages(sock, conn.key, 0.3) == []
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
    intruder.send_multipart(encode(conn.key, Kind.STATUS, conn.session, 1))
    assert_logged(warnings_log, "not this executor's", conn.key, conn.client_secret, secret)
    assert recv_messages(intruder, conn.key, 0.3) == []
    assert drop_count(ex) == 0
    # the same request with the executor's client key is answered
    friend = dealer(raw_socket, conn, curve=(conn.server_key, conn.client_public or "",
                                            conn.client_secret or ""))
    friend.send_multipart(encode(conn.key, Kind.STATUS, conn.session, 2))
    replies = recv_messages(friend, conn.key, 10)
    assert [m.kind for m in replies] == [Kind.STATUS_REPLY]
    assert "workers" in replies[0].json()
    assert_still_works(ex)


def _run_worker(conn: ConnectionInfo) -> int:
    box: list[int] = []
    t = threading.Thread(target=lambda: box.append(Worker(conn, connect_timeout=1.5).run()),
                         name="test-worker")
    t.start()
    t.join(30)
    assert not t.is_alive()
    return box[0]


@pytest.mark.parametrize("wrong", ["server key", "client key", "no curve"])
def test_worker_with_wrong_curve_keys_cannot_join(wrong: str, make_executor: Any,
                                                  warnings_log: pytest.LogCaptureFixture) -> None:
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
    joiner = subprocess.Popen(
        [sys.executable, "-m", "impexec", "worker", "--connect", str(path), "--connect-timeout", "30"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: ex.statistics().workers == 2, 60), "the joining worker never joined"
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
        sock.send_multipart(encode(conn.key, Kind.STATUS, conn.session, seq))
        replies = recv_messages(sock, conn.key, 1.0)
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
    status = subprocess.run([sys.executable, "-m", "impexec", "status", str(path)],
                            capture_output=True, text=True, timeout=60)
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
    conn = ConnectionInfo(address="tcp://127.0.0.1:1", key=key, server_key=public,
                          client_public=public, client_secret=secret)
    text = repr(conn) + str(conn)
    assert key.hex() not in text and repr(key) not in text and secret not in text
    assert ConnectionInfo.from_json(conn.to_json()) == conn  # the file still has them


@pytest.mark.parametrize("encrypt", [False, True])
def test_exposed_bind_warns_unless_encrypted(encrypt: bool, make_executor: Any,
                                             warnings_log: pytest.LogCaptureFixture) -> None:
    ex = make_executor(None, address="tcp://0.0.0.0:0", encrypt=encrypt)
    conn = conn_of(ex)
    exposed = [r.getMessage() for r in warnings_log.records if "without encrypt=True" in r.getMessage()]
    if encrypt:
        assert exposed == []
    else:
        assert len(exposed) == 1 and "can read the tasks and results" in exposed[0]
    assert conn.key.hex() not in warnings_log.text
