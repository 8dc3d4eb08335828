"""An IngestBatch whose answer could pass what a gRPC client receives by default (4 MiB) is
refused whole, INVALID_ARGUMENT naming `events`, before any event is routed (answerbound.py):
it was applied whole and answered past the client's limit, RESOURCE_EXHAUSTED, which tells
the client to retry, and a retry applied every event again (review finding). The bound holds
the answers it lets through, and does not refuse a large batch of the default catalog. Real
gRPC on 127.0.0.1 over the in-process backend, clients with gRPC's default receive limit."""
from __future__ import annotations

import grpc
import pytest

from kairos.cluster.gateway import answerbound
from kairos.cluster.settings import MAX_ANSWER_BYTES
from kairos.v1 import admin_pb2, admin_pb2_grpc
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import InProcessGateway, serving
from tests.support.waiting import wait_until

ACTIONS = 12
# the reviewer's: a placement showing 12 actions, each eligible
WIDE = """kairos_catalog: 1
name: wide
version: "w1"
channels:
  web:
    placements:
      feed: {top_k: 12}
events:
  page_view:
    fields: {}
consent:
  service: true
actions:
""" + "".join(f"""  - id: recommendation_{i:02d}
    group: recommendations_{i:02d}
    purpose: service
    channels:
      web: {{treatment: card_{i:02d}}}
    value: 1
""" for i in range(ACTIONS)) + "fallbacks:\n  web: [recommendation_00]\n"


def wide(gateway: InProcessGateway, channel: grpc.Channel) -> None:
    admin_pb2_grpc.AdminServiceStub(channel).PutCatalog(admin_pb2.CatalogText(yaml=WIDE),
                                                        timeout=120)
    wait_until(lambda: gateway.run(gateway.gateway.catalog()).version == "w1", 30,
               "the gateway to follow the switch to the wide catalog")


def page_views(n: int, customers: int, placement: str = "feed", **attributes: str
               ) -> pb.EventBatch:
    return pb.EventBatch(events=[
        pb.Event(customer_id=f"c{i % customers:04d}", type="page_view", channel="web",
                 decide_placement=placement, attributes={
                     name: pb.Value(string_value=value) for name, value in attributes.items()})
        for i in range(n)])


def bound(gateway: InProcessGateway, batch: pb.EventBatch) -> int:
    """The most bytes answerbound gives the batch's answer (events by customer id)."""
    most = answerbound._placement_bytes(gateway.run(gateway.gateway.catalog()))
    return batch.ByteSize() + sum(answerbound.ACK_BYTES + most[event.channel,
                                                                event.decide_placement]
                                  for event in batch.events)


def test_a_batch_whose_answer_could_pass_a_clients_limit_is_refused_and_nothing_applied():
    with serving() as (gateway, channel):
        wide(gateway, channel)
        stub = DecisionServiceStub(channel)
        # 10,000 events (300,000 bytes) within both of a batch's bounds: its answer, 14 MB
        batch = page_views(10_000, 1000)
        with pytest.raises(grpc.RpcError) as refused:
            stub.IngestBatch(batch, timeout=120)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        details = refused.value.details()
        assert details.startswith("events: the batch's answer could take ")
        assert "10000 of its events ask for a decision" in details
        assert "smaller batches" in details and "decide_placement" in details
        for customer in ("c0000", "c0007", "c0999"):  # nothing was applied
            with pytest.raises(grpc.RpcError) as unknown:
                stub.GetProfile(pb.ProfileRequest(customer_id=customer), timeout=30)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        # a part of it, as told, is applied and answered, its answer within its bound
        smaller = pb.EventBatch(events=batch.events[:2500])
        answer = stub.IngestBatch(smaller, timeout=120)
        assert len(answer.acks) == 2500
        assert all(len(ack.decision.actions) == ACTIONS for ack in answer.acks)
        most = bound(gateway, smaller)
        assert answer.ByteSize() <= most <= MAX_ANSWER_BYTES
        assert most <= 1.1 * answer.ByteSize()  # and close to it: each decision shows all
        assert stub.GetProfile(pb.ProfileRequest(customer_id="c0007"),
                               timeout=30).events_applied == 3


def test_a_large_batch_of_the_default_catalog_is_accepted():
    """The most a 1 MiB request holds (10,000 events), and a batch of 5,000 events each
    asking for a decision of the default catalog's hero placement (its answer 0.9 MB)."""
    with serving() as (gateway, channel):
        stub = DecisionServiceStub(channel)
        plain = pb.EventBatch(events=[
            pb.Event(event_id=f"export-{i:06d}", customer_id=f"crm-{i:06d}", type="page_view",
                     channel="web", attributes={"category": pb.Value(string_value="home")})
            for i in range(10_000)])
        assert len(stub.IngestBatch(plain, timeout=120).acks) == 10_000
        deciding = page_views(5_000, 5_000, "hero", category="home")
        answer = stub.IngestBatch(deciding, timeout=120)
        assert len(answer.acks) == 5_000 and answer.acks[0].decision.placement == "hero"
        assert answer.ByteSize() <= bound(gateway, deciding) <= MAX_ANSWER_BYTES


def test_the_decision_of_an_event_by_alias_may_name_another_customer():
    """To a key with profile:read (every key, with auth off) the decision of an event by
    alias names the customer the alias is linked to, whose id the request does not hold:
    the bound counts the longest such id, in UTF-8."""
    with serving() as (gateway, channel):
        wide(gateway, channel)
        stub = DecisionServiceStub(channel)
        customer = "é" * 256  # 512 bytes, the longest a customer id is (in characters)
        stub.LinkIdentity(pb.LinkRequest(customer_id=customer,
                                         alias=pb.Alias(type="cookie", value="k")), timeout=30)
        batch = pb.EventBatch(events=[
            pb.Event(alias=pb.Alias(type="cookie", value="k"), type="page_view", channel="web",
                     decide_placement="feed") for _ in range(100)])
        answer = stub.IngestBatch(batch, timeout=60)
        assert answer.acks[0].decision.customer_id == customer
        assert answer.ByteSize() <= bound(gateway, batch) + 100 * answerbound.OTHER_CUSTOMER
