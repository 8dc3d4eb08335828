"""With the customer's shard down, each RPC's UNAVAILABLE says what a retry of it does: the
keyed ones (Ingest, Respond) to retry with the same idempotency key; GetProfile and a Watch by
alias (reads) just to retry; LinkIdentity and ForgetCustomer (sagas of idempotent steps) that
a retry finishes them. None that has no key is told to retry with one (review rev42 gateway
finding 5)."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from kairos.cluster.gateway import calls
from kairos.cluster.transport.backend import Unavailable
from kairos.cluster.transport.client import ShardUnavailable

from tests.support.inprocess_gateway import serving
from tests.support.local_backend import LocalBackend


class Down(LocalBackend):
    """A backend whose shards stop answering once `down` is set."""

    down = False

    async def send(self, name, session, seq, requests, routed):
        if self.down:
            raise Unavailable(f"{name} is down")
        return await super().send(name, session, seq, requests, routed)


ALIAS = pb.Alias(type="cookie", value="c-1")
CASES = [
    ("Ingest", pb.Event(customer_id="u-1", type="app_open", channel="web",
                        idempotency_key="k-1"), calls.KEYED),
    ("GetProfile", pb.ProfileRequest(customer_id="u-1"), calls.READ),
    ("WatchDecisions", pb.WatchRequest(alias=ALIAS, channel="web"), calls.READ),
    ("LinkIdentity", pb.LinkRequest(alias=ALIAS, customer_id="u-1"), calls.LINK),
    ("ForgetCustomer", pb.ForgetRequest(customer_id="u-1"), calls.FORGET),
    ("ForgetCustomer", pb.ForgetRequest(alias=ALIAS), calls.FORGET),
]


@pytest.fixture(scope="module")
def down():
    backend = Down()
    with serving(backend=backend) as (_, channel):
        DecisionServiceStub(channel).Ingest(pb.Event(customer_id="u-1", type="app_open",
                                                     channel="web"), timeout=10)
        backend.down = True
        yield channel


@pytest.mark.parametrize("rpc, request_, retry", CASES,
                         ids=[f"{rpc}-{n}" for n, (rpc, _, _) in enumerate(CASES)])
def test_each_rpc_is_told_what_a_retry_of_it_does(down, rpc, request_, retry):
    with pytest.raises(grpc.RpcError) as failed:
        answer = getattr(DecisionServiceStub(down), rpc)(request_, timeout=10)
        if rpc == "WatchDecisions":
            next(answer)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failed.value.details() == f"{calls.SILENT}; {retry}"
    assert (retry == calls.KEYED) == ("idempotency key" in failed.value.details())


class _Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise grpc.aio.AbortError(f"{code.name}: {details}")


@pytest.mark.parametrize("retry", [calls.KEYED, calls.READ, calls.LINK, calls.FORGET])
def test_a_shard_that_failed_the_request_is_told_with_the_rpcs_retry(retry):
    with pytest.raises(grpc.aio.AbortError) as aborted:
        asyncio.run(calls.abort(_Context(), ShardUnavailable("kairos-shard-0003: journal"),
                                retry))
    assert str(aborted.value) == f"UNAVAILABLE: {calls.FAILED}; {retry}"
