"""A decision's shown action learns each label once, beyond the engine's memo: the labels its
outcomes taught are kept with the customer (outcomes.TaughtLabels, apart from its
idempotency keys), so an accept then a convert is one positive after a restart, a passivation
or the memo letting the decision go (it was taught again each time before)."""
from __future__ import annotations

from kairos.cluster.identity import anonymous_id
from kairos.cluster.protocol import Ok
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.core.decision import Learned

from .test_decision_log import respond
from .test_shard import (N_PARTITIONS, T0, Clock, _catalog_v2, decide, event, link_steps,
                         shard)


def positives(s) -> float:
    return float(s.engine.models.positives.sum())


def decided(s):
    s.process([event("ana", "page_view", T0 - 60, category="home")])
    return s.process([decide("ana")])[0][0].value


def test_a_label_taught_before_a_restart_is_not_taught_again(compiled):
    clock = Clock()
    s = shard(compiled, store=MemoryStore(), clock=clock)
    sent = decided(s)
    assert s.process([respond("ana", sent)])[0] == [Ok(value=Learned.DECISION)]
    s.snapshot(range(N_PARTITIONS))
    s.process([respond("ana", sent, "convert")])  # journaled after the snapshot: REPEATED
    rebuilt = shard(compiled, clock=clock, store=s.store)
    rebuilt.recover()
    before = positives(rebuilt)
    assert rebuilt.process([respond("ana", sent, "convert"), respond("ana", sent)])[0] == \
        [Ok(value=Learned.REPEATED)] * 2
    assert positives(rebuilt) == before
    # the other label is still the decision's to teach, once
    assert rebuilt.process([respond("ana", sent, "ignore"), respond("ana", sent, "reject")]
                           )[0] == [Ok(value=Learned.PROFILE_DECISION_FORGOTTEN),
                                    Ok(value=Learned.REPEATED)]


def test_a_label_is_taught_once_after_the_memo_and_a_passivation_let_the_decision_go(
        compiled):
    clock = Clock()
    s = shard(compiled, store=MemoryStore(), clock=clock, idle_s=60.0)
    sent = decided(s)
    s.engine._remembered.clear()  # what later decisions, a move or a switch do to the memo
    assert s.process([respond("ana", sent)])[0] == \
        [Ok(value=Learned.PROFILE_DECISION_FORGOTTEN)]
    learnt = positives(s)
    clock.now += 61
    assert s.passivate(clock.now) == 1
    assert s.process([respond("ana", sent, "convert"), respond("ana", sent)])[0] == \
        [Ok(value=Learned.REPEATED)] * 2
    assert positives(s) == learnt


def test_a_label_taught_before_a_catalog_switch_is_not_taught_again(compiled):
    s = shard(compiled, store=MemoryStore(), clock=Clock())
    sent = decided(s)
    assert s.process([respond("ana", sent)])[0] == [Ok(value=Learned.DECISION)]
    s.commit(s.prepare(_catalog_v2()))
    learnt = positives(s)
    assert s.process([respond("ana", sent, "convert")])[0] == [Ok(value=Learned.REPEATED)]
    assert positives(s) == learnt


def test_a_visitors_taught_label_is_the_customers_after_a_link(compiled):
    s = shard(compiled, store=MemoryStore(), clock=Clock())
    visitor = anonymous_id("cookie:c1")
    s.process([event(visitor, "page_view", T0 - 60, category="home")])
    sent = s.process([decide(visitor)])[0][0].value
    assert s.process([respond(visitor, sent)])[0] == [Ok(value=Learned.DECISION)]
    learnt = positives(s)
    link_steps(s, s, s, "cookie:c1", "ana")
    # reported under the customer: the memo keeps it as the visitor's
    assert s.process([respond("ana", sent, "convert")])[0] == [Ok(value=Learned.REPEATED)]
    assert positives(s) == learnt
