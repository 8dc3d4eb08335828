"""A shard's endpoint tells a client that routed a call by a stale map (the customer is another
shard's) the map's version in a trailer, for every id a call may name: an alias's anonymous id
`~type:value` takes 290 characters, not a customer id's 256 (review: those got no hint)."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from kairos.cluster.identity import MAX_ANONYMOUS_ID
from kairos.cluster.routed import ROUTES_VERSION_KEY
from kairos.cluster.shard.api import RouteHint
from kairos.v1 import decision_pb2 as pb

pytestmark = pytest.mark.unit


class Client:
    version = 7

    def owner(self, key: str) -> str:
        return "s1"  # every customer is another shard's


class Context:
    def __init__(self) -> None:
        self.trailers = ()

    def set_trailing_metadata(self, trailers) -> None:
        self.trailers = trailers


@pytest.mark.parametrize("customer", ["ana", "~device:" + "d" * (MAX_ANONYMOUS_ID - 8)])
def test_a_call_for_another_shard_s_customer_carries_the_routes_version(customer):
    async def answer(request, context):
        return pb.Decision()

    handler = grpc.unary_unary_rpc_method_handler(answer)
    hinting = RouteHint("s0", Client())._hinting(handler)
    context = Context()
    asyncio.run(hinting.unary_unary(pb.DecideRequest(customer_id=customer), context))
    assert context.trailers == ((ROUTES_VERSION_KEY, "7"),)
