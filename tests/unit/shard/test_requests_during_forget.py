"""While a customer's forget is under way, its aliases not yet retired resolve to it: its
requests are refused, so a visitor's event by an alias does not re-create the customer."""
from __future__ import annotations

from kairos.cluster.identity import alias_key, anonymous_id, link_id
from kairos.cluster.protocol import (BEING_FORGOTTEN, Bury, Claim, Link, Retire, Unavailable,
                                     WatchCustomer)
from kairos.cluster.settings import TOMBSTONE_S
from tests.unit.shard.test_shard import (T0, Clock, event, forget, merge, p_of, profile, shard,
                                         take)


def test_requests_for_a_customer_being_forgotten_are_refused_until_it_is_done(compiled):
    s = shard(compiled)
    key = alias_key("cookie", "a")
    link = link_id(key, "ana")
    s.process([event("ana", "app_open", T0), event(anonymous_id(key), "app_open", T0)])
    s.process([Claim(partition=p_of("ana"), customer_id="ana", key=key, link=link)])
    s.process([Link(partition=p_of(key), key=key, customer_id="ana")])
    state = s.process([take(anonymous_id(key), link, "ana")])[0][0].value
    s.process([merge("ana", link, key, state)])
    s.process([forget("ana")])
    unwatch = WatchCustomer(partition=p_of("ana"), customer_id="ana", sink="gw",
                            channel="web", active=False)
    replies = s.process([event("ana", "page_view", T0 + 5, category="home"), unwatch])[0]
    assert isinstance(replies[0], Unavailable) and "being forgotten" in replies[0].reason
    assert replies[1].status == "ok"  # a stream's end is never refused
    s.process([Retire(partition=p_of(key), key=key, customer_id="ana"),
               forget(anonymous_id(key))._replace(link=link),
               Bury(partition=p_of("ana"), customer_id="ana"),
               Retire(partition=p_of(key), key=key, customer_id="ana", finished=True)])
    assert s.process([profile("ana")])[0][0].status == "missing"
    assert s.process([event("ana", "app_open", T0 + 60)])[0][0].sequence == 1  # a new one


def test_a_forget_whose_client_died_before_its_bury_refuses_requests_for_tombstone_s(compiled):
    """Not for ever: past TOMBSTONE_S from its last try the customer's requests are served; a
    retry still finds the aliases to retire, and refuses them again until it finishes."""
    clock = Clock()
    s = shard(compiled, clock=clock)
    key = alias_key("cookie", "a")
    s.process([event("ana", "app_open", T0),
               Claim(partition=p_of("ana"), customer_id="ana", key=key, link=link_id(key, "ana")),
               forget("ana")])  # and its client died
    clock.now += TOMBSTONE_S - 1
    refused = s.process([event("ana", "page_view", clock.now, category="home")])[0][0]
    assert isinstance(refused, Unavailable) and refused.reason == BEING_FORGOTTEN
    clock.now += 1
    assert s.process([event("ana", "app_open", clock.now)])[0][0].sequence == 1
    assert s.process([forget("ana")])[0][0].aliases == [key]  # the retry
    refused = s.process([event("ana", "page_view", clock.now, category="home")])[0][0]
    assert isinstance(refused, Unavailable)
