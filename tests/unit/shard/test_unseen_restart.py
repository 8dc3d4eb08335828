"""A watch of a customer nobody has seen yet outlives a restart from a snapshot written after
it (the snapshot carries it, as it carries the partition's sleepers), and a snapshot from
before they were carried still loads; a forgotten id's watch is in no snapshot."""
from __future__ import annotations

from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage import blocks, sealed
from tests.unit.shard.test_shard import N_PARTITIONS, T0, Clock, event, forget, p_of, shard, watch


def restarted(s: Shard, clock: Clock) -> Shard:
    s.close()
    r = Shard(s.name, s.engine.compiled, list(s.owned), N_PARTITIONS, store=s.store,
              clock=clock)
    r.recover()
    return r


def test_a_watch_of_a_customer_not_seen_yet_outlives_a_restart_from_a_snapshot(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock)
    s.process([watch("zed", "gw-1", "web", "hero")])
    s.snapshot()
    r = restarted(s, clock)
    assert "gw-1" in r.watched_sinks()
    _, pushes = r.process([event("zed", "app_open", T0 + 5)])
    assert [(p.sink, p.decision.customer_id) for p in pushes] == [("gw-1", "zed")]
    # and the stream's unregistration, after the restart, ends it
    r.process([watch("zed", "gw-1", "web", "hero", active=False)])
    assert r.watches.by_customer == {}


def test_a_snapshot_written_before_they_were_carried_still_loads(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock)
    s.process([event("ana", "app_open", T0), watch("zed", "gw-1", "web", "hero")])
    s.snapshot()
    p = p_of("zed")
    snap = blocks.unpack(sealed.unseal(s.store.get_snapshot(p), "test")[0])
    del snap["unseen"]
    s.store.put_snapshots({p: sealed.seal(blocks.pack(snap))})
    r = restarted(s, clock)
    assert "zed" not in r.watches.by_customer  # lost, as before: that snapshot had none
    assert r.process([event("ana", "app_open", T0 + 1)])[0][0].status == "ok"


def test_a_forgotten_ids_watch_is_in_no_snapshot(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock)
    s.process([watch("zed", "gw-1", "web", "hero")])
    s.process([forget("zed")])
    s.snapshot()
    snap = blocks.unpack(sealed.unseal(s.store.get_snapshot(p_of("zed")), "test")[0])
    assert snap["unseen"] == {}
