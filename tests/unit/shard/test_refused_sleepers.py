"""Sleepers whose partition refuses to wake them (arriving, or leaving) do not count against
timers.WAKE_LIMIT: however many are overdue, other partitions' sleepers wake when due."""
from __future__ import annotations

from kairos.cluster.shard import timers
from tests.unit.shard.test_shard import p_of
from tests.unit.shard.test_sleepers import DUE, asleep, pushed


def test_overdue_sleepers_of_an_arriving_partition_hold_back_no_other_partitions(compiled):
    s, clock = asleep(compiled)  # ana passivated with her cart timer
    others = (f"c{i}" for i in range(100000))
    m = next(p_of(c) for c in others if p_of(c) != p_of("ana"))
    refused = [c for c in (f"c{i}" for i in range(200000)) if p_of(c) == m]
    refused = refused[:timers.WAKE_LIMIT + 1]
    s.ownership.arriving[m] = 2  # adopted, not confirmed: its sleepers wait
    s.residency.take_sleepers(m, {c: DUE - 100 for c in refused})
    clock.now = DUE + 0.5
    assert pushed(s.tick()) == [("sink-1", "ana", ["cart_recovery_push"])]
    assert len(s.residency.sleepers(m)) == len(refused)
