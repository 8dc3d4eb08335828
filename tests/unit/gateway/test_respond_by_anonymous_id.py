"""What a Respond by an alias's anonymous id ("~type:value") costs the runtime when its shard
refuses it as a decision issued to none of the ids it tried (review of efb058c, item 1), over
real gRPC on the in-process backend. It is sent again as the alias only where the alias
resolves to a customer the first send did not reach: not for a visitor never linked (the id
itself), nor for a linked alias while the id's redirect lasts (the customer it redirected to);
there the first refusal stands. Each refused outcome is charged to the outcome rate of the
customer it reached (shard/customers.py: guesses count): once, not twice."""
from __future__ import annotations

import grpc
import pytest

from kairos.cluster import identity
from kairos.cluster.protocol import route_key
from kairos.cluster.shard.outcomes import NOT_ISSUED
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import InProcessGateway, serving
from tests.unit.gateway.test_disclosure import (ANON, DEADLINE_S, EMAIL, KEYS, OPS, WEB,
                                                accepted, kei_linked, key)

NOBODY = "~email:nobody@example.org"  # an alias linked to no one


def recorded(gateway: InProcessGateway) -> list[tuple[str, str]]:
    """What the gateway's client routes from now on: each request's kind and route key."""
    sent: list[tuple[str, str]] = []
    client = gateway.client
    enqueue = client.enqueue

    def recording(request, call=None):
        sent.append((request.kind, route_key(request)))
        return enqueue(request, call)
    client.enqueue = recording
    return sent


def refused(stub: decision_pb2_grpc.DecisionServiceStub, outcome: pb.Outcome) -> None:
    with pytest.raises(grpc.RpcError) as refusal:
        stub.Respond(outcome, timeout=DEADLINE_S, metadata=key(WEB))
    assert refusal.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refusal.value.details()
    assert refusal.value.details().startswith(f"decision_id: {NOT_ISSUED}")


def decided(stub, customer_id: str) -> pb.Decision:
    """A web Decide for `customer_id`, by the web key."""
    return stub.Decide(pb.DecideRequest(customer_id=customer_id, channel="web"),
                       timeout=DEADLINE_S, metadata=key(WEB))


def test_a_refusal_the_alias_would_repeat_is_not_sent_again():
    """Before: a never-linked visitor's refused Respond went Outcome, Resolve, Outcome (the
    same send twice); a linked alias's, while its redirect lasts, Outcome, Outcome (the
    redirect), Resolve, Outcome (kei's shard again)."""
    with serving(KEYS) as (gateway, channel):
        stub = kei_linked(channel)
        keis, nobodys = (decided(stub, customer_id) for customer_id in ("kei", NOBODY))
        sent = recorded(gateway)
        refused(stub, accepted(keis, customer_id=NOBODY))
        assert sent == [("outcome", NOBODY), ("resolve", "email:nobody@example.org")]
        sent.clear()
        refused(stub, accepted(nobodys, customer_id=ANON))
        assert sent == [("outcome", ANON), ("outcome", "kei"),
                        ("resolve", "email:kei@example.org")]


def test_once_the_redirect_is_gone_the_alias_is_tried_where_it_now_leads(monkeypatch):
    """The id's shard holds a fresh anonymous profile; the alias resolves to kei, which the
    first send did not reach: kei's decision is learned from, another's refused, each sent to
    both (one Resolve between)."""
    monkeypatch.setattr(identity, "REDIRECTS_PER_PARTITION", 0)
    with serving(KEYS) as (gateway, channel):
        stub = kei_linked(channel)
        by_alias = stub.Decide(pb.DecideRequest(alias=EMAIL, channel="web"),
                               timeout=DEADLINE_S, metadata=key(WEB))
        nobodys = decided(stub, NOBODY)
        sent = recorded(gateway)
        assert stub.Respond(accepted(by_alias, customer_id=ANON), timeout=DEADLINE_S,
                            metadata=key(WEB)).learned_from == pb.LEARNED_FROM_DECISION
        both = [("outcome", ANON), ("resolve", "email:kei@example.org"), ("outcome", "kei")]
        assert sent == both
        sent.clear()
        refused(stub, accepted(nobodys, customer_id=ANON))
        assert sent == both


def test_refused_responds_count_once_against_the_customers_outcome_rate():
    """60 outcomes a minute per customer (KAIROS_OUTCOMES_PER_CUSTOMER): after 30 refused
    Responds by the visitor's id (before: 60 charged), its own outcome is still learned; so is
    kei's after 30 refused by the id of its linked alias, its redirect lasting."""
    with serving(KEYS) as (_, channel):
        stub = kei_linked(channel)
        keis, nobodys = (decided(stub, customer_id) for customer_id in ("kei", NOBODY))
        for guessed, own, customer_id in ((keis, nobodys, NOBODY), (nobodys, keis, ANON)):
            for _ in range(30):
                refused(stub, accepted(guessed, customer_id=customer_id))
            assert stub.Respond(accepted(own, customer_id=customer_id), timeout=DEADLINE_S,
                                metadata=key(WEB)).learned_from == pb.LEARNED_FROM_DECISION
        assert [h.outcome for h in stub.GetProfile(pb.ProfileRequest(customer_id="kei"),
                                                   timeout=DEADLINE_S,
                                                   metadata=key(OPS)).history] == ["accept"]
