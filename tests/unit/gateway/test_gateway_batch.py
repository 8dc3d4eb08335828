"""IngestBatch gives back every in-flight slot it took, however it ends: served, cancelled by
the client mid-batch, or past its deadline. Real gRPC on 127.0.0.1 over the in-process backend
with a slow shard, so the cancel or the deadline lands while the batch waits for its acks."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import InProcessGateway, serving
from tests.support.local_backend import LocalBackend
from tests.support.waiting import wait_until

SHARD_DELAY_S = 1.0
BATCH = 500


class SlowBackend(LocalBackend):
    async def send(self, *args, **kwargs):
        await asyncio.sleep(SHARD_DELAY_S)
        return await super().send(*args, **kwargs)


@pytest.fixture
def slow():
    with serving(backend=SlowBackend()) as both:
        yield both


def batch(tag: str) -> pb.EventBatch:
    return pb.EventBatch(events=[pb.Event(customer_id=f"{tag}-{i}", type="app_open",
                                          channel="web") for i in range(BATCH)])


def settled(gateway: InProcessGateway, after: str) -> None:
    """The gateway's in-flight count falls to zero (within 5 s)."""
    wait_until(lambda: gateway.gateway.inflight == 0, 5, f"no calls in flight {after}")


def wait_inflight(gateway: InProcessGateway) -> None:
    wait_until(lambda: gateway.gateway.inflight, 5, "the batch in flight")


def methods(channel: grpc.Channel):
    stub = DecisionServiceStub(channel)
    return stub.IngestBatch, stub.Decide


def test_cancelled_batches_give_back_their_inflight_slots(slow):
    gateway, channel = slow
    ingest_batch, decide = methods(channel)
    for n in range(3):
        call = ingest_batch.future(batch(f"cancelled{n}"), timeout=30)
        wait_inflight(gateway)  # mid-batch: routed, waiting for the slow shard
        assert call.cancel()
        settled(gateway, f"after cancelled batch {n}")
    assert decide(pb.DecideRequest(customer_id="after-cancel", channel="web"),
                  timeout=10).channel == "web"
    settled(gateway, "after the decide")


def test_batches_past_their_deadline_give_back_their_inflight_slots(slow):
    gateway, channel = slow
    ingest_batch, decide = methods(channel)
    for n in range(3):
        with pytest.raises(grpc.RpcError) as err:
            ingest_batch(batch(f"late{n}"), timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        settled(gateway, f"after late batch {n}")
    assert decide(pb.DecideRequest(customer_id="after-deadline", channel="web"),
                  timeout=10).channel == "web"


def test_a_served_batch_gives_back_its_slots(slow):
    gateway, channel = slow
    ingest_batch, _ = methods(channel)
    assert len(ingest_batch(batch("served"), timeout=30).acks) == BATCH
    settled(gateway, "after the served batch")
