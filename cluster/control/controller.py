"""Controller: shards and their placement, the partition map, catalog versions.

The control logic (`Controller`) talks to shards and the learner only through a Backend, so
it runs without Ray in tests; `ControllerActor` is the named, detached Ray actor around it.

- Shards are spread over the alive nodes, each new one on the node with the fewest.
- The partition map is versioned; gateways and clients follow it by long poll.
- Scaling moves partitions a bounded share per round. A partition moves by freeze (the old
  owner answers MOVED with the next map version) -> hand over its customers -> the new owner
  adopts them -> the map version is published -> the old owner forgets them. Requests that
  met the freeze are re-sent by clients, in order, once they see the new version.
- A catalog switch is two-phase: every shard prepares (compiles) the version, then all commit;
  any failure in the first phase leaves every shard on the old version.
- The controller's own state (the map, the shards' names, the catalog versions, channel
  watches) is written to the store's meta at every change, so a controller that Ray restarts,
  or a cluster started again on the same store (`kairos down`, then `kairos up`), takes up the
  same shards and partitions, and every shard recovers what it owned.
- One reconfiguration at a time; the control loop re-starts shards that Ray restarted (they
  recover from the store) and re-places shards when nodes join. A shard whose node died is
  replaced by a new one that recovers the dead shard's partitions from the store: their
  snapshots and the dead shard's journal (with a store every node reaches, such as Redis).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgpack
import numpy as np
import ray

from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text

from kairos.cluster.control.partitions import DEFAULT_PARTITIONS, Move, PartitionMap
from kairos.cluster.settings import CONTROL_LOOP_S, LONG_POLL_S, RETIRE_GRACE_S
from kairos.cluster.shard.actor import ShardActor
from kairos.cluster.storage.providers import open_store, redact
from kairos.cluster.transport.backend import Backend, Unavailable
from kairos.cluster.transport.ray_backend import RayBackend

log = logging.getLogger("kairos.controller")
STATE_KEY = "controller"  # the store meta holding the controller's state
STATE_FORMAT = 1


def shard_name(index: int) -> str:
    return f"kairos-shard-{index:04d}"


def _seed_of(name: str) -> int:
    return int(name.rsplit("-", 1)[1]) + 1


class Controller:
    def __init__(self, backend: Backend, catalog_text: str | None = None,
                 n_partitions: int = DEFAULT_PARTITIONS, store_url: str = "memory",
                 journal_policy: str = "fsync"):
        self.backend = backend
        self.store_url = store_url
        self.store_shown = redact(store_url)  # what logs and errors say: no password
        self.store = open_store(store_url)
        self.journal_policy = journal_policy
        self._requested_catalog = catalog_text
        self.catalog_text = catalog_text or default_catalog_text()
        self.catalog_version = compiled_from_text(self.catalog_text).version
        self.previous_catalog: str | None = None
        self.n_partitions = n_partitions
        self.map: PartitionMap | None = None
        self.placement: dict[str, str | None] = {}  # shard -> node it was placed on
        self.incarnations: dict[str, str] = {}
        self.channel_watches: set[tuple[str, str, str | None]] = set()
        self._next_index = 0
        self._changed = asyncio.Event()
        self._reconfiguring = asyncio.Lock()

    @property
    def shards(self) -> list[str]:
        return list(self.placement)

    # -- start and the map ---------------------------------------------------------------------

    async def start(self, n_shards: int) -> None:
        """Start `n_shards` shards, or, when the store holds an earlier controller's state,
        take up its shards (each recovers what it owned) and then scale to `n_shards`."""
        if n_shards < 1:
            raise ValueError(f"need at least one shard, got {n_shards}")
        if await self.resume():
            if n_shards != len(self.shards):
                await self.scale(n_shards)
            return
        names = [await self._create_shard() for _ in range(n_shards)]
        self.map = PartitionMap.initial(names, self.n_partitions)
        await asyncio.gather(*(self._start_shard(name) for name in names))
        self._publish()

    async def resume(self) -> bool:
        """Take up the state saved in the store; whether there was one."""
        blob = self.store.get_meta(STATE_KEY)
        if blob is None:
            return False
        state = msgpack.unpackb(blob, raw=False)
        if state["n_partitions"] != self.n_partitions:
            raise ValueError(f"the store {self.store_shown} holds {state['n_partitions']} "
                             f"partitions, not {self.n_partitions}: start with the same count "
                             f"or another store")
        names = state["shards"]  # every shard that existed, owning partitions or retiring
        self.map = PartitionMap([names[i] for i in state["owners"]], state["version"],
                                state["target"])
        self._next_index = state["next_index"]
        self.catalog_text = state["catalog"]
        self.catalog_version = compiled_from_text(self.catalog_text).version
        self.previous_catalog = state["previous_catalog"]
        self.channel_watches = {tuple(w) for w in state["channel_watches"]}
        log.warning("resuming the cluster saved in %s: map version %d, %d shards",
                    self.store_shown, self.map.version, len(names))
        for name in names:
            if name not in self.map.owners:  # was retiring: its partitions are elsewhere
                self.store.drop_journal(name)
                continue
            try:
                health = await self.backend.shard(name).health()
            except Unavailable:
                health = None
            if health is not None and health.get("started"):
                self.placement[name] = health.get("node")
                self.incarnations[name] = health["incarnation"]
                continue
            if health is None:
                await self._create_shard(name)
            await self._start_shard(name)
        await self.backend.learner().switch(self.catalog_text)
        self._publish()
        requested = self._requested_catalog
        if requested is not None and requested != self.catalog_text:
            await self.put_catalog(requested)
        return True

    def _save(self) -> None:
        names = sorted(set(self.placement) | set(self.map.owners))
        index = {n: i for i, n in enumerate(names)}
        self.store.put_meta(STATE_KEY, msgpack.packb({
            "format": STATE_FORMAT, "n_partitions": self.n_partitions, "shards": names,
            "target": self.map.shards,
            "owners": [index[o] for o in self.map.owners], "version": self.map.version,
            "next_index": self._next_index, "catalog": self.catalog_text,
            "previous_catalog": self.previous_catalog,
            "channel_watches": sorted((list(w) for w in self.channel_watches), key=str)},
            use_bin_type=True))

    async def _create_shard(self, name: str | None = None) -> str:
        """Create a shard actor (a new name, or a saved one being brought back)."""
        if name is None:
            name = shard_name(self._next_index)
            self._next_index += 1
        load = self._node_load()
        node = min(load, key=load.__getitem__, default=None)  # the first of the emptiest
        await self.backend.create_shard(name, node, self.n_partitions, _seed_of(name),
                                        self.store_url, self.journal_policy)
        self.placement[name] = node
        return name

    def _node_load(self) -> dict[str, int]:
        """Shards placed on each alive node, in the backend's order of the nodes."""
        load = dict.fromkeys(self.backend.nodes(), 0)
        for node in self.placement.values():
            if node in load:
                load[node] += 1
        return load

    async def _start_shard(self, name: str, sources: dict[int, str] | None = None) -> None:
        """Have the shard recover its partitions from the store and serve them."""
        partitions = self.map.partitions_of(name) if self.map else []
        self.incarnations[name] = await self.backend.shard(name).start(
            self.catalog_text, partitions, sorted(self.channel_watches, key=str),
            self.map.version if self.map else 1, sources)

    def _publish(self) -> None:
        self._save()
        self._changed.set()
        self._changed = asyncio.Event()

    def routing(self) -> dict[str, Any]:
        """The map as clients take it: shard names and an owner index per partition."""
        names = self.map.shards_in_use()
        index = {n: i for i, n in enumerate(names)}
        owners = np.array([index[o] for o in self.map.owners], np.uint16)
        return {"version": self.map.version, "shards": names, "owners": owners.tobytes(),
                "catalog_version": self.catalog_version}

    async def get_map(self, known_version: int, timeout_s: float = LONG_POLL_S) -> dict | None:
        """Long poll: the map once its version differs from `known_version`; None on timeout."""
        if self.map.version == known_version:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._changed.wait()
            except asyncio.TimeoutError:
                return None
        return self.routing()

    # -- scaling -------------------------------------------------------------------------------

    async def scale(self, n_shards: int) -> dict[str, Any]:
        """Change the shard count while traffic flows; returns when the spread is even."""
        if n_shards < 1:
            raise ValueError(f"need at least one shard, got {n_shards}")
        async with self._reconfiguring:
            target = self.shards[:n_shards]
            for _ in range(n_shards - len(target)):
                name = await self._create_shard()
                await self._start_shard(name)
                target.append(name)
            moved = await self._rebalance(target)
            await self._retire([s for s in self.shards if s not in target])
            return {"shards": len(self.shards), "moved": moved, "version": self.map.version}

    async def _rebalance(self, target: list[str]) -> int:
        moved = 0
        while moves := self.map.plan(target):
            await self._move(moves, target)
            moved += len(moves)
        return moved

    async def _move(self, moves: list[Move], target: list[str]) -> None:
        version = self.map.version + 1
        pairs: dict[tuple[str, str], list[int]] = {}
        for m in moves:
            pairs.setdefault((m.source, m.target), []).append(m.partition)
        results = await asyncio.gather(*(self._hand_over(src, dst, parts, version)
                                         for (src, dst), parts in pairs.items()),
                                       return_exceptions=True)
        handed = {pair for pair, result in zip(pairs, results)
                  if not isinstance(result, Exception)}
        self.map = self.map.apply([m for m in moves if (m.source, m.target) in handed], target)
        self._publish()
        await asyncio.gather(*(self.backend.shard(src).release(pairs[(src, dst)])
                               for src, dst in handed))
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            raise RuntimeError(f"{len(failures)} handoffs failed; first: {failures[0]!r}")

    async def _hand_over(self, source: str, target: str, partitions: list[int],
                         version: int) -> int:
        payload = await self.backend.shard(source).freeze(partitions, version)
        try:
            return await self.backend.shard(target).adopt(payload, version)
        except Exception:
            log.exception("handoff %s -> %s failed; %s serves the partitions again",
                          source, target, source)
            await self.backend.shard(source).thaw(partitions, version)
            raise

    async def _retire(self, names: list[str]) -> None:
        """Stop shards that own nothing any more, after clients had time to see the map."""
        if not names:
            return
        await asyncio.sleep(RETIRE_GRACE_S)
        for name in names:
            try:
                await self.backend.shard(name).retire()  # its journal goes with it
            except Unavailable:
                log.warning("%s did not drop its journal before stopping", name)
            await self.backend.kill_shard(name)
            self.placement.pop(name, None)
            self.incarnations.pop(name, None)

    # -- catalogs ------------------------------------------------------------------------------

    async def put_catalog(self, catalog_text: str) -> str:
        """Validate, then switch every shard and the learner; the new version."""
        version = compiled_from_text(catalog_text).version  # CatalogError: stop
        async with self._reconfiguring:
            await asyncio.gather(*(self.backend.shard(s).prepare(catalog_text)
                                   for s in self.shards))
            await self.backend.learner().switch(catalog_text)
            await asyncio.gather(*(self.backend.shard(s).commit(version)
                                   for s in self.shards))
            self.previous_catalog, self.catalog_text = self.catalog_text, catalog_text
            self.catalog_version = version
            self.map = self.map.apply([], self.map.shards)  # gateways learn it by long poll
            self._publish()
        return version

    async def get_catalog(self) -> dict[str, Any]:
        return {"version": self.catalog_version, "text": self.catalog_text,
                "has_previous": self.previous_catalog is not None}

    async def rollback_catalog(self) -> str:
        if self.previous_catalog is None:
            raise ValueError("there is no previous catalog version to roll back to")
        return await self.put_catalog(self.previous_catalog)

    # -- watches -------------------------------------------------------------------------------

    async def watch_channel(self, sink: str, channel: str, placement: str | None,
                            active: bool = True) -> None:
        async with self._reconfiguring:
            await asyncio.gather(*(self.backend.shard(s).watch_channel(sink, channel,
                                                                       placement, active)
                                   for s in self.shards))
            key = (sink, channel, placement)
            if active:
                self.channel_watches.add(key)
            else:
                self.channel_watches.discard(key)
            self._save()

    # -- the control loop ----------------------------------------------------------------------

    async def reconcile(self) -> None:
        """One round: replace shards whose node died, re-start shards Ray restarted, then
        spread shards over nodes that joined."""
        async with self._reconfiguring:
            alive = set(self.backend.nodes())
            for name in [s for s, node in self.placement.items()
                         if node is not None and node not in alive]:
                await self._replace(name)
            for name in self.shards:
                try:
                    health = await self.backend.shard(name).health()
                except Unavailable:
                    continue  # Ray is restarting it; look again next round
                if health["incarnation"] != self.incarnations.get(name):
                    log.warning("%s restarted; it recovers its partitions from the store "
                                "(%s)", name, self.store_shown)
                    await self._start_shard(name)
            crowded = self._crowded_node()
            if crowded is None:
                return
            victim = next(s for s, n in self.placement.items() if n == crowded)
            name = await self._create_shard()
            await self._start_shard(name)
            target = [s for s in self.shards if s != victim]
            await self._rebalance(target)
            await self._retire([victim])

    async def _replace(self, dead: str) -> None:
        log.warning("%s was on a node that left; a new shard recovers its partitions from the "
                    "store (%s)", dead, self.store_shown)
        await self.backend.kill_shard(dead)
        self.placement.pop(dead)
        self.incarnations.pop(dead, None)
        name = await self._create_shard()
        partitions = self.map.partitions_of(dead)
        self.map = self.map.apply([Move(p, dead, name) for p in partitions], self.shards)
        # granted at the new version: stale senders re-route
        await self._start_shard(name, {p: dead for p in partitions})
        self._publish()

    def _crowded_node(self) -> str | None:
        """The node with the most shards, if it has two or more than the emptiest (one of
        its shards is then replaced by a new one, placed on the emptiest)."""
        load = self._node_load()
        if len(load) < 2:
            return None
        busiest = max(load, key=load.__getitem__)
        return busiest if load[busiest] - min(load.values()) >= 2 else None

    async def status(self) -> dict[str, Any]:
        shards = await asyncio.gather(*(self._shard_status(s) for s in self.shards))
        try:
            learner = await self.backend.learner().status()
        except Unavailable:
            learner = {"available": False}
        return {"map_version": self.map.version, "partitions": self.n_partitions,
                "catalog_version": self.catalog_version, "nodes": self.backend.nodes(),
                "shards": shards, "learner": learner,
                "resident": sum(s.get("resident", 0) for s in shards)}

    async def _shard_status(self, name: str) -> dict[str, Any]:
        try:
            health = await self.backend.shard(name).health()
        except Unavailable:
            health = {"available": False}
        return {**health, "shard": name, "placed_on": self.placement.get(name),
                "partitions": len(self.map.partitions_of(name))}


