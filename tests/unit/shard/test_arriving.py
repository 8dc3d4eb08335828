"""A partition adopted and not yet confirmed (`arriving`, handoff.py) fires none of its timers:
an adopt done here whose call failed is undone (this shard releases it, the source thaws it),
and the source fires them then, so a timer fires once, with one push. A request routed under
the move's map version, or the controller's `confirm` of the target, confirms the move."""
from __future__ import annotations

import pytest

from kairos.cluster.protocol import Moved
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.memory_store import MemoryStore
from tests.unit.shard.test_shard import N_PARTITIONS, T0, Clock, event, p_of, shard, watch
from tests.unit.shard.test_sleepers import CART, DUE, asleep, pushed

P = p_of("ana")


def adopted(compiled) -> tuple[Shard, Shard, Clock]:
    """`a` froze ana's partition with her cart timer armed, watched on push; `b` adopted it
    in map version 2."""
    clock, store = Clock(), MemoryStore(shared=True)
    a = shard(compiled, "a", clock=clock, store=store)
    b = shard(compiled, "b", partitions=[x for x in range(N_PARTITIONS) if x != P],
              clock=clock, store=store)
    a.process([event("ana", "profile_updated", T0 - 86400, marketing_opt_in=True,
                     push_opt_in=True), watch("ana", "sink-1", "push")])
    a.process([event("ana", "add_to_cart", T0, **CART)])
    clock.now = DUE - 1
    b.adopt(a.freeze([P], 2), 2)
    return a, b, clock


def test_an_undone_adopt_leaves_the_timer_to_the_source_which_fires_it_once(compiled):
    a, b, clock = adopted(compiled)
    clock.now = DUE + 0.5
    assert b.tick() == [] and b.counts["timers_fired"] == 0
    b.release([P], 2)  # the controller settles the move undone: the target forgets first,
    a.thaw([P], 2)  # then the source serves again
    assert pushed(a.tick()) == [("sink-1", "ana", ["cart_recovery_push"])]
    assert a.counts["timers_fired"] == 1


@pytest.mark.parametrize("confirm", ["confirm", "routed"])
def test_a_confirmed_move_fires_the_timer_on_the_target(compiled, confirm):
    a, b, clock = adopted(compiled)
    if confirm == "confirm":  # the controller settles the move done
        b.confirm([P], 2)
    else:  # a sender that routed under the published map
        b.process([event("ana", "app_open", DUE - 1)], routed=[2])
    a.release([P], 2)
    clock.now = DUE + 0.5
    assert pushed(b.tick()) == [("sink-1", "ana", ["cart_recovery_push"])]
    assert b.counts["timers_fired"] == 1 and a.tick() == []


def test_a_request_not_routed_under_a_map_confirms_nothing(compiled):
    a, b, clock = adopted(compiled)
    b.process([event("ana", "app_open", DUE - 1)])  # not routed: the shard's own, or a test's
    clock.now = DUE + 0.5
    assert b.tick() == [] and b.counts["timers_fired"] == 0


def test_an_arriving_partition_passivates_nobody_and_wakes_no_sleeper(compiled):
    a, clock = asleep(compiled)  # ana passivated with her cart timer: a sleeper
    p = p_of("ana")
    b = shard(compiled, "b", partitions=[x for x in range(N_PARTITIONS) if x != p],
              clock=clock, store=a.store, idle_s=60.0)
    b.process([event("bob", "app_open", clock.now)])  # resident on b, not moving
    moving = [p, p_of("other0")]
    b.adopt(a.freeze(moving, 2), 2)
    clock.now = DUE + 0.5
    assert b.tick() == [] and "ana" not in b.engine.table
    assert "other0" in b.engine.table and "bob" not in b.engine.table
    b.confirm(moving, 2)  # the sleeper wakes and her timer fires
    assert pushed(b.tick()) == [("sink-1", "ana", ["cart_recovery_push"])]


def test_a_confirmation_of_an_older_move_leaves_a_newer_one_arriving(compiled):
    a, b, clock = adopted(compiled)
    b.confirm([P], 1)  # a late confirmation of a move that brought P here before
    assert b.ownership.arriving == {P: 2}
    b.confirm([P], 2)
    assert b.ownership.arriving == {}


def test_a_confirmation_writes_no_snapshot(compiled):
    """The adopt snapshotted the partition already; a second full one per move is waste."""
    a, b, clock = adopted(compiled)
    written = b.counts["snapshots"]
    b.confirm([P], 2)
    assert b.counts["snapshots"] == written and b.ownership.arriving == {}


def test_a_late_thaw_leaves_a_partition_frozen_for_a_newer_move(compiled):
    """b adopted P (version 2) and the controller settled it; P then moves on to c (version
    3); a thaw of version 2 that timed out and runs late must not serve P again on b."""
    store = MemoryStore(shared=True)
    a = shard(compiled, "a", store=store)
    b = shard(compiled, "b", partitions=[], store=store)
    c = shard(compiled, "c", partitions=[], store=store)
    a.process([event("ana", "app_open", T0)])
    b.adopt(a.freeze([P], 2), 2)
    a.release([P], 2)
    b.thaw([P], 2)
    c.adopt(b.freeze([P], 3), 3)
    b.thaw([P], 2)
    assert b.leaving == {P: 3}
    moved = b.process([event("ana", "app_open", T0 + 1)], routed=[3])[0][0]
    assert isinstance(moved, Moved) and moved.map_version == 3


def test_the_shards_stats_count_its_partitions_arriving(compiled):
    """A partition that stays arriving fires no timers: health shows how many there are."""
    a, b, clock = adopted(compiled)
    assert b.stats()["arriving"] == 1 and a.stats()["arriving"] == 0
    b.confirm([P], 2)
    assert b.stats()["arriving"] == 0
