"""An event's `decide_placement` is checked by the gateway, before anything is routed: checked
only by the shard, a refused IngestBatch had applied its other events, and an IngestStream the
events after the bad one (review rev42 gateway finding 1). Through gRPC to the in-process
gateway."""
from __future__ import annotations

import grpc
import pytest

from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import serving


def _event(customer: str, placement: str = "") -> pb.Event:
    return pb.Event(customer_id=customer, type="page_view", channel="web",
                    decide_placement=placement,
                    attributes={"category": pb.Value(string_value="apparel")})


def _applied(stub: DecisionServiceStub, customer: str) -> int:
    try:
        return stub.GetProfile(pb.ProfileRequest(customer_id=customer), timeout=10).events_applied
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return 0


@pytest.mark.parametrize("method", ["IngestBatch", "IngestStream"])
def test_an_unknown_decide_placement_refuses_the_call_before_its_events_are_routed(method):
    customers = ["dp-1", "dp-2", "dp-3", "dp-4"]
    events = [_event(c, "no_such_placement" if c == "dp-3" else "") for c in customers]
    with serving() as (_, channel):
        stub = DecisionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            if method == "IngestBatch":
                stub.IngestBatch(pb.EventBatch(events=events), timeout=10)
            else:
                list(stub.IngestStream(iter(events), timeout=10))
        applied = [_applied(stub, c) for c in customers]
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.value.details().startswith(
        "events[2].decide_placement: unknown placement 'no_such_placement' of web")
    assert "may have been applied" not in failed.value.details()
    # a stream's events before the bad one were routed, as its acks said
    assert applied == ([0, 0, 0, 0] if method == "IngestBatch" else [1, 1, 0, 0])


def test_an_ingest_with_a_known_decide_placement_is_decided():
    with serving() as (_, channel):
        ack = DecisionServiceStub(channel).Ingest(_event("dp-ok", "sidebar"), timeout=10)
    assert ack.HasField("decision") and ack.decision.placement == "sidebar"
