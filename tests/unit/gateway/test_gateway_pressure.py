"""Cancellation and back-pressure at the gateway, over real gRPC on 127.0.0.1 and the
in-process backend, with a shard held stuck (a gate) so that the cancel, or the call past the
limit, lands while calls wait on it.

Cancelled mid-call, Decide, Ingest, IngestStream and WatchDecisions give back their in-flight
slots (and a watch its registration) while the shard is still stuck, and the gateway serves
afterwards (IngestBatch: test_gateway_batch.py). At GATEWAY_INFLIGHT_LIMIT, DecisionService
calls are refused with RESOURCE_EXHAUSTED at once, while health and the admin service (an
operator's status and scaling) still answer, and once the stuck calls finish, calls are served
again."""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kairos.cluster.gateway import calls
from kairos.cluster.gateway.auth import Auth
from kairos.v1 import admin_pb2
from kairos.v1.admin_pb2_grpc import AdminServiceStub
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import InProcessGateway
from tests.support.local_backend import LocalBackend
from tests.support.waiting import wait_until

LIMIT = 2
AT_ONCE_S = 1.0  # a refusal "at once": well inside the refused call's 10 s deadline


class GatedBackend(LocalBackend):
    """A shard that answers only while its gate is open (open to begin with)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, *args, **kwargs):
        await self.gate.wait()
        return await super().send(*args, **kwargs)


class Rig:
    def __init__(self) -> None:
        self.backend = GatedBackend()
        self.gateway = InProcessGateway(Auth.load(None), self.backend)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.gateway.port}")
        stub = DecisionServiceStub(self.channel)
        self.decide, self.ingest, self.watch = stub.Decide, stub.Ingest, stub.WatchDecisions
        self.ingest_batch, self.ingest_stream = stub.IngestBatch, stub.IngestStream
        self.get_catalog = AdminServiceStub(self.channel).GetCatalog
        self.health = health_pb2_grpc.HealthStub(self.channel)

    @property
    def inflight(self) -> int:
        return self.gateway.gateway.inflight

    def hold(self) -> None:
        """The shard stops answering (once this returns: it waits on the gateway's loop)."""
        self.gateway.run(self._gate(False))

    def release(self) -> None:
        self.gateway.run(self._gate(True))

    async def _gate(self, open_: bool) -> None:
        (self.backend.gate.set if open_ else self.backend.gate.clear)()

    def wait_inflight(self, n: int, what: str) -> None:
        wait_until(lambda: self.inflight == n, 10, f"{n} calls in flight {what}")

    def serves(self, customer_id: str) -> None:
        assert self.decide(pb.DecideRequest(customer_id=customer_id, channel="web"),
                           timeout=10).channel == "web"

    def close(self) -> None:
        self.release()
        self.channel.close()
        self.gateway.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = Rig()
    yield made
    made.close()


def event(customer_id: str) -> pb.Event:
    return pb.Event(customer_id=customer_id, type="app_open", channel="web")


def test_a_cancelled_decide_gives_back_its_slot(rig):
    rig.hold()
    call = rig.decide.future(pb.DecideRequest(customer_id="d", channel="web"), timeout=30)
    rig.wait_inflight(1, "(the decide waits on the stuck shard)")
    assert call.cancel()
    rig.wait_inflight(0, "after the cancel, the shard still stuck")
    rig.release()
    rig.serves("after-decide-cancel")


def test_a_cancelled_ingest_gives_back_its_slot(rig):
    rig.hold()
    call = rig.ingest.future(event("i"), timeout=30)
    rig.wait_inflight(1, "(the ingest waits on the stuck shard)")
    assert call.cancel()
    rig.wait_inflight(0, "after the cancel, the shard still stuck")
    rig.release()
    rig.serves("after-ingest-cancel")


def test_a_stream_cancelled_while_the_shard_is_slow_gives_back_its_slots(rig):
    sent = 5
    done = threading.Event()

    def events():
        for n in range(sent):
            yield event(f"s{n}")
        done.wait(30)  # the stream stays open: the client cancels it, not its end

    rig.hold()
    call = rig.ingest_stream(events(), timeout=30)
    rig.wait_inflight(sent, "(every event routed, none acked)")
    call.cancel()
    done.set()
    rig.wait_inflight(0, "after the cancel, the shard still stuck")
    rig.release()
    rig.serves("after-stream-cancel")
    assert len(list(rig.ingest_stream(iter([event("again")]), timeout=10))) == 1


def test_a_cancelled_watch_unregisters_and_the_gateway_serves(rig):
    watches = rig.gateway.gateway.watches
    for n in range(2):
        call = rig.watch(pb.WatchRequest(customer_id="w", channel="web"), timeout=30)
        wait_until(lambda: watches.open, 10, f"watch {n} registered")
        call.cancel()
        wait_until(lambda: not watches.open, 10, f"watch {n} gone after its cancel")
        assert rig.inflight == 0
    rig.serves("after-watch-cancel")


def refused_at_once(call, request) -> str:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=10)
    took = time.monotonic() - started
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    assert took < AT_ONCE_S, f"refused after {took:.2f} s, not at once"
    return err.value.details()


def test_past_the_limit_calls_are_refused_at_once_and_served_once_it_drains(rig, monkeypatch):
    monkeypatch.setattr(calls, "GATEWAY_INFLIGHT_LIMIT", LIMIT)
    rig.hold()
    stuck = [rig.decide.future(pb.DecideRequest(customer_id=f"slow{n}", channel="web"),
                               timeout=30) for n in range(LIMIT)]
    rig.wait_inflight(LIMIT, "(the gateway at its limit)")

    assert "in flight" in refused_at_once(rig.decide,
                                          pb.DecideRequest(customer_id="x", channel="web"))
    refused_at_once(rig.ingest, event("x"))
    refused_at_once(rig.ingest_batch, pb.EventBatch(events=[event("x")]))
    assert rig.get_catalog(admin_pb2.GetCatalogRequest(), timeout=10).version  # operators
    with pytest.raises(grpc.RpcError) as err:
        list(rig.ingest_stream(iter([event("x")]), timeout=10))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rig.health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING  # a probe must not read overload as death
    assert rig.inflight == LIMIT  # the refusals took no slot

    rig.release()
    assert [f.result(timeout=10).channel for f in stuck] == ["web"] * LIMIT
    rig.wait_inflight(0, "once the stuck calls finished")
    rig.serves("after-drain")
    assert rig.ingest(event("after-drain"), timeout=10).sequence
    assert rig.get_catalog(admin_pb2.GetCatalogRequest(), timeout=10).version


def test_a_batch_that_would_pass_the_limit_is_refused_whole_before_any_event_is_routed(
        rig, monkeypatch):
    """Each event of a batch is a call in flight: a batch was checked as one call, so
    concurrent batches took the gateway far past its limit."""
    monkeypatch.setattr(calls, "GATEWAY_INFLIGHT_LIMIT", LIMIT)
    over = pb.EventBatch(events=[event(f"b{n}") for n in range(LIMIT + 1)])
    assert "more would pass its limit" in refused_at_once(rig.ingest_batch, over)
    assert rig.inflight == 0  # nothing of it was routed
    fits = pb.EventBatch(events=[event(f"b{n}") for n in range(LIMIT)])
    assert len(rig.ingest_batch(fits, timeout=10).acks) == LIMIT
