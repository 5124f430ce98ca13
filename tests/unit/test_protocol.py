"""The wire protocol: round trips; malformed messages are refused before unpickling.

The last tests go through a real broker: junk sent to an executor's address is dropped
and logged at WARNING, and the executor goes on working.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest
import zmq

import tasks
from impexec._errors import ProtocolError
from impexec._protocol import (
    HEADER,
    MAX_FRAMES,
    OOB,
    PROTOCOL_VERSION,
    RECORD_FIXED,
    SIG_SIZE,
    ZERO_COPY_THRESHOLD,
    Flag,
    Kind,
    decode,
    encode,
    encode_json,
    join,
    worker_keys,
)
from waiting import wait_until

KEY = b"k" * 32
SESSION = b"s" * 8


def _one(frames: list[Any], session: bytes | None = SESSION, key: bytes = KEY) -> Any:
    msgs = list(decode(key, frames, session))
    assert len(msgs) == 1
    return msgs[0]


@pytest.mark.parametrize("kind", list(Kind))
def test_round_trip_every_kind(kind: Kind) -> None:
    payload = [b"first", bytearray(b"second"), memoryview(b"third")]
    frames = encode(
        KEY,
        kind,
        SESSION,
        7,
        task_id=11,
        ctx_id=13,
        aux=17,
        flags=Flag.OK | Flag.CHUNK,
        serializer=2,
        frames=payload,
    )
    msg = _one(frames)
    assert msg.kind is kind
    assert (msg.session, msg.seq, msg.task_id, msg.ctx_id, msg.aux) == (
        SESSION,
        7,
        11,
        13,
        17,
    )
    assert msg.flags == Flag.OK | Flag.CHUNK
    assert msg.serializer == 2
    assert [bytes(f) for f in msg.frames] == [b"first", b"second", b"third"]


def test_round_trip_json_and_empty_payload() -> None:
    msg = _one(encode_json(KEY, Kind.READY, SESSION, 1, {"pid": 42, "host": "h"}))
    assert msg.json() == {"pid": 42, "host": "h"}
    empty = _one(encode(KEY, Kind.HEARTBEAT, SESSION, 2))
    assert empty.frames == []
    assert empty.json() == {}  # no payload: an empty object


def test_batched_records_decode_in_order() -> None:
    frames = [
        *encode(KEY, Kind.HEARTBEAT, SESSION, 1),
        *encode(KEY, Kind.RESULT, SESSION, 2, task_id=5, frames=[b"x"]),
        *encode(KEY, Kind.GOODBYE, SESSION, 3),
    ]
    msgs = list(decode(KEY, frames, SESSION))
    assert [(m.kind, m.seq) for m in msgs] == [
        (Kind.HEARTBEAT, 1),
        (Kind.RESULT, 2),
        (Kind.GOODBYE, 3),
    ]


def test_round_trip_through_zmq_frames(raw_socket: Any) -> None:
    a = raw_socket(zmq.PAIR)
    b = raw_socket(zmq.PAIR)
    port = a.bind_to_random_port("tcp://127.0.0.1")
    b.connect(f"tcp://127.0.0.1:{port}")
    big = os.urandom(200_000)
    b.send_multipart(encode(KEY, Kind.TASK, SESSION, 1, task_id=3, frames=[b"fn", big]))
    frames = a.recv_multipart(copy=False)
    msg = _one(frames)
    assert msg.kind is Kind.TASK
    assert bytes(msg.frames[1]) == big


# A record is signature (32) ‖ header (56) ‖ table (4 per payload) ‖ inline payloads, in
# one block frame; payloads of ZERO_COPY_THRESHOLD and more follow as their own frames.
FIELDS = [
    "version",
    "kind",
    "serializer",
    "flags",
    "nframes",
    "session",
    "seq",
    "ack",
    "task_id",
    "ctx_id",
    "aux",
]


def _header(frames: list[Any]) -> tuple[Any, ...]:
    return HEADER.unpack(bytes(frames[0])[SIG_SIZE:RECORD_FIXED])


def _with_header(frames: list[Any], **changes: Any) -> list[Any]:
    fields = dict(zip(FIELDS, _header(frames), strict=True))
    fields.update(changes)
    block = bytes(frames[0])
    header = HEADER.pack(*(fields[n] for n in FIELDS))
    return [block[:SIG_SIZE] + header + block[RECORD_FIXED:], *frames[1:]]


def _resign(frames: list[Any], key: bytes = KEY) -> list[Any]:
    """Re-sign altered frames with the right key: a peer that holds the key but lies."""
    from impexec._protocol import _mac

    block = bytes(frames[0])
    return [_mac(key, block[SIG_SIZE:], frames[1:]) + block[SIG_SIZE:], *frames[1:]]


BIG = bytes(ZERO_COPY_THRESHOLD)


def _good(**kw: Any) -> list[Any]:
    """A RESULT with an inline payload and an out-of-band one: [block, big frame]."""
    frames = encode(KEY, Kind.RESULT, SESSION, 5, task_id=9, frames=[b"payload", BIG], **kw)
    assert len(frames) == 2
    return [bytes(f) for f in frames]


def _flip(data: bytes, at: int = 0) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


TABLE_AT = RECORD_FIXED  # first table entry: the inline payload's length

BAD_MESSAGES = {
    "tampered signature": lambda f: [_flip(f[0]), *f[1:]],
    "tampered header": lambda f: [_flip(f[0], SIG_SIZE + 20), *f[1:]],
    "tampered table": lambda f: [_flip(f[0], TABLE_AT + 3), *f[1:]],
    "tampered inline payload": lambda f: [_flip(f[0], len(f[0]) - 1), *f[1:]],
    "tampered out-of-band payload": lambda f: [f[0], _flip(f[1], 100)],
    "out-of-band frame added": lambda f: [*f, BIG],
    "out-of-band frame removed": lambda f: f[:-1],
    "out-of-band frame cut short": lambda f: [f[0], f[1][:-1]],
    "inline payload cut short": lambda f: [f[0][:-1], *f[1:]],
    "bytes added to the block": lambda f: [f[0] + b"x", *f[1:]],
    "truncated to the signature": lambda f: [f[0][:SIG_SIZE]],
    "short signature": lambda f: [f[0][1:], *f[1:]],
    "short header": lambda f: [f[0][: SIG_SIZE + 47]],
    "empty": lambda f: [b"", b""],
    "wrong key": lambda f: encode(b"x" * 32, Kind.RESULT, SESSION, 5, frames=[b"payload"]),
    "wrong session": lambda f: encode(KEY, Kind.RESULT, b"o" * 8, 5, frames=[b"payload"]),
    "unknown kind": lambda f: _resign(_with_header(f, kind=200)),
    "wrong version": lambda f: _resign(_with_header(f, version=PROTOCOL_VERSION + 1)),
    "version 1 (the multi-frame layout)": lambda f: _resign(_with_header(f, version=1)),
    "oversize nframes": lambda f: _resign(_with_header(f, nframes=MAX_FRAMES + 1)),
    "nframes beyond the table": lambda f: _resign(_with_header(f, nframes=3)),
    "nframes of 2**32-1": lambda f: _with_header(f, nframes=2**32 - 1),
    "inline length beyond the block": lambda f: _resign(
        [f[0][:TABLE_AT] + (2**31).to_bytes(4, "big") + f[0][TABLE_AT + 4 :], *f[1:]]
    ),
    "two out-of-band entries, one frame": lambda f: _resign(
        [f[0][:TABLE_AT] + OOB.to_bytes(4, "big") + f[0][TABLE_AT + 4 : TABLE_AT + 8], f[1]]
    ),
}


@pytest.mark.parametrize("how", list(BAD_MESSAGES))
def test_malformed_message_raises_protocol_error(how: str) -> None:
    frames = BAD_MESSAGES[how](_good())
    with pytest.raises(ProtocolError):
        list(decode(KEY, frames, SESSION))


def test_signature_is_checked_before_the_header_is_believed() -> None:
    # an unsigned header claiming an unknown kind is reported as unauthenticated
    frames = _with_header(_good(), kind=200)
    with pytest.raises(ProtocolError, match="signature"):
        list(decode(KEY, frames, SESSION))


def test_records_before_a_bad_one_are_yielded() -> None:
    frames = [*encode(KEY, Kind.HEARTBEAT, SESSION, 1), b"junk" * 30, b"junk"]
    it = decode(KEY, frames, SESSION)
    assert next(it).kind is Kind.HEARTBEAT
    with pytest.raises(ProtocolError):
        next(it)


def test_any_session_accepted_when_none_given() -> None:
    msg = _one(encode(KEY, Kind.READY, b"\0" * 8, 1), session=None)
    assert msg.kind is Kind.READY


def test_header_layout_is_fixed() -> None:
    assert HEADER.size == 56
    assert SIG_SIZE == 32
    assert RECORD_FIXED == 88


def test_small_payloads_travel_inline_and_large_ones_out_of_band() -> None:
    big = os.urandom(ZERO_COPY_THRESHOLD)
    frames = encode(KEY, Kind.TASK, SESSION, 1, frames=[b"fn", big, b"args"])
    assert len(frames) == 2 and frames[1] is big  # not copied
    assert len(frames[0]) == RECORD_FIXED + 3 * 4 + len(b"fn") + len(b"args")
    msg = _one(frames)
    assert [bytes(f) for f in msg.frames] == [b"fn", big, b"args"]
    assert msg.frames[1] is big  # handed over as it came


def test_join_merges_blocks_and_keeps_out_of_band_frames_in_order() -> None:
    big1, big2 = os.urandom(ZERO_COPY_THRESHOLD), os.urandom(ZERO_COPY_THRESHOLD + 1)
    msgs = [
        encode(KEY, Kind.TASK, SESSION, 1, task_id=1, frames=[b"a", big1]),
        encode(KEY, Kind.HEARTBEAT, SESSION, 2),
        encode(KEY, Kind.TASK, SESSION, 3, task_id=3, frames=[big2, b"c"]),
    ]
    frames = join(msgs)
    assert len(frames) == 3  # one block, two out-of-band frames
    out = list(decode(KEY, frames, SESSION))
    assert [(m.kind, m.seq) for m in out] == [(Kind.TASK, 1), (Kind.HEARTBEAT, 2), (Kind.TASK, 3)]
    assert [bytes(f) for f in out[0].frames] == [b"a", big1]
    assert [bytes(f) for f in out[2].frames] == [big2, b"c"]
    assert join(msgs[:1]) == msgs[0]


def test_the_mac_is_hmac_sha256_of_the_record() -> None:
    import hashlib
    import hmac

    frames = encode(KEY, Kind.RESULT, SESSION, 4, frames=[b"value"])
    block = bytes(frames[0])
    assert block[:SIG_SIZE] == hmac.new(KEY, block[SIG_SIZE:], hashlib.sha256).digest()


# -- through a real broker -------------------------------------------------------------
JUNK = {
    "garbage frames": [b"hello", b"world"],
    "wrong key": encode(b"x" * 32, Kind.HEARTBEAT, SESSION, 1),
    "truncated": [b"\0" * SIG_SIZE],
    "tampered task": [
        b"\0" * SIG_SIZE + HEADER.pack(PROTOCOL_VERSION, Kind.RESULT, 1, 0, 0, SESSION, 1, 0, 1, 0, 0),
    ],
}


@pytest.mark.parametrize("how", list(JUNK))
def test_broker_drops_and_logs_junk_and_keeps_working(
    how: str, make_executor: Any, raw_socket: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="impexec")
    ex = make_executor(1)
    assert ex.submit(tasks.square, 3).result(timeout=60) == 9
    intruder = raw_socket(zmq.DEALER, identity=os.urandom(16))
    intruder.connect(ex.address)
    intruder.send_multipart(JUNK[how])
    wait_until(
        lambda: any("dropped" in r.getMessage() for r in caplog.records),
        10,
        "the broker to log the dropped message",
    )
    record = next(r for r in caplog.records if "dropped" in r.getMessage())
    assert record.levelno == logging.WARNING
    assert record.name.startswith("impexec")
    assert ex.submit(tasks.square, 4).result(timeout=60) == 16
    assert ex.statistics().workers == 1  # the intruder did not become a worker


def test_worker_drops_and_logs_junk_from_its_broker(raw_socket: Any, tmp_path: Any) -> None:
    """A fake broker answers a worker's READY with junk: dropped and logged."""
    import subprocess
    import sys

    from impexec._connection import ConnectionInfo

    router = raw_socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    conn = ConnectionInfo(address=f"tcp://127.0.0.1:{port}", key=KEY).write(tmp_path / "c.json")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "impexec",
            "worker",
            "--connect",
            str(conn),
            "--connect-timeout",
            "3",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ident, *frames = router.recv_multipart()
        assert next(decode(worker_keys(KEY, ident)[0], frames, None)).kind is Kind.READY
        router.send_multipart([ident, b"junk", b"frames"])
        router.send_multipart([ident, *encode(b"x" * 32, Kind.WELCOME, SESSION, 1)])
        _, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    assert worker.returncode == 3  # EXIT_NO_BROKER: no valid WELCOME came
    assert "WARNING" in err
    assert "dropped" in err.lower()


