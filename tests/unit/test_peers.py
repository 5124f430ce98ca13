"""Link numbering, acknowledgements and resends (impexec._peers), without sockets."""

from __future__ import annotations

import pytest

from impexec._peers import (
    AHEAD,
    DUPLICATE,
    HB_GAP,
    HB_IDLE,
    IN_ORDER,
    MAX_AHEAD,
    Channel,
    InOrder,
    LinkBroken,
    PeerTable,
)
from impexec._protocol import worker_keys

KEY = b"k" * 32


def test_numbers_are_taken_once_whatever_the_arrival_order() -> None:
    c = Channel()
    assert [c.accept(n) for n in (1, 2, 2, 4, 5, 3, 4, 6, 1)] == [
        IN_ORDER,
        IN_ORDER,
        DUPLICATE,
        AHEAD,
        AHEAD,
        IN_ORDER,
        DUPLICATE,
        IN_ORDER,
        DUPLICATE,
    ]
    assert c.upto == 6 and not c.ahead


def test_a_peer_far_past_a_gap_breaks_the_link_instead_of_growing_memory() -> None:
    c = Channel()
    for n in range(2, MAX_AHEAD + 2):
        c.accept(n)
    with pytest.raises(LinkBroken):
        c.accept(MAX_AHEAD + 5)


def test_kept_messages_go_when_acknowledged_and_come_back_when_due() -> None:
    c = Channel()
    for t in range(3):
        c.keep(c.stamp(), [f"m{t + 1}".encode()], now=0.0)
    assert c.due(0.5, rto=1.0, max_rto=8.0) == []
    c.on_ack(1)
    assert list(c.unacked) == [2, 3]
    assert c.due(1.0, rto=1.0, max_rto=8.0) == [[b"m2"], [b"m3"]]
    # sent again at 1.0: next due after twice the timeout, then four times (backoff)
    assert c.due(2.5, rto=1.0, max_rto=8.0) == []
    assert c.due(3.0, rto=1.0, max_rto=8.0) == [[b"m2"], [b"m3"]]
    assert c.due(6.0, rto=1.0, max_rto=8.0) == []
    assert c.due(7.0, rto=1.0, max_rto=8.0) == [[b"m2"], [b"m3"]]
    assert c.due(7.0, rto=1.0, max_rto=8.0, at_once=True) == [[b"m2"], [b"m3"]]
    c.on_ack(3)
    assert c.unacked == {} and c.oldest_unacked() is None


def test_an_ack_beyond_what_was_sent_releases_only_what_was_sent() -> None:
    c = Channel()
    c.keep(c.stamp(), [b"a"], 0.0)
    c.on_ack(10**9)
    assert c.acked == 1 and not c.unacked
    c.keep(c.stamp(), [b"b"], 0.0)  # a later message is still kept
    assert list(c.unacked) == [2]


def test_in_order_receiver_holds_messages_past_a_gap_until_it_fills() -> None:
    r = InOrder(Channel())
    assert r.push(1, "a") == ["a"]
    assert r.push(3, "c") == [] and r.gap
    assert r.push(4, "d") == []
    assert r.push(3, "c") == []  # a resend of what is held: taken once
    assert r.push(2, "b") == ["b", "c", "d"] and not r.gap
    assert r.push(2, "b") == []
    assert r.chan.upto == 4


def test_peer_table_keys_bind_the_worker_and_the_direction() -> None:
    t = PeerTable(KEY, rto=1.0, max_rto=5.0)
    a, b = b"a" * 16, b"b" * 16
    pa = t.join(a, 1)
    assert pa is not None and t.join(a, 1) is None  # a second READY of that id: a replay
    assert (pa.rx_key, pa.tx_key) == worker_keys(KEY, a)
    assert t.keys_for(b) == worker_keys(KEY, b) != t.keys_for(a)
    assert pa.rx_key != pa.tx_key
    assert pa.chan.upto == 1  # its READY


def test_reports_decide_resends() -> None:
    t = PeerTable(KEY, rto=1.0, max_rto=5.0)
    p = t.join(b"w" * 16, 1)
    assert p is not None
    for i in range(3):
        p.chan.keep(p.chan.stamp(), [bytes([i])], now=0.0)
    assert t.resend_on_report(p, 0, 10.0) == []  # busy: its acks lag, nothing is lost
    assert t.resend_on_report(p, HB_IDLE, 0.5) == []  # idle, but the last may be in flight
    assert len(t.resend_on_report(p, HB_IDLE, 1.0)) == 3
    assert len(t.resend_on_report(p, HB_GAP, 1.1)) == 3  # a gap proves a loss: at once
    t.forget(p.wid)
    assert p.gone and t.resend_on_report(p, HB_GAP, 20.0) == []
    assert t.get(p.wid) is p  # its late messages still verify


def test_a_peer_is_alive_from_when_it_last_heard_us_not_when_it_last_spoke() -> None:
    """Half-open link: a worker whose heartbeats arrive but who hears nothing must age."""
    t = PeerTable(KEY, rto=1.0, max_rto=5.0)
    p = t.join(b"w" * 16, 1, now=100.0)
    assert p is not None and p.heard_at == 100.0
    p.hb_sent.extend([(7, 101.0), (9, 102.0)])
    assert t.heard(p, 0.0, 0) == 100.0  # it spoke; it echoes nothing it heard
    assert t.heard(p, 0.0, 7) == 101.0  # it heard our heartbeat reply 7, sent at 101
    assert t.heard(p, 0.0, 8) == 101.0  # 8 was not ours to it: no news
    assert t.heard(p, 0.0, 7) == 101.0  # the same echo again (replies stopped arriving)
    assert t.heard(p, 105.0, 0) == 105.0  # its ack released a message sent at 105
    assert t.heard(p, 103.0, 9) == 105.0  # never back in time
    c = Channel()
    c.keep(c.stamp(), [b"a"], 3.0)
    c.keep(c.stamp(), [b"b"], 4.0)
    assert c.on_ack(2) == 4.0 and c.on_ack(2) == 0.0
