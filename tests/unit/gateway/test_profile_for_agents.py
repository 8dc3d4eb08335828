"""What an agent's screen reads from the gateway, over real gRPC on the in-process backend:
GetProfile's explained decisions and consent by purpose, and the catalog's agent texts in
decisions (RankedAction.agent_text)."""
from __future__ import annotations

import time

import pytest

from kairos.cluster.gateway import wire
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import serving

DEADLINE_S = 10


@pytest.fixture(scope="module")
def stub():
    with serving() as (_, channel):
        yield decision_pb2_grpc.DecisionServiceStub(channel)


def ingest(stub, customer: str, kind: str, attributes: dict) -> None:
    event = pb.Event(customer_id=customer, type=kind, channel="web",
                     time=wire.time_out(time.time()))
    for name, value in attributes.items():
        event.attributes[name].CopyFrom(wire.value_out(value))
    stub.Ingest(event, timeout=DEADLINE_S)


def test_an_explained_profile_says_why_and_whose_consent(stub):
    ingest(stub, "kei", "profile_updated", {"marketing_opt_in": False})
    ingest(stub, "kei", "complaint", {"topic": "delivery", "severity": "high"})
    plain = stub.GetProfile(pb.ProfileRequest(customer_id="kei"), timeout=DEADLINE_S)
    assert not plain.current["call_center"].explanation.dropped  # explaining costs: on request
    explained = stub.GetProfile(pb.ProfileRequest(customer_id="kei", explain=True),
                                timeout=DEADLINE_S)
    assert dict(explained.consent) == {"marketing": False, "service": True}
    # the default catalog's predictors from the profile: features and attributes alike
    assert list(explained.model_inputs) == ["complaints_30d", "loyalty_points", "orders",
                                            "since_cart", "since_purchase", "spend_90d",
                                            "tier", "views_7d"]
    call_center = explained.current["call_center"]
    assert {d.reason for d in call_center.explanation.dropped} >= {"NO_CONSENT"}
    callback = next(a for a in call_center.actions if a.action_id == "complaint_callback")
    assert callback.agent_text.startswith("Book a call-back")
    decided = stub.Decide(pb.DecideRequest(customer_id="kei", channel="call_center"),
                          timeout=DEADLINE_S)
    assert all(a.agent_text for a in decided.actions)  # every call-centre offer has one
    web = stub.Decide(pb.DecideRequest(customer_id="kei", channel="web"), timeout=DEADLINE_S)
    assert not [a.agent_text for a in web.actions if a.agent_text]  # none on the web
