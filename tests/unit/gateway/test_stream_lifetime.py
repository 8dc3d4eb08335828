"""An IngestStream without a deadline lasts for as long as its caller keeps it open: each
event's ack is due within DEFAULT_DEADLINE_S of its arrival, not the whole stream within it
(which cut a healthy stream after DEFAULT_DEADLINE_S, saying its shard had not answered in
time). Through gRPC to the in-process gateway, with DEFAULT_DEADLINE_S made short."""
from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest

from kairos.cluster.gateway import calls
from kairos.cluster.protocol import Event
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import serving
from tests.support.local_backend import LocalBackend

DEFAULT_DEADLINE_S = 1.0  # an ack is due within it: a loaded machine's late turns fit in it


@pytest.fixture(autouse=True)
def short_default_deadline(monkeypatch):
    monkeypatch.setattr(calls, "DEFAULT_DEADLINE_S", DEFAULT_DEADLINE_S)


def _events(n: int, pause_s: float = 0.0):
    for i in range(n):
        yield pb.Event(customer_id="carol", type="app_open", channel="web",
                       idempotency_key=f"s{i}")
        time.sleep(pause_s)


def test_a_stream_without_a_deadline_outlives_the_default_one():
    with serving() as (_, channel):
        # the stream lasts 2.4 s, each event's ack due within 1 s of it
        acks = list(DecisionServiceStub(channel).IngestStream(_events(4, pause_s=0.6)))
    assert [ack.sequence for ack in acks] == [1, 2, 3, 4]


def test_an_event_its_shard_does_not_ack_still_ends_a_stream_without_a_deadline():
    class HeldEvents(LocalBackend):
        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()

        async def send(self, name, session, seq, requests, routed):
            if any(isinstance(request, Event) for request in requests):
                await self.gate.wait()
            return await super().send(name, session, seq, requests, routed)

    backend = HeldEvents()
    with serving(backend=backend) as (gateway, channel):
        stream = DecisionServiceStub(channel).IngestStream(_events(1))
        watchdog = threading.Timer(10, stream.cancel)  # CANCELLED, where it would hang
        watchdog.start()
        with pytest.raises(grpc.RpcError) as ended:
            list(stream)
        watchdog.cancel()
        gateway.loop.call_soon_threadsafe(backend.gate.set)
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert ended.value.details() == "the customer's shard did not answer in time"
