"""The shards' own kairos.v1 endpoints (shard/api.py), as the controller keeps them for
GetRoutes: where the gateways' spec asks for them (`kairos up --shard-endpoints`), every shard
the controller starts, takes up or replaces serves one, at the address clients reach.

They are not part of the partition map: an endpoint can change (a restart on another port)
while no partition moves, and a map version is a promise the shards keep.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging

from kairos.cluster.control.nodes import GatewaySpec
from kairos.cluster.transport.backend import Backend

log = logging.getLogger("kairos.controller")


class ShardEndpoints:
    def __init__(self, backend: Backend):
        self.backend = backend
        self.by_shard: dict[str, str] = {}  # shard -> host:port

    async def serve(self, name: str, spec: GatewaySpec | None, node: str | None) -> None:
        """Have shard `name` (on `node`) serve its endpoint, if `spec` asks for one, and note
        where. One that cannot is still served through the gateways."""
        if spec is None or not spec.shard_endpoints:
            return
        try:
            port = await self.backend.shard(name).serve_api(**spec.serving())
        except Exception:
            log.exception("%s could not serve its own endpoint; gateways serve it", name)
            self.forget(name)
            return
        reached = endpoint(spec.host, self.backend.node_info().get(node, {}).get("address"),
                           port)
        if reached:
            self.by_shard[name] = reached
        else:
            self.forget(name)

    def forget(self, name: str) -> None:
        self.by_shard.pop(name, None)


def endpoint(host: str, node_address: str | None, port: int) -> str:
    """host:port as clients reach it: a wildcard bind ("" too) is reached at the node's
    address ("" while that is not known)."""
    with contextlib.suppress(ValueError):
        if not host or ipaddress.ip_address(host).is_unspecified:
            if not node_address:
                return ""
            host = node_address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
