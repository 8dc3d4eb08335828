"""One registration per id and view: a sink registering a watch again by the same id (its
unregistration failed: the shard was busy, and a stream came again) holds the one it had, so
its next unregistration ends the watch, from memory or from the customer's home."""
from __future__ import annotations

from tests.unit.shard.test_shard import T0, Clock, event, shard, watch


def test_a_registration_again_by_the_same_id_is_the_one_it_had(compiled):
    s = shard(compiled)
    s.process([event("ana", "app_open", T0)])
    for _ in range(5):  # streams whose unregistrations never came
        s.process([watch("ana", "gw-1", "web", "hero")])
    assert [ids for ids in s.watches.by_customer["ana"].values()] == [["ana"]]
    s.process([watch("ana", "gw-1", "web", "hero", active=False)])
    assert "ana" not in s.watches.by_customer
    assert s.process([event("ana", "page_view", T0 + 1, category="electronics")])[1] == []


def test_a_registration_again_after_a_passivation_is_the_one_its_home_had(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=60.0)
    s.process([event("ana", "app_open", T0), watch("ana", "gw-1", "web", "hero")])
    clock.now += 61
    assert s.passivate(clock.now) == 1
    s.process([watch("ana", "gw-1", "web", "hero")])  # loads her home, with its registration
    assert [ids for ids in s.watches.by_customer["ana"].values()] == [["ana"]]


def test_a_registration_of_an_old_block_without_its_id_is_not_merged_into_the_customers(
        compiled):
    """Blocks from before registrations kept their id name the customer's: one folded from an
    anonymous customer must stay a registration of its own, or the anonymous stream's
    unregistration ends the customer's own watch."""
    s = shard(compiled)
    s.process([event("C", "app_open", T0), watch("C", "G", "web", "hero")])
    s.watches.restore("C", {"watches": [["G", "web", "hero"]]})  # folded, from an old block
    w = s.watches.validate("G", "web", "hero")
    s.watches.watch_customer("C", w, False, by="X")  # the anonymous id's stream leaves
    assert s.watches.by_customer["C"] == {w: ["C"]}
