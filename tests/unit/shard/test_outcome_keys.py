"""Outcomes with an idempotency key are recorded once per customer, as events are: a CRM that
retries an offline conversion after a lost answer does not count it twice."""
from __future__ import annotations

from kairos.cluster.protocol import EventAck, Ok
from kairos.core.decision import Learned

from .test_shard import (N_PARTITIONS, T0, Clock, decide, keyed, outcome, same_partition,
                         shard)


def converted(customer: str, key: str | None, when: float = T0):
    return outcome(customer, "service_menu", None, kind="convert", when=when)._replace(
        idempotency_key=key)


def positives(s) -> float:
    return float(s.engine.models.positives.sum())


def test_an_offline_outcome_retried_with_its_key_is_recorded_once(compiled):
    s = shard(compiled)
    assert s.process([converted("ana", "order-7")])[0] == [Ok(value=Learned.PROFILE_NO_DECISION)]
    learnt = positives(s)
    assert s.process([converted("ana", "order-7"), converted("ana", "order-7")])[0] == \
        [Ok(value=Learned.DUPLICATE)] * 2
    assert [h["outcome"] for h in s.engine.history("ana")] == ["convert"]
    assert positives(s) == learnt
    assert s.stats()["learned_from:duplicate"] == 2
    # without a key, a retry counts again (what the key is for)
    s.process([converted("ana", None), converted("ana", None)])
    assert len(s.engine.history("ana")) == 3


def test_an_outcome_key_is_per_customer_and_apart_from_event_keys(compiled):
    ana, bob = same_partition(2)
    s = shard(compiled)
    assert s.process([keyed(ana, "order-7")])[0] == [EventAck(sequence=1)]
    replies, _ = s.process([converted(ana, "order-7"), converted(bob, "order-7")])
    assert replies == [Ok(value=Learned.PROFILE_NO_DECISION)] * 2
    assert s.process([keyed(ana, "order-7")])[0] == [EventAck(sequence=1, duplicate=True)]


def test_a_decisions_outcome_retried_with_its_key_adds_nothing_to_the_history(compiled):
    s = shard(compiled)
    d = s.process([decide("ana", record_impression=True)])[0][0].value
    shown = d.actions[0].action_id
    reject = outcome("ana", shown, d.decision_id, kind="reject")._replace(
        idempotency_key="agent-1:reject")
    assert s.process([reject])[0] == [Ok(value=Learned.DECISION)]
    assert s.process([reject])[0] == [Ok(value=Learned.DUPLICATE)]
    assert [h["outcome"] for h in s.engine.history("ana")].count("reject") == 1


def test_outcome_keys_live_with_the_customer_through_passivation_and_recovery(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=60.0)
    s.process([converted("ana", "order-1")])
    clock.now += 61
    assert s.passivate(clock.now) == 1
    assert s.process([converted("ana", "order-1")])[0] == [Ok(value=Learned.DUPLICATE)]
    s.snapshot(range(N_PARTITIONS))
    s.process([converted("ana", "order-2")])  # journaled after the snapshot
    rebuilt = shard(compiled, clock=clock, store=s.store)
    rebuilt.recover()
    assert rebuilt.process([converted("ana", "order-1"), converted("ana", "order-2")])[0] == \
        [Ok(value=Learned.DUPLICATE)] * 2
    assert [h["outcome"] for h in rebuilt.engine.history("ana")] == ["convert"] * 2
