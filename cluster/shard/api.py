"""The gRPC contract served by a shard's own process: one hop fewer for clients that route.

Through a gateway every call crosses two processes: the gateway parses and checks it, then
sends it over the data plane to the shard that owns the customer, and the answer comes back the
same way. A client that knows the partition map (`partition_of` over the map's owners, what the
gateway's own KairosClient does) can instead call the owner's process, which serves kairos.v1's
DecisionService itself: the same Gateway code (auth, parsing, bounds, fallbacks; shedding on a
late loop only, since that loop is busy with the gateways' rounds too) on the shard's event
loop, whose requests for its own partitions go to its ShardHost in process, with no data plane
and no second process to wake. A call that reaches a shard that does not own the customer (a
stale map, a client that does not route) is still served: it is sent on over the data plane, as
a gateway would, and its answer (an error too) carries the map's version in the trailer
ROUTES_VERSION_KEY (`RouteHint`), so that the client asks for the routes again rather than pay
the hop until its next refresh: the redirect of Cassandra's token-aware drivers and Kafka's
producers, without failing the call. Watches registered here are pushed to this shard's actor
(`ShardActor.deliver`), whose name is the sink's.

Health answers SERVING only while the shard has recovered and owns partitions (checked every
METRICS_FLUSH_S by the actor), so a shard recovering after a restart, or scaled away and
waiting to stop, is out of load balancers before its calls would fail.
"""
from __future__ import annotations

from typing import Any

import grpc

from kairos.core.request import MAX_PROFILE_ID_LENGTH

from kairos.cluster.protocol import Reply, Request
from kairos.cluster.routed import ROUTED, ROUTES_VERSION_KEY
from kairos.cluster.shard.host import ShardHost
from kairos.cluster.transport.client import KairosClient
from kairos.cluster.transport.ray_backend import RayBackend

HINTED = frozenset(f"/kairos.v1.DecisionService/{m}" for m in ROUTED)  # the calls clients route


class OwnShardFirst:
    """A Backend (transport/backend.py) that sends batches for `own` to its ShardHost in
    process and everything else through `backend`."""

    def __init__(self, own: str, host: ShardHost, backend: RayBackend):
        self.own = own
        self.host = host
        self.backend = backend
        self.in_process = 0  # batches that never left the process

    async def send(self, name: str, session: str, seq: int, requests: list[Request],
                   routed: list[int]) -> list[Reply]:
        if name != self.own:
            return await self.backend.send(name, session, seq, requests, routed)
        self.in_process += 1
        return await self.host.handle(session, seq, requests, routed)

    async def close(self) -> None:
        """Nothing of its own to close: the shard's RayBackend is the shard's (its pushes and
        model syncs go on through it)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)  # the control plane: the controller, the learner


class RouteHint(grpc.aio.ServerInterceptor):
    """Tells a client that routed a call here by a stale map: a call by customer id for a
    customer `own` does not own answers with the map's version in a trailer. Each method's
    handler is wrapped once (as parsing.py does: a wrapper per call costs CPU)."""

    def __init__(self, own: str, client: KairosClient):
        self.own = own
        self.client = client
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method not in HINTED:
            return handler
        known = self._wrapped.get(details.method)
        if known is None or known[0] is not handler:
            known = self._wrapped[details.method] = (handler, self._hinting(handler))
        return known[1]

    def _hinting(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        async def unary_unary(request, context):
            # before the handler, so that an error answer carries it too (grpc keeps a
            # trailer set before an abort); an id past its bounds is the handler's to refuse
            customer = request.customer_id
            if 0 < len(customer) <= MAX_PROFILE_ID_LENGTH and \
                    self.client.owner(customer) != self.own:
                context.set_trailing_metadata(((ROUTES_VERSION_KEY, str(self.client.version)),))
            return await handler.unary_unary(request, context)
        return grpc.unary_unary_rpc_method_handler(
            unary_unary, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
