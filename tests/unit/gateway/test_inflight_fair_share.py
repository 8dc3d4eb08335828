"""Each API key's fair share of GATEWAY_INFLIGHT_LIMIT (gateway review M3), over real gRPC on
127.0.0.1 and the in-process backend, its shard held stuck (a gate) so that calls stay in
flight: one key's flood took the whole limit, and every other key's calls were refused
RESOURCE_EXHAUSTED. Past FAIR_SHARE_FROM of the limit a key holding its share is refused,
naming the key and its count, while a key under its share passes up to the limit; and the
count of each key goes back to nothing once its calls, batches and streams end, cancelled
included (a count left behind would refuse the key for good: issue 18, finding 12)."""
from __future__ import annotations

import asyncio
import threading
from typing import Iterator

import grpc
import pytest

from kairos.cluster.gateway import auth, calls
from kairos.cluster.gateway.auth import ApiKey, Auth
from kairos.cluster.gateway.calls import Gateway
from kairos.cluster.transport.client import Busy
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import InProcessGateway
from tests.support.waiting import wait_until
from tests.unit.gateway.test_gateway_pressure import GatedBackend

KEYS = """keys:
  - {key: 'web-ingest-decide-0123456789', name: web, channel: web, scopes: [ingest, decide]}
  - {key: 'app-ingest-decide-0123456789', name: app, channel: app, scopes: [ingest, decide]}
"""
WEB = (("x-api-key", "web-ingest-decide-0123456789"),)
APP = (("x-api-key", "app-ingest-decide-0123456789"),)
LIMIT = 40  # its fair-share part: 30 (FAIR_SHARE_FROM, 0.75)


class Rig:
    """A gateway with the two keys, its shard's gate, and a stub."""

    def __init__(self) -> None:
        self.backend = GatedBackend()
        self.gateway = InProcessGateway(Auth.load(KEYS), self.backend)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.gateway.port}")
        self.stub = DecisionServiceStub(self.channel)

    def gate(self, open_: bool) -> None:
        async def gate() -> None:
            (self.backend.gate.set if open_ else self.backend.gate.clear)()
        self.gateway.run(gate())

    def held(self) -> tuple[int, dict[str, int]]:
        """The calls in flight, in all and by key name (read on the gateway's loop)."""
        async def held() -> tuple[int, dict[str, int]]:
            gateway = self.gateway.gateway
            return gateway.inflight, dict(gateway.inflight_of)
        return self.gateway.run(held())

    def close(self) -> None:
        self.gate(True)
        self.channel.close()
        self.gateway.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = Rig()
    yield made
    made.close()


def decide(channel: str, n: int) -> pb.DecideRequest:
    return pb.DecideRequest(customer_id=f"{channel}-{n}", channel=channel)


def event(channel: str, n: int) -> pb.Event:
    return pb.Event(customer_id=f"{channel}-{n}", type="app_open", channel=channel,
                    idempotency_key=f"{channel}-{n}")


