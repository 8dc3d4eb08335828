"""Retries the contract asks for get the first call's answer (review rev44/streams): an Ingest
with decide_placement retried under its idempotency key gets a decision (without one, its ack
read as no actions, "do nothing now"; finding 2), alone, within a batch and on a stream; and a
Respond retried once the customer's outcome rate is used answers LEARNED_FROM_DUPLICATE, not
RESOURCE_EXHAUSTED (finding 6). Through gRPC to the in-process gateway."""
from __future__ import annotations

import grpc
import pytest

from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import serving


def _event(customer: str, key: str) -> pb.Event:
    return pb.Event(customer_id=customer, type="page_view", channel="web", idempotency_key=key,
                    attributes={"category": pb.Value(string_value="electronics")},
                    decide_placement="hero")


def _actions(ack: pb.IngestAck) -> list[str]:
    return [a.action_id for a in ack.decision.actions]


@pytest.fixture(scope="module")
def stub():
    with serving() as (_, channel):
        yield DecisionServiceStub(channel)


def test_a_retried_ingest_gets_a_decision(stub):
    first = stub.Ingest(_event("dana", "k-1"), timeout=10)
    retry = stub.Ingest(_event("dana", "k-1"), timeout=10)
    assert not first.duplicate and retry.duplicate and retry.sequence == first.sequence
    assert retry.HasField("decision") and retry.decision.decision_id
    assert _actions(retry) == _actions(first) != []


def test_a_repeat_within_a_batch_and_a_retried_batch_get_decisions(stub):
    events = [_event("erin", "k-1"), _event("erin", "k-1")]
    first = stub.IngestBatch(pb.EventBatch(events=events), timeout=10).acks
    retry = stub.IngestBatch(pb.EventBatch(events=events), timeout=10).acks
    assert [a.duplicate for a in first] == [False, True]
    assert [a.duplicate for a in retry] == [True, True]
    assert all(a.HasField("decision") and _actions(a) == _actions(first[0]) != []
               for a in [*first, *retry])


def test_a_retried_stream_event_gets_a_decision(stub):
    acks = list(stub.IngestStream(iter([_event("finn", "k-1"), _event("finn", "k-1")]),
                                  timeout=10))
    assert [a.duplicate for a in acks] == [False, True]
    assert acks[1].HasField("decision") and _actions(acks[1]) == _actions(acks[0]) != []


def test_a_retried_respond_past_the_rate_is_a_duplicate(stub, monkeypatch):
    monkeypatch.setattr("kairos.cluster.shard.outcomes.OUTCOMES_PER_CUSTOMER", 3)
    ack = stub.Ingest(_event("gil", "k-1"), timeout=10)
    action = ack.decision.actions[0].action_id

    def respond(key: str) -> pb.OutcomeAck:
        return stub.Respond(pb.Outcome(customer_id="gil", channel="web", action_id=action,
                                       decision_id=ack.decision.decision_id,
                                       outcome=pb.ACCEPT, idempotency_key=key), timeout=10)

    assert respond("o-0").learned_from == pb.LEARNED_FROM_DECISION
    # retries are not charged: the two new outcomes fill the rate of 3, the third is refused
    assert respond("o-0").learned_from == pb.LEARNED_FROM_DUPLICATE
    respond("o-1")
    respond("o-2")
    with pytest.raises(grpc.RpcError) as refused:
        respond("o-3")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert respond("o-0").learned_from == pb.LEARNED_FROM_DUPLICATE
    assert respond("o-2").learned_from == pb.LEARNED_FROM_DUPLICATE
