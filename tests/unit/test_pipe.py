"""The local workers' pipe (impexec._pipe, impexec._mainlink): framing, the broker's
non-blocking ends, the worker's end, over real Unix socket pairs."""

from __future__ import annotations

import logging
import os
import random
import select
import socket
import struct
import threading
import time

import pytest

from impexec import _mainlink, _pipe
from impexec._mainlink import WorkerPipe
from impexec._pipe import BrokerPipe, Parser, PipeError, PipeSet, pack

WID = b"w" * 16


@pytest.fixture
def ends():
    a, b = _pipe.pair()
    yield a, b
    a.close()
    b.close()


def _stream(messages: list[list[bytes]]) -> bytes:
    out = []
    for frames in messages:
        bufs, total = pack(frames)
        data = b"".join(bytes(x) for x in bufs)
        assert len(data) == total
        out.append(data)
    return b"".join(out)


class _Feed:
    """A socket stand-in for Parser.read that returns a script of byte chunks (the
    parser's only use of the socket is recv_into; this tests its arithmetic alone)."""

    def __init__(self, chunks: list[bytes]):
        self.chunks = list(chunks)

    def recv_into(self, buf, nbytes=0, flags=0):
        if not self.chunks:
            return 0
        head = self.chunks[0]
        n = min(len(head), len(buf))
        buf[:n] = head[:n]
        if n == len(head):
            self.chunks.pop(0)
        else:
            self.chunks[0] = head[n:]
        return n


def test_messages_come_out_whole_however_the_stream_is_cut():
    rng = random.Random(7)
    messages = [
        [b"a"],
        [b"", b"xy", b""],
        [bytes(range(256)) * 3, b"z"],
        [os.urandom(_pipe.BIG_FRAME + 17)],  # a large frame: its own buffer
        [b"1", os.urandom(_pipe.BIG_FRAME * 3), b"2"],
        [b"end"],
    ]
    data = _stream(messages)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 40)))
        chunks = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=False)]
        feed, parser, got = _Feed(chunks), Parser(), []
        while (out := parser.read(feed)) is not None:  # type: ignore[arg-type]
            got += out
        assert [[bytes(f) for f in m] for m in got] == messages


def test_every_cut_of_a_small_stream():
    messages = [[b"ab", b""], [b"cde"], [b"f" * 40, b"g"]]
    data = _stream(messages)
    for cut in range(1, len(data)):
        feed, parser, got = _Feed([data[:cut], data[cut:]]), Parser(), []
        while (out := parser.read(feed)) is not None:  # type: ignore[arg-type]
            got += out
        assert [[bytes(f) for f in m] for m in got] == messages, cut


@pytest.mark.parametrize("count", [0, _pipe.MAX_FRAMES + 1])
def test_a_corrupt_count_is_an_error_not_a_huge_allocation(count):
    feed = _Feed([struct.pack("<I", count) + b"\0" * 64])
    with pytest.raises(PipeError, match="frames"):
        Parser().read(feed)  # type: ignore[arg-type]


def test_worker_to_broker_carries_the_worker_id_and_payloads(ends):
    a, b = ends
    broker, worker = BrokerPipe(a), WorkerPipe(b, WID)
    assert worker.send([b"block", memoryview(b"x" * 100)])
    assert select.select([a], [], [], 5)[0]
    assert broker.parser.read(broker.sock) == [[WID, b"block", b"x" * 100]]


def test_broker_keeps_what_the_socket_does_not_take_and_sends_it_in_order(ends):
    """A worker busy with a task does not read: the broker must never block on it."""
    a, b = ends
    broker = BrokerPipe(a)
    big = os.urandom(16 << 20)  # far more than the socket's buffer
    broker.send([b"first", big])
    broker.send([b"second"])
    assert broker.out, "a 16 MiB message fits no socket buffer: the rest must wait in user space"
    worker = WorkerPipe(b, WID)
    got: list[list[bytes]] = []
    reader = threading.Thread(target=lambda: got.extend([worker.recv(), worker.recv()]))
    reader.start()
    while broker.out:
        select.select([], [a], [], 5)
        broker.flush()
    reader.join(10)
    assert not reader.is_alive()
    assert [bytes(got[0][0]), bytes(got[0][1]) == big, bytes(got[1][0])] == [b"first", True, b"second"]