def test_a_key_flooding_to_the_limit_leaves_another_keys_calls_served(rig, monkeypatch):
    """The web key's Decides, held at the stuck shard, one after another until refused: it
    holds 30 (FAIR_SHARE_FROM of the limit: its share while it is the one key in flight; main:
    all 40, the limit); the app key, under its share, is served: its Decide and Ingest are
    admitted (main: RESOURCE_EXHAUSTED, "gateway g has 40 calls in flight") and answered once
    the shard is, as are the web key's."""
    monkeypatch.setattr(calls, "GATEWAY_INFLIGHT_LIMIT", LIMIT)
    monkeypatch.setattr(calls, "FAIR_SHARE_FLOOR", 4)
    rig.gate(False)
    flood = []
    while len(flood) <= LIMIT:
        flood.append(rig.stub.Decide.future(decide("web", len(flood)), metadata=WEB,
                                            timeout=60))
        wait_until(lambda: flood[-1].done() or rig.held()[0] == len(flood), 10,
                   "the web key's Decide counted in flight, or refused")
        if flood[-1].done():
            break
    with pytest.raises(grpc.RpcError) as refused:
        flood.pop().result()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "30 of them of key 'web': past 30 in flight, a key may hold 30 (its fair share" \
        in refused.value.details(), refused.value.details()
    assert rig.held() == (30, {"web": 30})

    served = [rig.stub.Decide.future(decide("app", 0), metadata=APP, timeout=60),
              rig.stub.Ingest.future(event("app", 1), metadata=APP, timeout=60)]
    wait_until(lambda: any(f.done() for f in served) or rig.held()[0] == 32, 10,
               "the app key's calls in flight")
    assert rig.held() == (32, {"web": 30, "app": 2})
    for call, request in (  # the web key's ingest calls past its share, now 15 (2 keys)
            (rig.stub.IngestBatch, pb.EventBatch(events=[event("web", 50)])),
            (lambda *args, **kwargs: list(rig.stub.IngestStream(*args, **kwargs)),
             iter([event("web", 51)]))):
        with pytest.raises(grpc.RpcError) as refused:
            call(request, metadata=WEB, timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "30 of them of key 'web': past 30 in flight, a key may hold 15 (its fair " \
               "share: 30 split among the 2 keys with calls in flight" in refused.value.details()
    assert rig.held() == (32, {"web": 30, "app": 2})
    rig.gate(True)
    assert served[0].result().channel == "app"
    assert served[1].result().sequence
    assert [f.result().channel for f in flood] == ["web"] * 30
    wait_until(lambda: rig.held() == (0, {}), 10, "no call in flight, no key counted")


def test_each_keys_count_goes_back_to_nothing_once_its_calls_end_cancelled(rig):
    """A Decide, an Ingest, a batch of 3 and a stream of 3 events of the web key, held at the
    stuck shard, count 8 calls as its; cancelled while the shard is still stuck, they leave no
    count behind, in all or of the key; the key is served afterwards."""
    done = threading.Event()

    def events() -> Iterator[pb.Event]:
        yield from (event("web", n) for n in range(10, 13))
        done.wait(30)  # kept open: cancelled by its caller, not ended

    rig.gate(False)
    pending = [rig.stub.Decide.future(decide("web", 0), metadata=WEB, timeout=60),
               rig.stub.Ingest.future(event("web", 1), metadata=WEB, timeout=60),
               rig.stub.IngestBatch.future(pb.EventBatch(events=[
                   event("web", n) for n in range(2, 5)]), metadata=WEB, timeout=60)]
    stream = rig.stub.IngestStream(events(), metadata=WEB, timeout=60)
    try:
        wait_until(lambda: rig.held() == (8, {"web": 8}), 10, "8 calls of the web key held")
        for call in (*pending, stream):
            call.cancel()
        wait_until(lambda: rig.held() == (0, {}), 10, "no count left, the shard still stuck")
    finally:
        done.set()
    assert not rig.stub.IngestBatch(pb.EventBatch(), metadata=WEB, timeout=10).acks
    assert rig.held() == (0, {})  # an empty batch counts no call, nor its key
    rig.gate(True)
    assert rig.stub.Decide(decide("web", 20), metadata=WEB, timeout=10).channel == "web"
    assert list(rig.stub.IngestStream(iter([event("web", 21)]), metadata=WEB, timeout=10))
    assert rig.held() == (0, {})


def test_a_batch_that_would_take_its_key_past_its_share_is_refused_whole(monkeypatch):
    """Past the fair-share part of the limit, a batch counts all its events against its key's
    share (as against the limit): one of the key at 20 of its 15 is refused whole, saying so;
    one of a key at 9 of its 15 that fits is not; the counts go back to nothing."""
    monkeypatch.setattr(calls, "GATEWAY_INFLIGHT_LIMIT", LIMIT)
    monkeypatch.setattr(calls, "FAIR_SHARE_FLOOR", 4)

    async def main() -> None:
        gateway = Gateway("g", None, None)
        gateway.count("web", 20)
        gateway.count("app", 9)
        auth._caller.set(ApiKey("web", frozenset({"ingest"}), "web"))
        with pytest.raises(Busy, match="20 of them of key 'web', and 5 more would pass its "
                                       "fair share: past 30 in flight, a key may hold 15"):
            gateway.check_capacity(5)
        auth._caller.set(ApiKey("app", frozenset({"ingest"}), "app"))
        gateway.check_capacity(5)
        gateway.uncount("web", 20)
        gateway.uncount("app", 9)
        assert (gateway.inflight, gateway.inflight_of) == (0, {})
    asyncio.run(main())
