"""The gateway as a Ray actor, one per node: kairos.v1 over gRPC, and the sink shards push
watched decisions to.

All gateways are equal: each routes any customer through its own KairosClient, which batches
per shard and keeps each customer's order.
"""
from __future__ import annotations

import asyncio
import logging

import grpc
import ray

from kairos.core.decision import Decision

from kairos.cluster import pauses
from kairos.cluster.gateway.auth import Auth
from kairos.cluster.gateway.calls import Gateway
from kairos.cluster.gateway.server import Tls, serve
from kairos.cluster.settings import PAUSES_CHECK_S
from kairos.cluster.transport.client import KairosClient
from kairos.cluster.transport.ray_backend import RayBackend

log = logging.getLogger("kairos.gateway")



@ray.remote(num_cpus=0, max_restarts=-1)
class GatewayActor:
    """A gateway on one node, named kairos-gateway-<n>; shards push watch changes to it."""

    def __init__(self, name: str):
        self.name = name
        self.gateway: Gateway | None = None
        self.server: grpc.aio.Server | None = None
        self.checker = None
        self._pauses: asyncio.Future | None = None

    async def start(self, host: str, port: int, keys_text: str | None = None,
                    tls: Tls | None = None) -> int:
        backend = RayBackend()
        client = await KairosClient(backend).connect()
        self.gateway = Gateway(self.name, client, backend)
        await self.gateway.refresh_catalog()
        self.server, self.checker, bound = await serve(self.gateway, Auth.load(keys_text),
                                                       host, port, tls)
        pauses.settle()
        self._pauses = asyncio.ensure_future(self._keep_pauses_short())
        log.info("%s serving kairos.v1 on %s:%d", self.name, host, bound)
        return bound

    @staticmethod
    async def _keep_pauses_short() -> None:
        while True:
            await asyncio.sleep(PAUSES_CHECK_S)
            pauses.keep_short()

    async def deliver(self, decisions: list[Decision]) -> None:
        if self.gateway is not None:
            self.gateway.watches.deliver(decisions)

    async def stop(self, grace_s: float = 2.0) -> None:
        """Graceful: health says NOT_SERVING, calls in flight finish, then the server stops."""
        if self.server is not None:
            await self.checker.enter_graceful_shutdown()
            await self.server.stop(grace_s)
            await self.gateway.client.close()
            self._pauses.cancel()
