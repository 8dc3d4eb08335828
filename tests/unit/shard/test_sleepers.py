"""Timers of passivated customers (sleepers): a customer the resident limit sends to the store
with an armed timer is woken when the timer falls due, so it fires as a resident's does,
after a restart, a move or a catalog switch too; a forgotten one is no sleeper any more."""
from __future__ import annotations

import pytest
import yaml

from kairos.cluster.protocol import UNAVAILABLE
from kairos.cluster.shard import timers
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage import blocks
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.sealed import seal, unseal
from kairos.core.catalog import default_catalog_text
from tests.unit.shard.test_homes import damage, home_file
from tests.unit.shard.test_shard import (N_PARTITIONS, T0, Clock, event, forget, p_of,
                                         profile, shard, watch)

DUE = T0 + 1800  # the default catalog's cart_abandoned timer, after a cart at T0
CART = dict(product_id="tv", category="electronics", price=199.0)


def asleep(compiled, customers=("ana",), **kw) -> tuple[Shard, Clock]:
    """A shard whose `customers`, watched on push with a cart each, were passivated by the
    resident limit with their cart_abandoned timers armed."""
    clock = Clock()
    s = shard(compiled, clock=clock, resident_limit=2, **kw)
    for c in customers:
        s.process([event(c, "profile_updated", T0 - 86400, marketing_opt_in=True,
                         push_opt_in=True), watch(c, "sink-1", "push")])
        s.process([event(c, "add_to_cart", T0, **CART)])
    for i in range(2):
        clock.now += 1
        s.process([event(f"other{i}", "app_open", clock.now)])
    assert s.passivate(clock.now) == len(customers)
    assert not any(c in s.engine.table for c in customers)
    return s, clock


def pushed(pushes) -> list:
    return [(p.sink, p.decision.customer_id, [a.action_id for a in p.decision.actions])
            for p in pushes]


def fires_when_due(s: Shard, clock: Clock, customer: str = "ana") -> None:
    clock.now = DUE - 1
    assert s.tick() == [] and customer not in s.engine.table
    clock.now = DUE + 0.5
    assert pushed(s.tick()) == [("sink-1", customer, ["cart_recovery_push"])]
    view = s.process([profile(customer, DUE + 1)])[0][0].value
    assert view["features"]["carts_abandoned_30d"] == pytest.approx(1.0, rel=1e-3)
    assert view["timers"] == {}
    assert s.counts["timers_fired"] == 1


def test_a_customer_passivated_with_a_timer_is_woken_when_it_falls_due(compiled):
    s, clock = asleep(compiled)
    fires_when_due(s, clock)
    assert s.residency.sleepers(p_of("ana")) == {}


def test_a_sleeper_wakes_after_a_restart(compiled):
    """Its partition's snapshot carries it: nothing else would bring it back, as recovery
    replays nothing of it."""
    s, clock = asleep(compiled)
    s.snapshot()
    s.close()
    rebuilt = Shard(s.name, compiled, list(s.owned), N_PARTITIONS, store=s.store, clock=clock)
    assert rebuilt.recover()["replayed"] == 0
    fires_when_due(rebuilt, clock)


def test_a_snapshot_written_before_sleepers_still_recovers(compiled):
    s, clock = asleep(compiled)
    s.snapshot()
    s.close()
    p = p_of("ana")
    snap = blocks.unpack(unseal(s.store.get_snapshot(p), "a snapshot")[0])
    del snap["sleepers"]
    s.store.put_snapshots({p: seal(blocks.pack(snap))})
    rebuilt = Shard(s.name, compiled, list(s.owned), N_PARTITIONS, store=s.store, clock=clock)
    rebuilt.recover()
    assert rebuilt.residency.sleepers(p) == {}
    # its timer fires once something activates it, as before sleepers
    clock.now = DUE + 1
    rebuilt.process([event("ana", "app_open", DUE + 1)])
    assert rebuilt.counts["timers_fired"] == 1


