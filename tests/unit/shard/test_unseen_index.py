"""The watches of customers not seen yet that a handoff (and a snapshot) carries are found by
partition, not by a walk over every watched customer of the shard: a freeze costs what its
partitions hold. Unregistered, forgotten or since seen, a customer's watch is not carried."""
from __future__ import annotations

from tests.unit.shard.test_dead_sinks import _Walks
from tests.unit.shard.test_shard import T0, event, forget, p_of, shard, watch


def test_a_partitions_watches_of_customers_not_seen_yet_are_found_without_a_walk(compiled):
    s = shard(compiled)
    p = p_of("zed")
    others = [c for c in (f"c{i}" for i in range(200)) if p_of(c) != p][:100]
    s.process([watch(c, "gw-1", "web", "hero") for c in ["zed", *others]])
    s.watches.by_customer = _Walks(s.watches.by_customer)
    assert list(s.watches.unseen([p])) == ["zed"]
    assert s.watches.by_customer.walks == 0


def test_only_the_watches_still_held_of_customers_not_seen_yet_are_carried(compiled):
    s = shard(compiled)
    ids = [c for c in (f"c{i}" for i in range(400)) if p_of(c) == p_of("c0")][:4]
    s.process([watch(c, "gw-1", "web", "hero") for c in ids])
    s.process([watch(ids[0], "gw-1", "web", "hero", active=False), forget(ids[1]),
               event(ids[2], "app_open", T0)])
    assert list(s.watches.unseen([p_of("c0")])) == [ids[3]]
    assert s.watches.unseen([p_of("c0")]) == {ids[3]: [["gw-1", "web", "hero", ids[3]]]}
