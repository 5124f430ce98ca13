"""The fault-injecting relay itself, with plain sockets: each fault does what it says."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from relay import DOWN, UP, Relay

from waiting import wait_until

#: Seconds any socket operation here may block before the test fails.
IO_TIMEOUT = 5.0


@pytest.fixture
def server() -> Iterator[socket.socket]:
    """A listening socket on loopback: the relay's target; the test accepts by hand."""
    s = socket.create_server(("127.0.0.1", 0))
    s.settimeout(IO_TIMEOUT)
    yield s
    s.close()


@pytest.fixture
def sockets() -> Iterator[Callable[[socket.socket], socket.socket]]:
    """Register a socket to be closed at teardown; returns it."""
    made: list[socket.socket] = []

    def keep(sock: socket.socket) -> socket.socket:
        sock.settimeout(IO_TIMEOUT)
        made.append(sock)
        return sock

    yield keep
    for sock in made:
        sock.close()


def target(server: socket.socket) -> tuple[str, int]:
    return server.getsockname()[:2]


def connect(
    relay: Relay, keep: Callable[[socket.socket], socket.socket], server: socket.socket
) -> tuple[socket.socket, socket.socket]:
    """A client connected through the relay, and the server's end of it."""
    client = keep(socket.create_connection((relay.host, relay.port), timeout=IO_TIMEOUT))
    peer, _ = server.accept()
    return client, keep(peer)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def assert_reset(sock: socket.socket) -> None:
    """The connection was aborted: a read fails with ECONNRESET (or sees the end at once)."""
    sock.settimeout(IO_TIMEOUT)
    try:
        data = sock.recv(100)
    except ConnectionResetError:
        return
    assert data == b"", f"expected a reset connection, read {data!r}"


def assert_connection_reset(relay: Relay) -> None:
    """A new connection through the relay is reset (at connect, if the RST comes that fast)."""
    try:
        sock = socket.create_connection((relay.host, relay.port), timeout=IO_TIMEOUT)
    except ConnectionResetError:
        return
    with sock:
        assert_reset(sock)


def assert_silent(sock: socket.socket, seconds: float) -> None:
    sock.settimeout(seconds)
    try:
        data = sock.recv(100)
    except TimeoutError:
        return
    finally:
        sock.settimeout(IO_TIMEOUT)
    pytest.fail(f"expected nothing for {seconds} s, got {data!r}")


def test_forwards_both_ways_and_counts(relay_factory, server, sockets):
    relay = relay_factory(target(server))
    client, peer = connect(relay, sockets, server)
    client.sendall(b"ping")
    assert recv_exactly(peer, 4) == b"ping"
    peer.sendall(b"pong!")
    assert recv_exactly(client, 5) == b"pong!"
    stats = relay.stats()
    assert (stats.accepted, stats.forwarded, stats.open) == (1, 1, 1)
    assert (stats.bytes_up, stats.bytes_down) == (4, 5)
    assert relay.address == f"tcp://127.0.0.1:{relay.port}"


def test_large_transfer_keeps_every_byte_in_order(relay_factory, server, sockets):
    """More than the relay buffers and the kernels hold: back-pressure, no loss."""
    relay = relay_factory(target(server))
    client, peer = connect(relay, sockets, server)
    payload = os.urandom(12 << 20)
    sender = threading.Thread(target=client.sendall, args=(payload,), daemon=True)
    sender.start()
    assert recv_exactly(peer, len(payload)) == payload
    sender.join(IO_TIMEOUT)
    assert not sender.is_alive()


def test_end_of_stream_is_passed_on_and_the_link_closes(relay_factory, server, sockets):
    relay = relay_factory(target(server))
    client, peer = connect(relay, sockets, server)
    client.sendall(b"last words")
    client.shutdown(socket.SHUT_WR)
    assert recv_exactly(peer, 10) == b"last words"
    assert peer.recv(10) == b""  # the FIN came through
    peer.sendall(b"reply")  # the other direction still works (half-closed, not reset)
    assert recv_exactly(client, 5) == b"reply"
    peer.close()
    assert client.recv(10) == b""
    wait_until(lambda: not relay.stats().open, IO_TIMEOUT, "the relay to drop the closed link")
    stats = relay.stats()
    assert (stats.open, stats.closed, stats.aborted) == (0, 1, 0)


def test_reset_aborts_links_and_refuses_new_ones_for_its_duration(relay_factory, server, sockets):
    relay = relay_factory(target(server))
    client, peer = connect(relay, sockets, server)
    assert relay.reset(0.5) == 1
    assert_reset(client)
    assert_reset(peer)
    # during the outage a connection is accepted and reset at once; the target sees nothing
    assert_connection_reset(relay)
    server.settimeout(0.1)
    with pytest.raises(TimeoutError):
        server.accept()
    server.settimeout(IO_TIMEOUT)
    time.sleep(0.5)
    client2, peer2 = connect(relay, sockets, server)  # forwarded again afterwards
    client2.sendall(b"again")
    assert recv_exactly(peer2, 5) == b"again"
    stats = relay.stats()
    assert (stats.aborted, stats.refused, stats.forwarded) == (1, 1, 2)


def test_reset_loses_bytes_still_in_flight(relay_factory, server, sockets):
    """Bytes held by the relay (here: delayed) when it resets never arrive."""
    relay = relay_factory(target(server))
    client, peer = connect(relay, sockets, server)
    relay.delay(1.0, UP)
    client.sendall(b"in flight")
    time.sleep(0.1)
    assert relay.stats().bytes_up == 9  # read by the relay, not yet passed on
    relay.reset(0.0)
    assert_reset(peer)  # reset before any of the bytes: nothing was delivered


