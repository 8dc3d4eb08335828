"""Watches on a shard: registrations that a link brings together, and what is pushed, or kept
of what was pushed, for customers that leave (a forget, a link's Take) and sinks that go."""
from __future__ import annotations

import pytest

from kairos.cluster.identity import anonymous_id, link_id
from kairos.cluster.protocol import Merged
from kairos.cluster.shard.watches import Pushed, Watch
from tests.unit.shard.test_identity_forget import left_in_memory, logged
from tests.unit.shard.test_shard import (T0, Clock, event, forget, journey, link_steps, shard,
                                         take, watch)


def test_a_watch_by_an_anonymous_id_follows_its_link_and_counts_its_registrations(compiled):
    """One sink watches a view by an alias's anonymous id and by a customer's id; the alias is
    linked to the customer. The customer's pushes name the anonymous id too (the sink hands
    them to the streams that follow it), the registrations survive passivation, and the watch
    stays until both are unregistered (the anonymous id's by its redirect)."""
    clock = Clock()
    s = shard(compiled, clock=clock)
    key, anon = "cookie:w1", anonymous_id("cookie:w1")
    view = Watch("gw", "web", "hero")
    s.process([event(anon, "page_view", T0, category="home"), event("ana", "app_open", T0),
               watch(anon, "gw", "web", "hero"), watch("ana", "gw", "web", "hero")])
    link_steps(s, s, s, key, "ana")
    assert s.watches.by_customer == {"ana": {view: ["ana", anon]}}
    s.passivate(clock.now + 10**7)
    assert "ana" not in s.engine.table
    pushes = [p for e in journey("ana", 30, seed=5, t0=T0 + 600) for p in s.process([e])[1]]
    assert s.watches.by_customer == {"ana": {view: ["ana", anon]}}
    assert pushes and all(type(p.decision) is Pushed and p.decision.also == (anon,)
                          for p in pushes)
    # the anonymous id's stream leaves: its unregistration is sent on to the customer
    assert s.process([watch(anon, "gw", "web", "hero", active=False)])[0] == \
        [Merged(customer_id="ana")]
    s.process([watch("ana", "gw", "web", "hero", active=False)])
    assert list(s.watches.by_customer["ana"]) == [view]
    pushes = [p for e in journey("ana", 30, seed=6, t0=T0 + 3600) for p in s.process([e])[1]]
    assert pushes and {p.sink for p in pushes} == {"gw"}
    s.process([watch("ana", "gw", "web", "hero", active=False)])
    assert s.watches.by_customer == {} and "ana" not in s.watches.shown
    assert [p for e in journey("ana", 30, seed=7, t0=T0 + 7200) for p in s.process([e])[1]] \
        == []


@pytest.mark.parametrize("kind", ["forget", "take"])
def test_a_customer_that_leaves_in_the_round_of_its_event_is_not_decided_again(compiled, kind):
    """An event and a ForgetCustomer (or a link's Take) of one customer in one round, with a
    channel watch on: nothing is decided, pushed or logged for it after it left, and no row or
    memo entry of it is left behind."""
    clock = Clock()
    s = shard(compiled, clock=clock)
    s.watch_channel("gw", "web", None)
    who = anonymous_id("cookie:g1")
    s.process([event(who, "app_open", T0)])
    memo = lambda: sum(m.customer_id == who for m in s.engine._remembered.values())  # noqa: E731
    before, logged_before = memo(), logged(s, {who})
    gone = forget(who) if kind == "forget" else take(who, link_id(who[1:], "ana"), "ana")
    _, pushes = s.process([event(who, "app_open", T0 + 1), gone])
    assert pushes == []
    assert who not in s.engine.table and who not in s.watches.shown
    s.tick()
    s.passivate(clock.now + 10**7)
    assert who not in s.engine.table
    if kind == "forget":
        assert left_in_memory([s], {who}) == [] and logged(s, {who}) == []
    else:  # the Take keeps what was decided before it: outcomes may still name it
        assert (memo(), logged(s, {who})) == (before, logged_before)


def test_what_was_pushed_goes_with_a_forgotten_customer_and_with_a_dropped_sink(compiled):
    s = shard(compiled)
    s.process([watch("ana", "gw", "web"), event("ana", "app_open", T0)])
    assert set(s.watches.shown["ana"]) == {("web", None)}
    s.process([forget("ana")])
    assert "ana" not in s.watches.shown and "ana" not in s.watches.by_customer
    s.process([watch("bob", "gw2", "web"), watch("bob", "gw3", "app"),
               event("bob", "app_open", T0)])
    assert set(s.watches.shown["bob"]) == {("web", None), ("app", None)}
    s.drop_sink("gw2")
    assert set(s.watches.shown["bob"]) == {("app", None)}
    s.drop_sink("gw3")
    assert "bob" not in s.watches.shown and "bob" not in s.watches.by_customer
