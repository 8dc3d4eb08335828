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
from kairos.cluster.evidence.records import DecisionPage, PageOutcomes
from kairos.cluster.protocol import Reply, Request
from kairos.cluster.settings import CONTROL_CALL_S, LONG_POLL_S
from kairos.cluster.shard import decisionlog
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.transport.backend import (ChannelWatch, ControllerControl, Published,
                                              Unavailable)
from kairos.core.compiler import compiled_from_text, default_compiled
from kairos.core.decision import Decision
from kairos.core.models import ModelDelta


class LocalBackend:
    def __init__(self, node_names=("node-a", "node-b", "node-c"), seed: int = 0):
        self.node_names = list(node_names)
        self.shards: dict[str, Shard | None] = {}  # None: created, not started yet
        self.n_partitions: dict[str, int] = {}
        self.local_learner: Learner | None = None
        self.learner_stood_down = False  # LearnerControl.stand_down was called
        self.local_controller: Controller | None = None
        self.delivered: dict[str, list[Decision]] = {}  # what sinks were pushed
        self.rng = random.Random(seed)
        self.created_on: dict[str, str | None] = {}
        self.fail_next_adopt = False
        self.store = MemoryStore(shared=True)  # as a directory or a Redis: every shard sees it
        self.cpus: dict[str, float] = {}  # a node's CPUs (default 1)
        self.gateways: dict[str, dict[str, Any]] = {}  # name -> node, port, state
        self.endpoints: dict[str, dict[str, Any]] = {}  # shard -> host, port (serve_api)
        self.gateway_fails_on: set[str] = set()  # nodes where a gateway cannot bind
        self.requests: list[list[dict[str, float]]] = []  # request_resources, in order
        self._turns: dict[tuple[str, str], int] = {}

    async def start_runtime(self, n_shards: int, n_partitions: int = 64) -> Controller:
        """A learner and a controller on this backend, the controller started."""
        self.local_learner = Learner(default_compiled())
        self.local_controller = Controller(self, n_partitions=n_partitions)
        await self.local_controller.start(n_shards)
        return self.local_controller

    def nodes(self) -> list[str]:
        return list(self.node_names)

    def node_info(self) -> dict[str, dict[str, Any]]:
        return {n: {"address": f"10.0.0.{i + 1}", "cpus": self.cpus.get(n, 1.0)}
                for i, n in enumerate(self.node_names)}

    def request_resources(self, bundles: list[dict[str, float]]) -> None:
        self.requests.append(list(bundles))

    async def create_gateway(self, name: str, node: str, serving: dict[str, Any]) -> int:
        await self.hop()
        if node in self.gateway_fails_on:
            raise OSError(f"{name} could not bind {serving['host']}:{serving['port']}")
        if name not in self.gateways:  # as Ray's get_if_exists: the one there is taken
            port = serving["port"] or 40000 + len(self.gateways)
            self.gateways[name] = {"node": node, "port": port, "state": "serving"}
        return self.gateways[name]["port"]

    async def kill_gateway(self, name: str) -> None:
        self.gateways.pop(name, None)

    def gateway(self, name: str) -> "LocalGateway":
        return LocalGateway(self, name)

    async def create_shard(self, name: str, node: str | None, n_partitions: int, seed: int,
                           store_url: str, journal_policy: str, owner: str) -> None:
        self.shards[name] = None
        self.n_partitions[name] = n_partitions
        self.created_on[name] = node

    async def kill_shard(self, name: str) -> None:
        self.shards.pop(name, None)

    def shard(self, name: str) -> "LocalShard":
        return LocalShard(self, name)

    def learner(self) -> "LocalLearner":
        return LocalLearner(self)

    def controller(self) -> ControllerControl:
        return self.local_controller  # a Controller is its own ControllerControl

    def sink(self, name: str) -> "LocalSink":
        return LocalSink(self, name)

    async def send(self, name: str, session: str, seq: int, requests: list[Request],
                   routed: list[int]) -> list[Reply]:
        await self.hop()
        while self._turns.get((name, session), 0) != seq:  # one sender's batches in order
            await asyncio.sleep(0)
        self._turns[(name, session)] = seq + 1
        shard = self.shards.get(name)
        if shard is None:
            raise Unavailable(name)
        replies, _ = shard.process(requests, routed)
        return replies

    async def close(self) -> None:
        """Nothing to close: every call is in process."""

    async def disconnect(self, name: str) -> None:
        """As close: nothing to close."""

    async def hop(self) -> None:
        for _ in range(self.rng.randrange(3)):
            await asyncio.sleep(0)


class DecidesLate(LocalBackend):
    """A backend whose shards reach Decides `delay` seconds after they are sent (a queue ahead
    of them), and every other request at once."""

    delay = 0.0

    async def send(self, name: str, session: str, seq: int, requests: list[Request],
                   routed: list[int]) -> list[Reply]:
        if any(getattr(r, "kind", None) == "decide" for r in requests):
            await asyncio.sleep(self.delay)
        return await super().send(name, session, seq, requests, routed)


