"""A call of several events (IngestBatch, IngestStream) that its deadline ends before its
shard answers goes unsent only whole: the deadline cancelled the wait for the first event
alone, which was dropped unsent while the customer's later events went, and the retry the
contract asks for (the same idempotency keys) applied the first event after them. Through
gRPC to the in-process gateway, whose client's call slots to the one shard are held busy."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from kairos.cluster.protocol import Decide
from kairos.cluster.settings import CLIENT_INFLIGHT_CALLS
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import serving
from tests.support.local_backend import LocalBackend
from tests.support.waiting import wait_until


class HeldDecides(LocalBackend):
    """Calls carrying a Decide wait for `gate` (each holds one of the client's call slots)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0

    async def send(self, name, session, seq, requests, routed):
        if any(isinstance(request, Decide) for request in requests):
            self.waiting += 1
            await self.gate.wait()
        return await super().send(name, session, seq, requests, routed)


@pytest.mark.parametrize("method", ["IngestBatch", "IngestStream"])
def test_a_call_past_its_deadline_never_applies_a_later_event_without_an_earlier_one(method):
    backend = HeldDecides()
    with serving(backend=backend) as (gateway, channel):
        stub = DecisionServiceStub(channel)
        held = []
        for i in range(CLIENT_INFLIGHT_CALLS):  # one at a time: each a call of its own
            held.append(stub.Decide.future(
                pb.DecideRequest(customer_id=f"other{i}", channel="web"), timeout=30))
            wait_until(lambda: backend.waiting == i + 1, 10, f"call slot {i} held by a Decide")
        events = [pb.Event(customer_id="alice", type="app_open", channel="web",
                           idempotency_key=f"k{i}") for i in range(3)]
        with pytest.raises(grpc.RpcError) as ended:
            if method == "IngestBatch":
                stub.IngestBatch(pb.EventBatch(events=events), timeout=0.3)
            else:
                list(stub.IngestStream(iter(events), timeout=0.3))
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        gateway.loop.call_soon_threadsafe(backend.gate.set)
        for decide in held:
            decide.result()
        # the retry queues behind whatever of the first call was still to be sent
        retried = stub.IngestBatch(pb.EventBatch(events=events), timeout=10)
        profile = stub.GetProfile(pb.ProfileRequest(customer_id="alice"), timeout=10)
    assert [ack.sequence for ack in retried.acks] == [1, 2, 3]  # k0, k1, k2: in the order sent
    assert profile.events_applied == 3
