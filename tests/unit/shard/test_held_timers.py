"""The timers of a held partition's residents (leaving or arriving, handoff.py) that fall due
are held (timers.py): still armed, so a snapshot or handoff carries them, but off the due
order, so that no tick walks them again until the partition is served; then each fires once."""
from __future__ import annotations

from kairos.cluster.shard.shard import Shard
from tests.unit.shard.test_arriving import P, adopted
from tests.unit.shard.test_sleepers import DUE, pushed

CART_RECOVERY = [("sink-1", "ana", ["cart_recovery_push"])]


def ordered(s: Shard) -> list[str]:
    """The customers whose armed timers are on the due order (each tick walks the overdue)."""
    return [customer_id for _, customer_id, _ in s.timers._armed._heap]


def test_an_arriving_partitions_overdue_timer_is_walked_once_and_fires_once_confirmed(
        compiled):
    a, b, clock = adopted(compiled)
    clock.now = DUE + 0.5
    assert b.tick() == [] and b.tick() == [] and b.counts["timers_fired"] == 0
    assert "ana" not in ordered(b)
    assert list(b.timers.armed["ana"].values()) == [DUE]  # still armed: carried on
    assert b.residency.export(["ana"])["extras"][0]["timers"] == {"cart_abandoned": DUE}
    b.confirm([P], 2)
    a.release([P], 2)
    assert pushed(b.tick()) == CART_RECOVERY
    assert b.tick() == [] and b.counts["timers_fired"] == 1 and a.tick() == []


def test_a_leaving_partitions_overdue_timer_fires_once_thawed(compiled):
    a, b, clock = adopted(compiled)
    clock.now = DUE + 0.5
    b.release([P], 2)  # the move undone
    a.tick()
    assert a.tick() == [] and "ana" not in ordered(a)
    a.thaw([P], 2)
    assert pushed(a.tick()) == CART_RECOVERY
    assert a.tick() == [] and a.counts["timers_fired"] == 1


def test_a_held_timer_leaves_with_its_partition(compiled):
    a, b, clock = adopted(compiled)
    clock.now = DUE + 0.5
    b.confirm([P], 2)
    a.tick()
    a.release([P], 2)
    assert "ana" not in a.timers.armed and a.timers._held == {}
    assert a.tick() == [] and a.counts["timers_fired"] == 0
    assert pushed(b.tick()) == CART_RECOVERY
