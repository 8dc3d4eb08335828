"""A LocalBackend whose shards answer the controller as ShardActors do: health answers before
`start` (started: False, with the node the shard runs on), a process Ray restarts comes back
not started under a new incarnation, and a chosen call fails (`fail`) or restarts the shard's
process (`crash`) once."""
from __future__ import annotations

import asyncio
from typing import Any

from kairos.cluster.control.controller import Controller
from kairos.cluster.control.learner import Learner
from kairos.cluster.control.partitions import partition_of
from kairos.cluster.transport.backend import Unavailable
from kairos.cluster.transport.client import KairosClient
from kairos.core.compiler import default_compiled

from tests.support.local_backend import LocalBackend, LocalLearner, LocalShard

T0 = 1_795_629_600.0
LEARNER = "kairos-learner"


class Actors(LocalBackend):
    def __init__(self, nodes=("node-a", "node-b", "node-c")):
        super().__init__(nodes)
        self.local_learner = Learner(default_compiled())
        self.restarts: dict[str, int] = {}  # shard -> times Ray restarted its process
        self.fail: dict[tuple[str, str], int] = {}  # (shard, call) -> failures to inject
        self.crash: set[tuple[str, str]] = set()  # (shard, call): its process dies in it

    def shard(self, name: str) -> "ActorShard":
        return ActorShard(self, name)

    def learner(self) -> "ActorLearner":
        return ActorLearner(self)

    async def create_shard(self, name: str, node: str | None, *args: Any) -> None:
        self.failing(name, "create")
        await super().create_shard(name, node, *args)

    def failing(self, name: str, call: str) -> None:
        """Raise as a call Ray gave up on, if one was asked for."""
        if self.fail.get((name, call), 0):
            self.fail[(name, call)] -= 1
            raise Unavailable(f"{name}: no answer within 600 s ({call})")
        if (name, call) in self.crash:
            self.crash.discard((name, call))
            self.restart(name)
            raise Unavailable(f"{name}: ActorDiedError ({call})")

    def restart(self, name: str) -> None:
        """Ray restarts the shard's process: it answers again, not started."""
        self.shards[name] = None
        self.restarts[name] = self.restarts.get(name, 0) + 1

    def node_of(self, name: str) -> str:
        return self.created_on[name]


class ActorShard(LocalShard):
    def __init__(self, backend: Actors, name: str):
        super().__init__(backend, name)
        self.incarnation = f"{name}-{backend.restarts.get(name, 0)}"

    async def health(self) -> dict[str, Any]:
        await self._backend.hop()
        if self.name not in self._backend.shards:
            raise Unavailable(f"{self.name}: the actor is dead")
        shard = self._backend.shards[self.name]
        return {"incarnation": self.incarnation, "started": shard is not None,
                "node": self._backend.created_on.get(self.name),
                **(shard.stats() if shard is not None else {})}

    async def start(self, *args: Any, **kwargs: Any) -> str:
        self._backend.failing(self.name, "start")
        return await super().start(*args, **kwargs)

    async def adopt(self, payload: bytes, version: int) -> int:
        self._backend.failing(self.name, "adopt")
        return await super().adopt(payload, version)

    async def release(self, partitions: list[int], version: int) -> None:
        self._backend.failing(self.name, "release")
        await super().release(partitions, version)

    async def watch_channel(self, *change: Any) -> None:
        self._backend.failing(self.name, "watch_channel")
        await super().watch_channel(*change)


class ActorLearner(LocalLearner):
    async def switch(self, catalog_text: str) -> int:
        self._backend.failing(LEARNER, "switch")
        return await super().switch(catalog_text)


async def controller_on(backend: Actors, store: str, n_shards: int = 3,
                        **options: Any) -> Controller:
    """A controller started on `store`: a new cluster, or the one saved there taken up."""
    controller = backend.local_controller = Controller(backend, n_partitions=64,
                                                       store_url=store, **options)
    await controller.start(n_shards)
    return controller


def customers_of(controller: Controller, shard: str, n: int = 20) -> list[str]:
    return [c for c in (f"c{i}" for i in range(1000))
            if controller.map.owners[partition_of(c, controller.n_partitions)] == shard][:n]


async def ingest(backend: Actors, customers: list[str], wave: int) -> list[int]:
    """One event for each customer; the sequence numbers their shards acknowledged."""
    client = await KairosClient(backend).connect()
    try:
        return list(await asyncio.gather(
            *(client.ingest(c, "page_view", T0 + wave, {"category": "home"})
              for c in customers)))
    finally:
        await client.close()