class LocalShard:
    """ShardControl over a Shard in this process."""

    def __init__(self, backend: LocalBackend, name: str):
        self._backend = backend
        self.name = name
        self.incarnation = f"{name}-incarnation"

    async def _shard(self) -> Shard:
        await self._backend.hop()
        shard = self._backend.shards.get(self.name)
        if shard is None:
            raise Unavailable(f"{self.name} is not started")
        return shard

    async def data_address(self) -> tuple[str, int, bytes, bytes | None]:
        # as ShardControl's: LocalBackend.send needs no data plane, so no secret, no TLS
        return "in-process", 0, self.incarnation.encode(), None

    async def start(self, catalog_text: str, partitions: list[int],
                    channel_watches: list[ChannelWatch], map_version: int,
                    sources: dict[int, str] | None = None, *, owner: str) -> str:
        """As ShardControl's; `owner` is not checked: the backend's store is this process's."""
        await self._backend.hop()
        if self.name not in self._backend.shards:
            raise Unavailable(f"{self.name} was not created")
        shard = Shard(self.name, compiled_from_text(catalog_text), partitions,
                      self._backend.n_partitions[self.name], granted=map_version,
                      store=self._backend.store)
        for sink, channel, placement in channel_watches:
            shard.watch_channel(sink, channel, placement)
        shard.recover(sources)
        self._backend.shards[self.name] = shard
        return self.incarnation

    async def set_owner(self, owner: str) -> None:
        """As ShardControl's; nothing checks it here (`start`)."""
        await self._shard()

    async def serve_api(self, host: str, port: int = 0, keys_file: str | None = None,
                        keys_env: str | None = None,
                        tls_files: tuple[str, str, str | None] | None = None,
                        ports: tuple[int, int] | None = None) -> int:
        """As create_gateway: noted, not served (no gRPC here)."""
        await self._backend.hop()
        endpoints = self._backend.endpoints
        if self.name not in endpoints:
            endpoints[self.name] = {"host": host,
                                    "port": port or (ports or (41000,))[0] + len(endpoints)}
        return endpoints[self.name]["port"]

    async def health(self) -> dict[str, Any]:
        return {"incarnation": self.incarnation, **(await self._shard()).stats()}

    async def stats(self) -> dict[str, Any]:
        return (await self._shard()).stats()

    async def freeze(self, partitions: list[int], version: int) -> bytes:
        return (await self._shard()).freeze(partitions, version)

    async def adopt(self, payload: bytes, version: int) -> int:
        shard = await self._shard()
        if self._backend.fail_next_adopt:
            self._backend.fail_next_adopt = False
            raise Unavailable(f"{self.name} failed while adopting")
        return shard.adopt(payload, version)

    async def release(self, partitions: list[int], version: int) -> None:
        (await self._shard()).release(partitions, version)

    async def thaw(self, partitions: list[int], version: int) -> None:
        (await self._shard()).thaw(partitions, version)

    async def confirm(self, partitions: list[int], version: int) -> None:
        (await self._shard()).confirm(partitions, version)

    async def prepare(self, catalog_text: str) -> str:
        return (await self._shard()).prepare(catalog_text)

    async def commit(self, version: str) -> None:
        (await self._shard()).commit(version)

    async def retire(self) -> None:
        (await self._shard()).retire()

    async def watch_channel(self, sink: str, channel: str, placement: str | None,
                            active: bool = True) -> None:
        (await self._shard()).watch_channel(sink, channel, placement, active)

    async def read_log(self, query: DecisionPage | PageOutcomes, live: list[str],
                       timeout_s: float = CONTROL_CALL_S) -> tuple[list, bool | int]:
        store = (await self._shard()).store
        return decisionlog.read(store, decisionlog.to_read(store, self.name, live), query)


class LocalLearner:
    """LearnerControl over the backend's Learner."""

    def __init__(self, backend: LocalBackend):
        self._backend = backend

    async def sync(self, catalog_version: str, delta: ModelDelta | None,
                   known_version: int) -> Published | None:
        await self._backend.hop()
        return self._backend.local_learner.sync(catalog_version, delta, known_version)

    async def watch(self, catalog_version: str, known_version: int,
                    timeout_s: float = LONG_POLL_S, takes_rows: bool = False,
                    based_on: str | None = None) -> Published | None:
        await self._backend.hop()
        return await self._backend.local_learner.watch(catalog_version, known_version,
                                                       timeout_s, takes_rows, based_on)

    async def switch(self, catalog_text: str) -> int:
        await self._backend.hop()
        return self._backend.local_learner.switch(catalog_text)

    async def stand_down(self) -> None:
        await self._backend.hop()
        self._backend.learner_stood_down = True  # it saves nothing: only recorded

    async def status(self) -> dict[str, Any]:
        await self._backend.hop()
        return self._backend.local_learner.status()


class LocalSink:
    """WatchSink that keeps what it is pushed in `LocalBackend.delivered`."""

    def __init__(self, backend: LocalBackend, name: str):
        self._backend = backend
        self.name = name

    async def deliver(self, decisions: list[Decision]) -> None:
        await self._backend.hop()
        self._backend.delivered.setdefault(self.name, []).extend(decisions)


class LocalGateway:
    """GatewayControl over a record in `LocalBackend.gateways`."""

    def __init__(self, backend: LocalBackend, name: str):
        self._backend = backend
        self.name = name

    async def unready(self) -> None:
        await self._backend.hop()
        self._backend.gateways[self.name]["state"] = "unready"

    async def stop(self) -> None:
        await self._backend.hop()
        self._backend.gateways[self.name]["state"] = "stopped"
