"""WatchDecisions streams end with NOT_FOUND once ForgetCustomer through their gateway forgot
their customer (by id or by alias, retried after a cut too), and one API key holds at most its
share of a gateway's streams (real gRPC on 127.0.0.1, in-process backend)."""
from __future__ import annotations

import grpc
import pytest

from kairos.cluster.gateway import streams as streams_module
from kairos.cluster.identity import alias_key
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import serving

KEYS = ("keys:\n  - key: 'watcher-0123456789abcdef'\n    scopes: [watch]\n"
        "  - key: 'console-0123456789abcdef'\n    scopes: [watch]\n")


def _watch(stub, **customer) -> grpc.Future:
    stream = stub.WatchDecisions(pb.WatchRequest(channel="web", **customer), timeout=30)
    stream.initial_metadata()  # in place
    return stream


@pytest.mark.parametrize("forgotten", [{"customer_id": "w"},
                                       {"alias": pb.Alias(type="cookie", value="x")}],
                         ids=["by id", "by alias"])
def test_a_forget_through_the_gateway_ends_its_customers_streams(forgotten):
    with serving() as (gateway, channel):
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        stub.Ingest(pb.Event(customer_id="w", type="app_open", event_id="e1", channel="web"),
                    timeout=30)
        if "alias" in forgotten:
            stub.LinkIdentity(pb.LinkRequest(alias=forgotten["alias"], customer_id="w"),
                              timeout=30)
        mine = _watch(stub, **forgotten)
        other = _watch(stub, customer_id="v")
        stub.ForgetCustomer(pb.ForgetRequest(**forgotten), timeout=30)
        with pytest.raises(grpc.RpcError) as ended:
            next(mine)
        assert ended.value.code() == grpc.StatusCode.NOT_FOUND
        assert "forgotten" in ended.value.details()
        assert other.running()  # another customer's stream goes on
        other.cancel()


def test_a_forget_by_alias_retried_after_a_cut_ends_the_aliass_streams():
    """rev41 d-streams finding 3 (q4): the first try was cut after its Retire, so a plain
    Resolve of the alias named its anonymous id by the retry, whose end left the streams the
    alias had opened on the customer's id running."""
    with serving() as (gateway, channel):
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        stub.Ingest(pb.Event(customer_id="w", type="app_open", event_id="e1", channel="web"),
                    timeout=30)
        alias = pb.Alias(type="cookie", value="x")
        stub.LinkIdentity(pb.LinkRequest(alias=alias, customer_id="w"), timeout=30)
        mine = _watch(stub, alias=alias)

        async def cut_after_retire() -> None:  # Forget, Retire; then the client died
            steps = gateway.client.forget_steps("w", alias_key("cookie", "x"))
            for _ in range(2):
                await steps.__anext__()
            await steps.aclose()
        gateway.run(cut_after_retire())
        assert gateway.run(gateway.client.resolve("cookie", "x")) == "~cookie:x"
        assert stub.ForgetCustomer(pb.ForgetRequest(alias=alias), timeout=30).existed
        with pytest.raises(grpc.RpcError) as ended:
            next(mine)
        assert ended.value.code() == grpc.StatusCode.NOT_FOUND


def test_one_key_holds_at_most_its_share_of_the_gateways_streams(monkeypatch):
    monkeypatch.setattr(streams_module, "WATCH_STREAMS_PER_KEY", 2)
    monkeypatch.setattr(streams_module, "WATCH_STREAMS_PER_HOST", 3)
    with serving(KEYS) as (_, channel):
        stub = decision_pb2_grpc.DecisionServiceStub(channel)

        def watch(key: str):
            stream = stub.WatchDecisions(pb.WatchRequest(channel="web"), timeout=30,
                                         metadata=[("x-api-key", key)])
            stream.initial_metadata()
            return stream

        held = [watch("watcher-0123456789abcdef") for _ in range(2)]
        with pytest.raises(grpc.RpcError) as refused:
            next(watch("watcher-0123456789abcdef"))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "key 'None'" not in refused.value.details()
        assert "WATCH_STREAMS_PER_KEY" in refused.value.details()
        held.append(watch("console-0123456789abcdef"))  # another key still gets one
        with pytest.raises(grpc.RpcError) as refused:  # ... but not past the host's share
            next(watch("console-0123456789abcdef"))
        assert "WATCH_STREAMS_PER_HOST" in refused.value.details()
        for stream in held:
            stream.cancel()
