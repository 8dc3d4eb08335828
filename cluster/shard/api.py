"""The gRPC contract served by a shard's own process: one hop fewer for clients that route.

Through a gateway every call crosses two processes: the gateway parses and checks it, then
sends it over the data plane to the shard that owns the customer, and the answer comes back
the same way. A client that knows the partition map (`partition_of` over the map's owners,
what the gateway's own KairosClient does) can instead call the owner's process, which serves
kairos.v1's DecisionService itself: the same Gateway code (auth, parsing, bounds, fallbacks;
shedding on a late loop only, since that loop is busy with the gateways' rounds too) on the
shard's event loop, whose requests for its own partitions go to its ShardHost in process,
with no data plane and no second process to wake. A call that reaches a shard that
does not own the customer (a stale map, a client that does not route) is still served: it is
sent on over the data plane, as a gateway would. Watches registered here are pushed to this
shard's actor (`ShardActor.deliver`), whose name is the sink's.
"""
from __future__ import annotations

from typing import Any

from kairos.cluster.protocol import Reply, Request
from kairos.cluster.shard.host import ShardHost
from kairos.cluster.transport.ray_backend import RayBackend


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
