"""Watches of customers not seen yet are capped per shard (SHARD_UNSEEN_WATCHES): snapshots and
moves carry them all, so registrations whose unregistrations never came would grow them for
good. Past the cap a registration answers BUSY; an unregistration always comes in; a resident
customer's watch is not counted; a customer seen since leaves the count (at the next prune)."""
from __future__ import annotations

from kairos.cluster.protocol import Busy, Ok
from kairos.cluster.shard.watches import UNSEEN_PRUNE_S
from tests.unit.shard.test_shard import T0, Clock, event, shard, watch


def kinds(replies) -> list[type]:
    return [type(r) for r in replies]


def test_registrations_past_the_cap_answer_busy_until_customers_are_seen(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock)
    s.watches.unseen_cap = 3
    s.process([event("seen", "app_open", T0)])
    replies, _ = s.process([watch(f"new{i}", "gw-1", "web", "hero") for i in range(5)])
    assert kinds(replies) == [Ok, Ok, Ok, Busy, Busy]
    assert sorted(s.watches.by_customer) == ["new0", "new1", "new2"]
    # one watched already, and a resident one: neither is a new customer not seen yet
    replies, _ = s.process([watch("new0", "gw-1", "web", "account"),
                            watch("seen", "gw-1", "web", "hero")])
    assert kinds(replies) == [Ok, Ok]
    assert kinds(s.process([watch("new3", "gw-1", "web", "hero")])[0]) == [Busy]
    # an unregistration comes in at the cap, whether its registration did or not
    replies, _ = s.process([watch("new3", "gw-1", "web", "hero", active=False),
                            watch("new2", "gw-1", "web", "hero", active=False)])
    assert kinds(replies) == [Ok, Ok]
    assert kinds(s.process([watch("new3", "gw-1", "web", "hero")])[0]) == [Ok]  # new2's place
    # a customer seen leaves the count once it is pruned, not at every registration
    s.process([event("new1", "app_open", T0)])
    assert kinds(s.process([watch("new4", "gw-1", "web", "hero")])[0]) == [Busy]
    clock.now += UNSEEN_PRUNE_S
    assert kinds(s.process([watch("new4", "gw-1", "web", "hero")])[0]) == [Ok]
    assert kinds(s.process([watch("new5", "gw-1", "web", "hero")])[0]) == [Busy]
    assert sorted(s.watches.by_customer) == ["new0", "new1", "new3", "new4", "seen"]


def test_a_registration_refused_by_its_handler_leaves_the_count_at_the_next_prune(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock)
    s.watches.unseen_cap = 1
    s.watches.drop_sinks(["dead"])
    assert kinds(s.process([watch("new0", "dead", "web", "hero")])[0]) == [Ok]  # not kept
    # the prune this one made kept it: the round admitting it might not have registered it yet
    assert kinds(s.process([watch("new1", "gw-1", "web", "hero")])[0]) == [Busy]
    clock.now += UNSEEN_PRUNE_S
    assert kinds(s.process([watch("new1", "gw-1", "web", "hero")])[0]) == [Ok]
