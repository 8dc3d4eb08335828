"""A link brings the anonymous visitor's idempotency keys to the customer as the visitor's:
the customer's own requests under the same key text apply, and a visitor's request re-sent
through the MERGED redirect is still recognised (keys are per customer)."""
from __future__ import annotations

from kairos.cluster.identity import anonymous_id
from kairos.cluster.protocol import EventAck, Merged, Ok
from kairos.cluster.shard.keys import redirected_key
from kairos.core.decision import Learned

from .test_outcome_keys import converted
from .test_shard import T0, Clock, keyed, link_steps, profile, shard


def applied(s, customer: str) -> int:
    return s.process([profile(customer)])[0][0].value["events_applied"]


def linked_visitor(s, alias: str = "cookie:c1") -> str:
    """A visitor with an event keyed evt-1 and an outcome keyed o-1, linked into ana."""
    anon = anonymous_id(alias)
    assert s.process([keyed(anon, "evt-1"), converted(anon, "o-1")])[0] == \
        [EventAck(sequence=1), Ok(value=Learned.PROFILE_NO_DECISION)]
    link_steps(s, s, s, alias, "ana")
    return anon


def test_the_customers_own_keys_do_not_meet_the_visitors_it_linked(compiled):
    s = shard(compiled, clock=Clock())
    s.process([keyed("ana", "evt-7", T0 + 1)])
    linked_visitor(s)
    assert s.process([keyed("ana", "evt-1", T0 + 60), converted("ana", "o-1")])[0] == \
        [EventAck(sequence=3), Ok(value=Learned.PROFILE_NO_DECISION)]
    assert applied(s, "ana") == 3
    assert s.process([keyed("ana", "evt-1"), keyed("ana", "evt-7")])[0] == \
        [EventAck(sequence=3, duplicate=True), EventAck(sequence=1, duplicate=True)]


def test_a_visitors_request_re_sent_through_merged_meets_its_keys(compiled):
    s = shard(compiled, clock=Clock(), idle_s=60.0)
    anon = linked_visitor(s)
    assert s.process([keyed(anon, "evt-1")])[0] == [Merged(customer_id="ana")]
    s.passivate(T0 + 10**6)  # the visitor's keys went to the customer's home with it
    resent = [keyed("ana", redirected_key(anon, "evt-1")),
              converted("ana", redirected_key(anon, "o-1"))]
    assert s.process(resent)[0] == \
        [EventAck(sequence=1, duplicate=True), Ok(value=Learned.DUPLICATE)]
    # one the visitor had not applied yet applies once, still as the visitor's
    late = keyed("ana", redirected_key(anon, "evt-2"))
    assert s.process([late, late])[0] == \
        [EventAck(sequence=2), EventAck(sequence=2, duplicate=True)]
    assert s.process([keyed("ana", "evt-2")])[0] == [EventAck(sequence=3)]
    assert applied(s, "ana") == 3


def test_two_visitors_linked_into_one_customer_keep_their_keys_apart(compiled):
    s = shard(compiled, clock=Clock())
    phone, laptop = linked_visitor(s, "cookie:phone"), anonymous_id("cookie:laptop")
    s.process([keyed(laptop, "evt-9")])
    link_steps(s, s, s, "cookie:laptop", "ana")
    assert s.process([keyed("ana", redirected_key(laptop, "evt-1")),
                      keyed("ana", redirected_key(phone, "evt-9")),
                      keyed("ana", redirected_key(phone, "evt-1"))])[0] == \
        [EventAck(sequence=3), EventAck(sequence=4), EventAck(sequence=1, duplicate=True)]
