"""A WatchDecisions stream's response headers arrive once its watch is in place, so a caller
knows from when on every change reaches it (real gRPC on 127.0.0.1, in-process backend)."""
from __future__ import annotations

from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import serving


def test_the_headers_of_a_watch_stream_mean_its_watch_is_in_place():
    with serving() as (gateway, channel):
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        stream = stub.WatchDecisions(pb.WatchRequest(customer_id="w", channel="web"), timeout=30)
        stream.initial_metadata()
        shards = [s for s in gateway.client.backend.shards.values() if s is not None]
        watched = {c for s in shards for c in s.watches.by_customer}
        stream.cancel()
    assert watched == {"w"}
