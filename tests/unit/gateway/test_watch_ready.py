"""A WatchDecisions stream's response headers arrive once its watch is in place, so a caller
knows from when on every change reaches it; a gateway holds a bounded number of streams (real
gRPC on 127.0.0.1, in-process backend)."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from kairos.cluster.gateway import streams as streams_module
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import serving
from tests.support.waiting import wait_until
from tests.unit.gateway.test_gateway_pressure import GatedBackend


def test_the_headers_of_a_watch_stream_mean_its_watch_is_in_place():
    with serving() as (gateway, channel):
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        stream = stub.WatchDecisions(pb.WatchRequest(customer_id="w", channel="web"), timeout=30)
        stream.initial_metadata()
        shards = [s for s in gateway.client.backend.shards.values() if s is not None]
        watched = {c for s in shards for c in s.watches.by_customer}
        stream.cancel()
    assert watched == {"w"}


def test_a_second_stream_on_a_watch_is_ready_only_once_the_watch_is_in_place():
    """Joining a watch whose registration was still on its way, a stream was told it was
    ready at once: before the shard had the watch, and for good if the registration failed."""
    backend = GatedBackend()
    with serving(backend=backend) as (gateway, channel), ThreadPoolExecutor(2) as pool:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        gateway.run(hold(backend))
        streams = [stub.WatchDecisions(pb.WatchRequest(customer_id="w", channel="web"),
                                       timeout=30) for _ in range(2)]
        ready = [pool.submit(s.initial_metadata) for s in streams]
        time.sleep(0.5)
        assert not any(r.done() for r in ready)  # the shard has not taken the watch yet
        gateway.run(release(backend))
        for r in ready:
            r.result(timeout=10)
        shards = [s for s in backend.shards.values() if s is not None]
        assert {c for s in shards for c in s.watches.by_customer} == {"w"}
        for s in streams:
            s.cancel()


def test_past_its_most_watch_streams_a_gateway_refuses_new_ones(monkeypatch):
    monkeypatch.setattr(streams_module, "WATCH_STREAMS", 2)
    with serving() as (gateway, channel):
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        held = [stub.WatchDecisions(pb.WatchRequest(customer_id=c, channel="web"), timeout=30)
                for c in ("a", "b")]
        for s in held:
            s.initial_metadata()
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.WatchDecisions(pb.WatchRequest(customer_id="c", channel="web"),
                                     timeout=30))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "KAIROS_WATCH_STREAMS" in refused.value.details()
        held[0].cancel()
        wait_until(lambda: gateway.gateway.watches.open == 1, 10, "a stream to leave")
        again = stub.WatchDecisions(pb.WatchRequest(customer_id="c", channel="web"),
                                    timeout=30)
        again.initial_metadata()
        for s in (held[1], again):
            s.cancel()


async def hold(backend) -> None:
    backend.gate.clear()


async def release(backend) -> None:
    backend.gate.set()
