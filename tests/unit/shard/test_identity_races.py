"""Links and forgets racing a customer's own requests: a link or an offline outcome during a
forget does not re-create the customer, and a decision shown to a forgotten visitor takes no
outcome through a later link of the visitor's alias."""
from __future__ import annotations

from kairos.cluster.identity import anonymous_id, link_id
from kairos.cluster.protocol import (BEING_FORGOTTEN, INVALID, Bury, Claim, Forget,
                                     Retire, Unavailable)
from tests.unit.shard.test_shard import (T0, Clock, decide, event, forget, link_steps, merge,
                                         outcome, p_of, profile, shard, take)


def _claim(key: str, customer: str) -> Claim:
    return Claim(partition=p_of(customer), customer_id=customer, key=key,
                 link=link_id(key, customer))


def _forgetting(s) -> None:
    """ana (with an alias, so her forget is under way until its Bury) after its Forget."""
    s.process([event("ana", "page_view", T0, category="home")])
    s.process([_claim("cookie:old", "ana")])
    link_steps(s, s, s, "cookie:old", "ana")
    assert s.process([forget("ana")])[0][0].aliases == ["cookie:old"]


def _finish_forget(s) -> None:
    k, link = "cookie:old", link_id("cookie:old", "ana")
    s.process([Retire(partition=p_of(k), key=k, customer_id="ana"),
               Forget(partition=p_of(anonymous_id(k)), customer_id=anonymous_id(k), link=link),
               Bury(partition=p_of("ana"), customer_id="ana"),
               Retire(partition=p_of(k), key=k, customer_id="ana", finished=True),
               Bury(partition=p_of("ana"), customer_id="ana", finished=True)])


def test_a_link_begun_during_a_forget_is_refused_and_does_not_recreate_the_customer(compiled):
    """Its Claim, and the Merge of a client that skipped it, answer FORGETTING; the forget
    then answers OK with the customer gone."""
    s = shard(compiled, clock=Clock())
    _forgetting(s)
    key, anon, link = "cookie:new", anonymous_id("cookie:new"), link_id("cookie:new", "ana")
    s.process([event(anon, "page_view", T0 + 2, category="shoes")])
    refused = Unavailable(reason=BEING_FORGOTTEN)
    assert s.process([_claim(key, "ana")])[0] == [refused]
    state = s.process([take(anon, link, "ana")])[0][0].value
    assert s.process([merge("ana", link, key, state)])[0] == [refused]
    assert "ana" not in s.engine.table
    _finish_forget(s)
    assert s.process([profile("ana")])[0][0].status == "missing"


def test_an_offline_outcome_during_a_forget_is_refused(compiled):
    s = shard(compiled, clock=Clock(T0 + 5))
    _forgetting(s)
    offline = outcome("ana", "service_menu", None, kind="convert", when=T0 + 2)
    assert s.process([offline])[0] == [Unavailable(reason=BEING_FORGOTTEN)]
    assert "ana" not in s.engine.table
    _finish_forget(s)
    assert s.process([profile("ana")])[0][0].status == "missing"


def test_a_decision_shown_to_a_forgotten_visitor_takes_no_outcome_after_a_link(compiled):
    """The tombstone checked is also that of the visitor the decision was issued to, which
    the outcome reaches through the customer its alias was linked to since; a decision shown
    to the visitor back after the forget takes its outcome so."""
    clock = Clock(T0)
    s = shard(compiled, clock=clock)
    key, anon = "cookie:x", anonymous_id("cookie:x")
    s.process([event(anon, "page_view", T0, category="home")])
    before = s.process([decide(anon, now=T0)])[0][0].value
    clock.now = T0 + 10
    s.process([forget(anon)])
    clock.now = T0 + 15
    after = s.process([decide(anon, now=T0 + 15)])[0][0].value
    clock.now = T0 + 20
    s.process([event("ana", "app_open", T0 + 20)])
    link_steps(s, s, s, key, "ana")
    late, fresh = s.process([outcome("ana", d.actions[0].action_id, d.decision_id, when=T0 + 21)
                             for d in (before, after)])[0]
    assert (late.status, late.field) == (INVALID, "decision_id") and "forgotten" in late.reason
    assert fresh.status == "ok"
