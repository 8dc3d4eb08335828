"""A request routed under the map that moved a partition here settles the move: its parked
sleepers wake (timers.py)."""
from __future__ import annotations

from kairos.cluster.shard import timers
from kairos.cluster.storage.memory_store import MemoryStore
from tests.unit.shard.test_refused_sleepers import OVERDUE, overdue_in_another_partition
from tests.unit.shard.test_shard import N_PARTITIONS, event, shard
from tests.unit.shard.test_sleepers import DUE, asleep


def test_a_routed_request_wakes_an_arriving_partitions_sleepers(compiled):
    m, refused = overdue_in_another_partition()
    store = MemoryStore(shared=True)
    s, clock = asleep(compiled, partitions=[p for p in range(N_PARTITIONS) if p != m],
                      store=store)
    source = shard(compiled, "source", partitions=[m], store=store)
    source.residency.take_sleepers(m, refused)
    s.adopt(source.freeze([m], 2), 2)
    clock.now = DUE + 0.5
    s.tick()
    someone = next(iter(refused))
    s.process([event(someone, "app_open", clock.now)], routed=[2])
    assert m not in s.ownership.arriving
    s.tick()
    assert len(s.residency.sleepers(m)) == OVERDUE - timers.WAKE_LIMIT
