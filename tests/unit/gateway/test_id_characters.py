"""Ids a caller names a customer, an alias or a request by hold no control characters (C0, DEL,
C1) on any RPC: rev43 identity finding 1, where LinkIdentity to "\\x00merging" (the shard's
scratch id for a fold then) lost the visitor's events and broke every tick of its shard. A
forget still erases an id kept before the rule. Real gRPC on 127.0.0.1 over the in-process
backend (no Ray)."""
from __future__ import annotations

import time

import pytest

from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import serving
from tests.unit.gateway.test_gateway_inputs import call, event, invalid_argument

COOKIE = pb.Alias(type="cookie", value="v-1")


@pytest.fixture(scope="module")
def served():
    with serving() as (gateway, channel):
        yield gateway, decision_pb2_grpc.DecisionServiceStub(channel)


def outcome(**fields) -> pb.Outcome:
    return pb.Outcome(**{"customer_id": "c-1", "decision_id": "d", "action_id": "service_menu",
                         "channel": "web", "outcome": pb.ACCEPT, **fields})


# (RPC, request, the field INVALID_ARGUMENT must name)
CONTROLS = [
    ("LinkIdentity", pb.LinkRequest(alias=COOKIE, customer_id="\x00merging"), "customer_id"),
    ("LinkIdentity", pb.LinkRequest(alias=pb.Alias(type="cookie", value="v\n"),
                                    customer_id="c-1"), "alias.value"),
    ("Ingest", event(customer_id="c\x7f1"), "customer_id"),
    ("Ingest", event(customer_id=None, alias=pb.Alias(type="cookie", value="\x1b[2J")),
     "alias.value"),
    ("Ingest", event(idempotency_key="outcome\x00k"), "idempotency_key"),
    ("Ingest", event(event_id="e\t1"), "event_id"),
    ("IngestBatch", pb.EventBatch(events=[event(), event(customer_id="c\u00851")]),
     "events[1].customer_id"),
    ("IngestStream", [event(), event(idempotency_key="k\r")], "events[1].idempotency_key"),
    ("Decide", pb.DecideRequest(customer_id="c\u009b1", channel="web"), "customer_id"),
    ("GetProfile", pb.ProfileRequest(customer_id="\x00c"), "customer_id"),
    ("WatchDecisions", pb.WatchRequest(customer_id="c\x001", channel="web"), "customer_id"),
    ("Respond", outcome(customer_id="c\x01"), "customer_id"),
    ("Respond", outcome(decision_id="d\x00"), "decision_id"),
    ("Respond", outcome(idempotency_key="\x00"), "idempotency_key"),
]


@pytest.mark.parametrize("method, request_, field", CONTROLS,
                         ids=[f"{m}-{f}" for m, _, f in CONTROLS])
def test_an_id_holding_a_control_character_is_invalid_argument(served, method, request_, field):
    details = invalid_argument(served[1], method, request_, field)
    assert details.startswith(f"{field}: character U+") and "no control characters" in details


def test_other_characters_are_ids_like_any(served):
    gateway, stub = served
    for customer in ("ana é", "客户-1", "\u202ebidi", "emoji \U0001f600", "~cookie:x"):
        assert call(stub, "Ingest", event(customer_id=customer)).sequence == 1, customer
    assert call(stub, "LinkIdentity", pb.LinkRequest(
        alias=pb.Alias(type="email", value="ana é@example.com"), customer_id="ana é")).merged \
        is not None


def test_a_forget_erases_an_id_kept_before_the_rule(served):
    """Kept before ids were checked (the shard's own requests are not the gateway's): the
    customer can still be forgotten, by id."""
    gateway, stub = served
    kept = "c\x00kept"
    gateway.run(gateway.client.ingest(kept, "app_open", time.time(), {}))
    assert gateway.run(gateway.client.profile(kept)) is not None
    assert call(stub, "ForgetCustomer", pb.ForgetRequest(customer_id=kept)).existed
    assert gateway.run(gateway.client.profile(kept)) is None
