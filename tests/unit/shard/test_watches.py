"""Watches on a shard: what is pushed for customers that leave (a forget, a link's Take)."""
from __future__ import annotations

import pytest

from kairos.cluster.identity import anonymous_id, link_id
from tests.unit.shard.test_identity_forget import left_in_memory, logged
from tests.unit.shard.test_shard import T0, Clock, event, forget, shard, take


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
