"""The relayed-cluster fixture: every worker link really goes through its relay."""

from __future__ import annotations

import net_tasks as nt

from waiting import wait_until


def test_workers_reach_the_broker_only_through_their_relays(relayed_cluster):
    cluster = relayed_cluster(2)
    cluster.wait_workers(2)
    ex = cluster.ex
    futures = [ex.submit(nt.record, i, str(cluster.tmp)) for i in range(20)]
    values = [f.result(timeout=30) for f in futures]
    assert [v for v, _ in values] == [i * i for i in range(20)]
    assert {pid for _, pid in values} <= {p.pid for p in cluster.procs if p is not None}
    for r in cluster.relays:
        stats = r.stats()
        assert (stats.forwarded, stats.open) == (2, 2), stats  # main and heartbeat links
        assert stats.bytes_up > 0 and stats.bytes_down > 0


def test_a_killed_worker_can_be_replaced_in_its_slot(relayed_cluster):
    cluster = relayed_cluster(1)
    cluster.wait_workers(1)
    old = cluster.kill_worker(0)
    assert old is not None and old.returncode == -9
    assert cluster.procs[0] is None
    # counted after the kill: the old worker may have died before it opened its heartbeat link
    before = cluster.relays[0].stats().forwarded
    new = cluster.start_worker(0)
    # the new worker dials the same relay (main and heartbeat links)
    wait_until(lambda: cluster.relays[0].stats().forwarded == before + 2, 30, "the new worker's two links")
    # the old one's heartbeats stopped: it is forgotten
    wait_until(lambda: cluster.ex.statistics().workers_lost == 1, 30, "the killed worker to be lost")
    cluster.wait_workers(1)
    assert cluster.ex.submit(nt.record, 1, str(cluster.tmp)).result(timeout=30) == (1, new.pid)