def test_blackhole_stalls_both_ways_then_resets(relay_factory, server, sockets):
    relay = relay_factory(target(server))
    client, peer = connect(relay, sockets, server)
    relay.blackhole(0.6)
    client.sendall(b"lost")
    peer.sendall(b"lost too")
    assert_silent(peer, 0.3)
    assert_silent(client, 0.1)
    # a new connection is not answered by the target while the path is dead
    late = sockets(socket.create_connection((relay.host, relay.port), timeout=IO_TIMEOUT))
    server.settimeout(0.1)
    with pytest.raises(TimeoutError):
        server.accept()
    server.settimeout(IO_TIMEOUT)
    # at the end every connection is reset: the stalled bytes never arrive
    assert_reset(peer)
    assert_reset(client)
    assert_reset(late)
    stats = relay.stats()
    assert (stats.aborted, stats.open) == (1, 0)


def test_blackhole_then_resume_delivers_everything(relay_factory, server, sockets):
    """TCP recovers from a short outage: bytes arrive late, intact and in order."""
    relay = relay_factory(target(server))
    client, peer = connect(relay, sockets, server)
    relay.blackhole(0.5, then="resume")
    started = time.monotonic()
    client.sendall(b"first ")
    late = sockets(socket.create_connection((relay.host, relay.port), timeout=IO_TIMEOUT))
    late.sendall(b"hello")
    client.sendall(b"second")
    assert recv_exactly(peer, 12) == b"first second"
    assert time.monotonic() - started >= 0.45
    late_peer, _ = server.accept()  # the held-back connection reaches the target now
    sockets(late_peer)
    assert recv_exactly(late_peer, 5) == b"hello"
    assert relay.stats().aborted == 0


@pytest.mark.parametrize("stalled", [UP, DOWN])
def test_half_open_stalls_one_direction_only(relay_factory, server, sockets, stalled):
    relay = relay_factory(target(server))
    client, peer = connect(relay, sockets, server)
    relay.half_open(stalled, 0.8)
    stuck_src, stuck_dst = (client, peer) if stalled == UP else (peer, client)
    live_src, live_dst = (peer, client) if stalled == UP else (client, peer)
    stuck_src.sendall(b"stuck")
    live_src.sendall(b"flows")
    assert recv_exactly(live_dst, 5) == b"flows"
    assert_silent(stuck_dst, 0.3)
    # then it resets (default): the stuck bytes are lost
    assert_reset(stuck_dst)
    assert_reset(live_dst)


def test_half_open_until_healed_then_resume(relay_factory, server, sockets):
    relay = relay_factory(target(server))
    client, peer = connect(relay, sockets, server)
    relay.half_open(DOWN, then="resume")
    peer.sendall(b"held")
    assert_silent(client, 0.3)
    relay.heal()
    assert recv_exactly(client, 4) == b"held"


def test_delay_adds_latency_each_way_and_keeps_order(relay_factory, server, sockets):
    relay = relay_factory(target(server))
    client, peer = connect(relay, sockets, server)
    relay.delay(0.2)
    started = time.monotonic()
    for i in range(5):
        client.sendall(b"%d" % i)
    assert recv_exactly(peer, 5) == b"01234"
    one_way = time.monotonic() - started
    peer.sendall(b"x")
    recv_exactly(client, 1)
    round_trip = time.monotonic() - started
    assert one_way >= 0.19
    assert round_trip >= 0.39
    relay.delay(0.0)
    started = time.monotonic()
    client.sendall(b"y")
    recv_exactly(peer, 1)
    assert time.monotonic() - started < 0.19


def test_target_down_resets_the_client(relay_factory, sockets):
    spare = socket.create_server(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()  # nothing listens there now
    relay = relay_factory(("127.0.0.1", port))
    assert_connection_reset(relay)
    assert relay.stats().refused == 1


def test_bad_arguments_are_refused(relay_factory, server):
    relay = relay_factory(target(server))
    with pytest.raises(ValueError, match="direction"):
        relay.half_open("sideways")
    with pytest.raises(ValueError, match="then"):
        relay.blackhole(1.0, then="later")
    with pytest.raises(ValueError, match="negative"):
        relay.delay(-1)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_close_leaves_no_thread_or_socket(server, sockets):
    threads_before = set(threading.enumerate())
    fds_before = _fds()
    relay = Relay(target(server))
    client, peer = connect(relay, sockets, server)
    client.sendall(b"x")
    assert recv_exactly(peer, 1) == b"x"
    relay.close()
    assert set(threading.enumerate()) == threads_before
    assert_reset(client)  # open links are aborted, not left half-alive
    assert_reset(peer)
    client.close()
    peer.close()
    assert _fds() <= fds_before
    relay.close()  # twice is fine
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((relay.host, relay.port), timeout=IO_TIMEOUT).close()


def test_a_dead_relay_thread_is_reported_not_hidden(server):
    relay = Relay(target(server))

    def boom() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):  # a failing control call reaches its caller
        relay._call(boom)
    relay._calls.append(boom)  # a bug in the loop itself ends the thread
    relay._poke()
    relay._thread.join(IO_TIMEOUT)
    assert not relay._thread.is_alive()
    with pytest.raises(RuntimeError, match="died"):
        relay.stats()
    with pytest.raises(RuntimeError, match="died"):
        relay.close()