def test_pipe_set_routes_by_the_id_it_heard_and_asks_for_pollout_only_while_it_keeps(ends):
    a, b = ends
    poller = select.poll()
    pipes = PipeSet(poller)
    pipes.add(a)
    worker = WorkerPipe(b, WID)
    assert not pipes.send(WID, [b"x"]), "no route before the worker has spoken on its pipe"
    worker.send([b"ready"])
    heard: list[tuple[bytes, list]] = []
    pipes.polled(poller.poll(5000))
    pipes.receive(lambda ident, frames: heard.append((ident, frames)), 16)
    assert heard == [(WID, [WID, b"ready"])]
    assert pipes.send(WID, [b"welcome"])
    assert worker.recv() == [b"welcome"]
    pipes.send(WID, [os.urandom(16 << 20)])
    assert pipes.dirty
    pipes.sync()
    assert pipes.by_ident[WID].polled == select.POLLIN | select.POLLOUT
    received = []
    reader = threading.Thread(target=lambda: received.append(worker.recv()))
    reader.start()
    while pipes.by_ident[WID].out:
        pipes.polled(poller.poll(5000))
        pipes.sync()
    reader.join(10)
    assert len(bytes(received[0][0])) == 16 << 20
    assert pipes.by_ident[WID].polled == select.POLLIN


def test_another_id_on_a_workers_pipe_is_dropped(ends, caplog):
    a, b = ends
    poller = select.poll()
    pipes = PipeSet(poller)
    pipes.add(a)
    WorkerPipe(b, WID).send([b"ready"])
    WorkerPipe(b, b"o" * 16).send([b"impostor"])
    heard: list[bytes] = []
    pipes.polled(poller.poll(5000))
    with caplog.at_level(logging.WARNING, logger="impexec._broker"):
        pipes.receive(lambda ident, frames: heard.append(frames[1]), 16)
    assert heard == [b"ready"]
    assert "on the pipe of another" in caplog.text


def test_end_of_file_forgets_the_pipe_and_closes_it(ends):
    a, b = ends
    poller = select.poll()
    pipes = PipeSet(poller)
    pipes.add(a)
    pipe_fd = a.fileno()
    WorkerPipe(b, WID).send([b"ready"])
    b.close()  # the worker exited
    heard: list[bytes] = []
    deadline = time.monotonic() + 5
    while pipes.owns(pipe_fd) and time.monotonic() < deadline:
        pipes.polled(poller.poll(1000))
        pipes.receive(lambda ident, frames: heard.append(frames[1]), 16)
    assert heard == [b"ready"], "what it sent before it exited is still read"
    assert not pipes.by_ident and not pipes.owns(pipe_fd)
    assert a.fileno() == -1, "closed"
    assert not pipes.send(WID, [b"x"])


def test_the_worker_reads_end_of_file_as_the_client_gone(ends):
    a, b = ends
    worker = WorkerPipe(b, WID)
    BrokerPipe(a).send([b"last"])
    a.close()
    assert worker.poll(1000)
    assert worker.recv() == [b"last"]
    assert worker.poll(0), "end of file wakes the poll"
    with pytest.raises(EOFError):
        worker.recv()
    assert not worker.send([b"result"]), "a send to a client that is gone fails, it does not raise"


def test_the_worker_takes_its_pipe_only_when_the_inode_matches(ends, monkeypatch, caplog):
    _a, b = ends
    fd = os.dup(b.fileno())
    ino = os.fstat(fd).st_ino
    monkeypatch.setenv(_pipe.ENV, f"{fd}:{ino + 1}")
    with caplog.at_level(logging.WARNING):
        assert _mainlink.inherited() is None
    assert "not the socket its client made" in caplog.text
    assert _pipe.ENV not in os.environ, "tasks' own subprocesses must not see the variable"
    monkeypatch.setenv(_pipe.ENV, f"{fd}:{ino}")
    sock = _mainlink.inherited()
    assert sock is not None and sock.fileno() == fd and not sock.get_inheritable()
    sock.close()


def test_a_variable_naming_no_open_fd_falls_back(monkeypatch):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    monkeypatch.setenv(_pipe.ENV, f"{r}:1")
    assert _mainlink.inherited() is None


def test_pair_asks_for_large_buffers(ends):
    a, _ = ends
    # the kernel caps (and on Linux doubles) the request; it must exceed its default
    assert a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) > 256 * 1024 or _wmem_max() <= 256 * 1024


def _wmem_max() -> int:
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            return int(f.read())
    except OSError:
        return 0


def test_a_frame_received_into_premapped_memory_is_whole_and_writable():
    """Frames from POPULATE_FROM on land in memory mapped with MAP_POPULATE (a third of a
    100 MB round trip went to page faults); the bytes and writability must not change."""
    big = os.urandom(_pipe.POPULATE_FROM + 4097)
    data = _stream([[b"head", big, b"tail"]])
    rng = random.Random(3)
    cuts = sorted(rng.sample(range(1, len(data)), 25))
    chunks = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    feed, parser, got = _Feed(chunks), Parser(), []
    while (out := parser.read(feed)) is not None:  # type: ignore[arg-type]
        got += out
    [[head, frame, tail]] = got
    assert (head, tail) == (b"head", b"tail")
    assert len(frame) == len(big) and bytes(frame) == big
    view = memoryview(frame)
    assert not view.readonly, "numpy arrays built on it stay writable, as with bytearray"
    view.release()
