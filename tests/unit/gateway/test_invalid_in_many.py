"""INVALID_ARGUMENT means nothing was applied, and a batch is checked before anything is routed:
so the gateway checks an event's attribute values with the engine's own checks, and a batch
with one bad value is refused whole (the values were checked only by the shard, which
refused event 3 of 10 after applying the other 9). A stream ends at the bad event, before
any event after it is routed. A refusal that still comes from a shard, once the call's events
were routed, says that its other events may have been applied. Through gRPC to the
in-process gateway."""
from __future__ import annotations

import grpc
import pytest

from kairos.cluster import protocol
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import serving
from tests.support.local_backend import LocalBackend


def _events(customer: str, bad: int | None = None) -> list[pb.Event]:
    def price(i: int) -> pb.Value:
        return pb.Value(string_value="12") if i == bad else pb.Value(number_value=1.0)
    return [pb.Event(customer_id=customer, type="page_view", channel="web",
                     idempotency_key=f"{customer}-{i}",
                     attributes={"price": price(i), "category": pb.Value(string_value="apparel"),
                                 "product_id": pb.Value(string_value="p1")})
            for i in range(10)]


def _applied(channel: grpc.Channel, customer: str) -> int:
    try:
        return DecisionServiceStub(channel).GetProfile(pb.ProfileRequest(customer_id=customer),
                                                       timeout=10).events_applied
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return 0


def _send(method: str, channel: grpc.Channel, events: list[pb.Event]
          ) -> tuple[list[int], grpc.RpcError]:
    """The acks read before the call failed, and its failure."""
    stub = DecisionServiceStub(channel)
    acks: list[int] = []
    with pytest.raises(grpc.RpcError) as failed:
        if method == "IngestBatch":
            stub.IngestBatch(pb.EventBatch(events=events), timeout=10)
        else:
            for ack in stub.IngestStream(iter(events), timeout=10):
                acks.append(ack.sequence)
    return acks, failed.value


@pytest.mark.parametrize("method", ["IngestBatch", "IngestStream"])
def test_a_bad_value_is_refused_before_the_events_after_it_are_routed(method):
    with serving() as (_, channel):
        acks, failed = _send(method, channel, _events("ana", bad=3))
        applied = _applied(channel, "ana")
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.details() == "events[3].attributes.price: expected a number, got str '12'"
    assert applied == (0 if method == "IngestBatch" else 3) and acks == [1, 2, 3][:applied]


class RefusesOne(LocalBackend):
    """A shard that refuses the event keyed "bo-3", as one running another catalog would."""

    async def send(self, name, session, seq, requests, routed):
        refused = [isinstance(r, protocol.Event) and r.idempotency_key == "bo-3"
                   for r in requests]
        others = iter(await super().send(
            name, session, seq, [r for r, no in zip(requests, refused) if not no],
            [v for v, no in zip(routed, refused) if not no]))
        return [protocol.Invalid(field="attributes.price", reason="not in this catalog")
                if no else next(others) for no in refused]


@pytest.mark.parametrize("method", ["IngestBatch", "IngestStream"])
def test_a_shards_refusal_says_the_calls_other_events_may_have_been_applied(method):
    with serving(backend=RefusesOne()) as (_, channel):
        _, failed = _send(method, channel, _events("bo"))
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.details().startswith("events[3].attributes.price: not in this catalog; ")
    assert "its other events may have been applied" in failed.details()
