"""A DecisionService call the auth interceptor refuses (no key, or an unknown one) never reaches
the gateway's admission (gateway review, item F): the methods not counted from their start
(IngestBatch, IngestStream, WatchDecisions, GetRoutes) went through `Gateway.admit` (the
in-flight check, the load shedder's draw) before auth's refusal replaced them, so a stranger's
calls were counted and shed by the shedder (and woke it when parked). Over real gRPC on the
in-process backend."""
from __future__ import annotations

import grpc
import pytest

from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import serving

KEY = "k1-Zq8vT3mXw9LpR4sK7yN2bH6c"
KEYS = f"""keys:
  - {{key: "{KEY}", name: a, scopes: [decide, ingest, watch]}}
"""
DEADLINE_S = 10
CALLS = {
    "IngestBatch": lambda stub, md: stub.IngestBatch(pb.EventBatch(), metadata=md,
                                                     timeout=DEADLINE_S),
    "IngestStream": lambda stub, md: list(stub.IngestStream(iter(()), metadata=md,
                                                            timeout=DEADLINE_S)),
    "WatchDecisions": lambda stub, md: next(stub.WatchDecisions(
        pb.WatchRequest(channel="web"), metadata=md, timeout=DEADLINE_S)),
    "GetRoutes": lambda stub, md: stub.GetRoutes(pb.RoutesRequest(), metadata=md,
                                                 timeout=DEADLINE_S),
    "Decide": lambda stub, md: stub.Decide(pb.DecideRequest(channel="web"), metadata=md,
                                           timeout=DEADLINE_S),
}


@pytest.fixture(scope="module")
def served():
    with serving(KEYS) as (gateway, channel):
        yield gateway.gateway, decision_pb2_grpc.DecisionServiceStub(channel)


@pytest.fixture
def admitted(served, monkeypatch):
    """The calls `Gateway.admit` is asked about from now on, in a list (each a bare one)."""
    gateway, _ = served
    asked: list[None] = []
    admit = gateway.admit

    def counting():
        asked.append(None)
        return admit()
    monkeypatch.setattr(gateway, "admit", counting)
    return asked


@pytest.mark.parametrize("metadata", [[], [("x-api-key", "not-a-key-0123456789abcdef")]])
@pytest.mark.parametrize("method", CALLS)
def test_a_call_refused_for_its_key_is_never_admitted(served, admitted, method, metadata):
    _, stub = served
    with pytest.raises(grpc.RpcError) as refused:
        CALLS[method](stub, metadata)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert admitted == []


def test_a_call_with_its_key_is(served, admitted):
    _, stub = served
    assert stub.GetRoutes(pb.RoutesRequest(), metadata=[("x-api-key", KEY)],
                          timeout=DEADLINE_S).partitions == 16
    assert len(admitted) == 1