@ray.remote(num_cpus=0, max_restarts=-1)
class ControllerActor:
    """Started as CONTROLLER_NAME by runtime.start()."""

    def __init__(self, catalog_text: str | None, n_partitions: int, store_url: str = "memory",
                 journal_policy: str = "fsync"):
        self.controller = Controller(RayBackend(ShardActor), catalog_text, n_partitions,
                                     store_url, journal_policy)
        self._loop_task: asyncio.Task | None = None
        self._resuming = asyncio.Lock()

    async def start(self, n_shards: int) -> dict[str, Any]:
        await self.controller.start(n_shards)
        self._loop_task = asyncio.get_running_loop().create_task(self._control_loop())
        return self.controller.routing()

    async def _ready(self) -> Controller:
        """After Ray restarted this actor (start() is not called again), take up the state
        the previous incarnation saved."""
        if self.controller.map is None:
            async with self._resuming:
                if self.controller.map is None:
                    if not await self.controller.resume():
                        raise RuntimeError("the controller has not been started")
                    self._loop_task = asyncio.get_running_loop().create_task(
                        self._control_loop())
        return self.controller

    async def _control_loop(self) -> None:
        while True:
            await asyncio.sleep(CONTROL_LOOP_S)
            try:
                await self.controller.reconcile()
            except Exception:
                log.exception("control loop round failed; trying again")

    async def get_map(self, known_version: int, timeout_s: float = LONG_POLL_S):
        return await (await self._ready()).get_map(known_version, timeout_s)

    async def scale(self, n_shards: int) -> dict[str, Any]:
        return await (await self._ready()).scale(n_shards)

    async def put_catalog(self, catalog_text: str) -> str:
        return await (await self._ready()).put_catalog(catalog_text)

    async def rollback_catalog(self) -> str:
        return await (await self._ready()).rollback_catalog()

    async def get_catalog(self) -> dict[str, Any]:
        return await (await self._ready()).get_catalog()

    async def watch_channel(self, sink: str, channel: str, placement: str | None,
                            active: bool = True) -> None:
        await (await self._ready()).watch_channel(sink, channel, placement, active)

    async def status(self) -> dict[str, Any]:
        return await (await self._ready()).status()
