"""An in-process Backend: shards, learner and controller as plain objects, no Ray.

Calls yield to the event loop before they run, so requests, handoffs and map updates
interleave as they would across processes, while each shard still takes one sender's
batches in order (the real ShardActor's sequencer guarantees that).
"""
from __future__ import annotations

import asyncio
import random
from typing import Any

from kairos.cluster.control.controller import Controller
from kairos.cluster.control.learner import Learner
from kairos.cluster.transport.ray_backend import Unavailable
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.store import MemoryStore
from kairos.core.catalog import load_catalog
from kairos.core.compiler import compile_catalog


class LocalBackend:
    def __init__(self, node_names=("node-a", "node-b", "node-c"), seed: int = 0):
        self.node_names = list(node_names)
        self.shards: dict[str, Shard | None] = {}
        self.n_partitions: dict[str, int] = {}
        self.learner: Learner | None = None
        self.controller: Controller | None = None
        self.rng = random.Random(seed)
        self.created_on: dict[str, str | None] = {}
        self.fail_next_adopt = False
        self.store = MemoryStore(shared=True)  # as a directory or a Redis: every shard sees it
        self._turns: dict[tuple[str, str], int] = {}

    def nodes(self) -> list[str]:
        return list(self.node_names)

    async def create_shard(self, name: str, node: str | None, n_partitions: int, seed: int,
                           store_url: str, journal_policy: str) -> None:
        self.shards[name] = None
        self.n_partitions[name] = n_partitions
        self.created_on[name] = node

    async def kill_shard(self, name: str) -> None:
        self.shards.pop(name, None)

    async def shard_call(self, name: str, method: str, *args: Any) -> Any:
        await self._hop()
        if name not in self.shards:
            raise Unavailable(name)
        if method == "start":
            catalog_text, partitions, watches, version, sources = args
            shard = Shard(name, compile_catalog(load_catalog(catalog_text)), partitions,
                          self.n_partitions[name], granted=version, store=self.store)
            for sink, channel, placement in watches:
                shard.watch_channel(sink, channel, placement)
            shard.recover(sources)
            self.shards[name] = shard
            return f"{name}-incarnation"
        if method == "health":
            return {"incarnation": f"{name}-incarnation", **self.shards[name].stats()}
        if method == "adopt" and self.fail_next_adopt:
            self.fail_next_adopt = False
            raise Unavailable(f"{name} failed while adopting")
        return getattr(self.shards[name], method)(*args)

    async def send(self, name: str, session: str, seq: int, requests: list,
                   routed: list[int]) -> list:
        await self._hop()
        while self._turns.get((name, session), 0) != seq:  # one sender's batches in order
            await asyncio.sleep(0)
        self._turns[(name, session)] = seq + 1
        shard = self.shards.get(name)
        if shard is None:
            raise Unavailable(name)
        results, _ = shard.process(requests, routed)
        return results

    async def learner_call(self, method: str, *args: Any) -> Any:
        await self._hop()
        return getattr(self.learner, method)(*args)

    async def controller_call(self, method: str, *args: Any) -> Any:
        return await getattr(self.controller, method)(*args)

    async def close(self) -> None:
        """Nothing to close: every call is in process."""

    async def _hop(self) -> None:
        for _ in range(self.rng.randrange(3)):
            await asyncio.sleep(0)