def test_local_records_leave_large_payloads_out_of_the_mac_and_need_consent() -> None:
    """Flag.LOCAL: out-of-band payloads enter the MAC by length only (Unix-socket peers)."""
    big = os.urandom(ZERO_COPY_THRESHOLD)
    frames = encode(KEY, Kind.RESULT, SESSION, 1, frames=[b"pickle", big], local=True)
    assert _header(frames)[3] & Flag.LOCAL
    with pytest.raises(ProtocolError, match="Unix socket"):  # the receiver did not agree
        list(decode(KEY, frames, SESSION))
    msg = _one_local(frames)
    assert [bytes(f) for f in msg.frames] == [b"pickle", big]
    # the header, the table, the inline bytes and each large payload's length still count
    for bad in (
        [_flip(bytes(frames[0]), len(bytes(frames[0])) - 1), big],
        [frames[0], big[:-1]],
        [frames[0]],
    ):
        with pytest.raises(ProtocolError):
            list(decode(KEY, bad, SESSION, True))
    # and the flag cannot be added or removed without the key
    plain = encode(KEY, Kind.RESULT, SESSION, 1, frames=[b"pickle", big])
    assert not _header(plain)[3] & Flag.LOCAL
    for forged in (_with_header(plain, flags=Flag.LOCAL), _with_header(frames, flags=0)):
        with pytest.raises(ProtocolError, match="signature"):
            list(decode(KEY, forged, SESSION, True))
    # without out-of-band payloads there is nothing to leave out: no flag
    assert not _header(encode(KEY, Kind.RESULT, SESSION, 1, frames=[b"x"], local=True))[3] & Flag.LOCAL


def _one_local(frames: list[Any]) -> Any:
    msgs = list(decode(KEY, frames, SESSION, True))
    assert len(msgs) == 1
    return msgs[0]
