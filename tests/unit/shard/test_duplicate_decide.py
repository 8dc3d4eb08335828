"""A duplicate event (its idempotency key seen before) that asks for a decision gets one:
without it, its ack read as no actions, "do nothing now" (review rev44/streams finding 2).
Decided as the first was (sealed, logged), on the profile as it is: nothing applied again."""
from __future__ import annotations

from kairos.cluster.protocol import OK, Ok
from kairos.cluster.storage.memory_store import MemoryStore

from tests.unit.shard.test_decision_log import logged, respond
from tests.unit.shard.test_shard import T0, Clock, event, profile, shard


def _keyed(customer: str, key: str, t: float = T0):
    return event(customer, "page_view", t, category="electronics")._replace(
        idempotency_key=key, decide=("web", "hero"))


def _applied(s, customer: str) -> int:
    [reply], _ = s.process([profile(customer, T0 + 10)])
    return reply.value["events_applied"]


def test_a_retried_event_answers_its_sequence_and_a_sealed_logged_decision(compiled):
    s = shard(compiled, store=MemoryStore(), clock=Clock(T0))
    [first], _ = s.process([_keyed("dana", "k-1")])
    [retry], _ = s.process([_keyed("dana", "k-1")])
    assert (first.duplicate, retry.duplicate) == (False, True)
    assert retry.sequence == first.sequence and _applied(s, "dana") == 1
    assert retry.decision is not None and retry.decision.placement == "hero"
    assert [a.action_id for a in retry.decision.actions] == \
        [a.action_id for a in first.decision.actions]
    assert retry.decision.decision_id != first.decision.decision_id
    decisions, _ = logged(s.store)
    assert [d.decision_id for d in decisions] == \
        [first.decision.decision_id, retry.decision.decision_id]
    # sealed: the retry's decision takes outcomes
    assert s.process([respond("dana", retry.decision)])[0] == [Ok(value="decision")]


def test_a_repeat_within_a_batch_gets_the_decision_after_the_first(compiled):
    s = shard(compiled, store=MemoryStore(), clock=Clock(T0))
    replies, _ = s.process([_keyed("erin", "k-1"), _keyed("erin", "k-1")])
    assert [r.status for r in replies] == [OK, OK]
    first, repeat = replies
    assert (first.duplicate, repeat.duplicate) == (False, True)
    assert repeat.sequence == first.sequence and _applied(s, "erin") == 1
    assert repeat.decision is not None
    assert [a.action_id for a in repeat.decision.actions] == \
        [a.action_id for a in first.decision.actions]
    assert len(logged(s.store)[0]) == 2


def test_a_duplicate_without_decide_gets_no_decision(compiled):
    s = shard(compiled, clock=Clock(T0))
    plain = _keyed("finn", "k-1")._replace(decide=None)
    s.process([plain])
    [retry], _ = s.process([plain])
    assert retry.duplicate and retry.decision is None