@pytest.mark.parametrize("shared", [False, True])
def test_a_sleeper_moves_with_its_partition(compiled, shared):
    store = MemoryStore(shared=shared)
    a, clock = asleep(compiled, store=store)
    b = shard(compiled, "b", partitions=[], clock=clock, store=store if shared else None)
    p = p_of("ana")
    b.adopt(a.freeze([p], 2), 2)
    a.release([p], 2)
    b.thaw([p], 2)  # the move is confirmed: its timers fire here (test_arriving.py)
    assert a.residency.sleepers(p) == {} and b.residency.sleepers(p) == {"ana": DUE}
    clock.now = DUE + 1
    assert a.tick() == []
    fires_when_due(b, clock)


def test_a_sleeper_of_a_frozen_partition_waits_for_the_thaw(compiled):
    s, clock = asleep(compiled)
    p = p_of("ana")
    s.freeze([p], 2)
    clock.now = DUE + 1
    assert s.tick() == [] and "ana" not in s.engine.table
    s.thaw([p], 3)
    assert pushed(s.tick()) == [("sink-1", "ana", ["cart_recovery_push"])]


def test_a_sleeper_keeps_sleeping_through_a_catalog_switch(compiled):
    s, clock = asleep(compiled)
    doc = yaml.safe_load(default_catalog_text())
    doc["version"] = "v2-same"
    s.commit(s.prepare(yaml.safe_dump(doc, sort_keys=False)))
    fires_when_due(s, clock)


def test_a_forgotten_sleeper_is_no_sleeper_and_no_snapshot_names_it(compiled):
    s, clock = asleep(compiled)
    p = p_of("ana")
    assert s.process([forget("ana")])[0][0].existed
    assert s.residency.sleepers(p) == {}
    clock.now = DUE + 1
    assert s.tick() == []  # the erase snapshots the partition
    snap = blocks.unpack(unseal(s.store.get_snapshot(p), "a snapshot")[0])
    assert snap["sleepers"] == {} and s.counts["timers_fired"] == 0
    assert s.process([profile("ana", DUE + 1)])[0][0].status == "missing"


def test_a_sleeper_whose_home_is_damaged_is_forgotten_once_the_home_is_removed(compiled,
                                                                               tmp_path):
    """Not before: the aliases merged into it are known only from its home (test_homes.py).
    Removed by the operator, the home takes nothing of the sleeper with it: the forget
    does."""
    s, clock = asleep(compiled, store=DirectoryStore(tmp_path))
    damage(tmp_path, "ana")
    assert s.process([forget("ana")])[0][0].status == UNAVAILABLE
    assert s.residency.sleepers(p_of("ana")) != {}
    home_file(tmp_path, "ana").unlink()
    s.process([forget("ana")])
    assert s.residency.sleepers(p_of("ana")) == {}
    clock.now = DUE + 1
    assert s.tick() == [] and s.counts["timers_fired"] == 0


def test_a_damaged_sleeper_is_logged_and_the_tick_goes_on(compiled, tmp_path):
    s, clock = asleep(compiled, ("ana", "bob"), store=DirectoryStore(tmp_path))
    damage(tmp_path, "ana")
    clock.now = DUE + 1
    assert pushed(s.tick()) == [("sink-1", "bob", ["cart_recovery_push"])]
    assert s.counts["damaged_homes"] == 1 and s.residency.sleepers(p_of("ana")) == {}


def test_a_tick_wakes_at_most_its_limit(compiled, monkeypatch):
    monkeypatch.setattr(timers, "WAKE_LIMIT", 1)
    s, clock = asleep(compiled, ("ana", "bob"))
    clock.now = DUE + 1
    first, second = pushed(s.tick()), pushed(s.tick())
    assert len(first) == len(second) == 1 and {first[0][1], second[0][1]} == {"ana", "bob"}
