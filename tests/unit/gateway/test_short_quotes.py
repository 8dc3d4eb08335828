"""An INVALID_ARGUMENT message names the field and quotes at most a short prefix of a long
value the caller sent (core.request.quoted), never the value itself up to the status
message's cap (review rev42 gateway finding 4)."""
from __future__ import annotations

import grpc
import pytest

from kairos.core.request import QUOTED
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from kairos.cluster.gateway.calls import MAX_DETAILS

from tests.support.inprocess_gateway import serving

LONG = 5000


def _event(**fields) -> pb.Event:
    return pb.Event(**{"customer_id": "t-1", "type": "app_open", "channel": "web", **fields})


CASES = [  # (rpc, request, field named, value's character, its length)
    ("Decide", pb.DecideRequest(customer_id="t-1", channel="w" * LONG), "channel", "w", LONG),
    ("Decide", pb.DecideRequest(customer_id="t-1", channel="web", placement="p" * LONG),
     "placement", "p", LONG),
    ("Decide", pb.DecideRequest(alias=pb.Alias(type="t" * LONG, value="v"), channel="web"),
     "alias.type", "t", LONG),
    ("WatchDecisions", pb.WatchRequest(customer_id="t-1", channel="web", placement="p" * LONG),
     "placement", "p", LONG),
    ("GetProfile", pb.ProfileRequest(customer_id="t-1", shown_channel="s" * LONG),
     "shown_channel", "s", LONG),
    ("Ingest", _event(decide_placement="x" * LONG), "decide_placement", "x", LONG),
    ("Ingest", _event(channel="c" * LONG), "channel", "c", LONG),
    ("LinkIdentity", pb.LinkRequest(alias=pb.Alias(type="t" * LONG, value="v"),
                                    customer_id="t-1"), "alias.type", "t", LONG),
    ("IngestBatch", pb.EventBatch(events=[_event(), _event(decide_placement="x" * LONG)]),
     "events[1].decide_placement", "x", LONG),
    # a field of allowed values, in an event's attributes and a Decide's context (core/engine)
    ("Ingest", _event(type="page_view", attributes={"category": pb.Value(
        string_value="z" * 1000)}), "attributes.category", "z", 1000),
    ("Decide", pb.DecideRequest(customer_id="t-1", channel="web", context={
        "device": pb.Value(string_value="d" * 1000)}), "context.device", "d", 1000),
    # bounded to 256 characters before this check: quoted no longer for all that
    ("Ingest", _event(type="y" * 200), "type", "y", 200),
    ("Respond", pb.Outcome(customer_id="t-1", channel="web", action_id="a" * 200,
                           outcome=pb.IMPRESSION), "action_id", "a", 200),
]


def _refusal(channel: grpc.Channel, rpc: str, request) -> grpc.RpcError:
    stub = DecisionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as failed:
        answer = getattr(stub, rpc)(request, timeout=10)
        if rpc == "WatchDecisions":
            next(answer)
    return failed.value


@pytest.fixture(scope="module")
def channel():
    with serving() as (_, channel):
        yield channel


@pytest.mark.parametrize("rpc, request_, field, char, length", CASES,
                         ids=[f"{case[0]}-{case[2]}-{case[4]}" for case in CASES])
def test_a_long_value_is_quoted_short_and_the_field_named(channel, rpc, request_, field, char,
                                                          length):
    failed = _refusal(channel, rpc, request_)
    details = failed.details()
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(f"{field}: "), details
    assert char * QUOTED in details and char * (QUOTED + 1) not in details, details
    assert f"... ({length} characters)" in details
    assert len(details) < MAX_DETAILS  # whole, not cut to fit the trailers


def test_a_short_value_is_quoted_whole(channel):
    failed = _refusal(channel, "Decide", pb.DecideRequest(customer_id="t-1", channel="nope"))
    assert failed.details().startswith("channel: unknown channel 'nope' (channels: ")
