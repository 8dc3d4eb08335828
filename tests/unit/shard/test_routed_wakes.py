"""A request routed under the map that moved a partition here settles the move: its parked
sleepers wake (timers.py)."""
from __future__ import annotations

from kairos.cluster.shard import timers
from tests.unit.shard.test_refused_sleepers import OVERDUE, arriving_overdue
from tests.unit.shard.test_shard import event
from tests.unit.shard.test_sleepers import DUE


def test_a_routed_request_wakes_an_arriving_partitions_sleepers(compiled):
    s, clock, m, refused = arriving_overdue(compiled)
    clock.now = DUE + 0.5
    s.tick()
    someone = next(iter(refused))
    s.process([event(someone, "app_open", clock.now)], routed=[2])
    assert m not in s.ownership.arriving
    s.tick()
    assert len(s.residency.sleepers(m)) == OVERDUE - timers.WAKE_LIMIT
