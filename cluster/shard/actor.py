"""ShardActor: the Ray actor around a ShardHost (host.py), which does the work without Ray.

What stays here is what needs Ray: being an async actor (admin and health methods in a
concurrency group of their own, so they answer while the data path is busy), serving the data
plane on this node's address, reaching the learner (model sync: modelsync.py) and the
watch sinks (pushes), Ray's metrics (every METRICS_FLUSH_S) and the node id in `health`. The
remote methods' names and signatures are what the controller's typed handles call
(transport/ray_backend.py's RayShard).
"""
from __future__ import annotations

import asyncio
import logging
import os
import uuid
from typing import Any

import numpy as np
import ray

from kairos.core.compiler import compiled_from_text
from kairos.core.state import EMPTY

from kairos.cluster import pauses
from kairos.cluster.gateway.actor import GatewayServer
from kairos.cluster.metrics import GatewayMetrics, ShardMetrics
from kairos.cluster.control.partitions import partition_of
from kairos.cluster.remembered import Remembered
from kairos.cluster.settings import DATA_HOST, METRICS_FLUSH_S
from kairos.cluster.shard.api import OwnShardFirst, RouteHint
from kairos.cluster.evidence.records import DecisionPage, PageOutcomes
from kairos.cluster.shard.host import ShardHost
from kairos.cluster.shard.modelsync import ModelSync
from kairos.cluster.shard.recovering import StoreAt
from kairos.cluster.shard.shard import Shard
from kairos.cluster.shard.sinks import PROBE_S, Pushes
from kairos.cluster.storage.store import StoreUnavailable
from kairos.cluster.transport.backend import Unavailable
from kairos.cluster.transport.dataplane import PlaneServer
from kairos.cluster.transport.ray_backend import Gone, RayBackend, restarted

log = logging.getLogger("kairos.shard")


def rings_written(shard: Shard) -> int:
    """The resident rows whose ring holds an interaction: a ring is written from its first
    entry on (a merge refills it so), which only eviction empties again (core/state.py), so
    the count holds once the ring wraps and its head is back at 0."""
    table = shard.engine.table
    return int(np.count_nonzero(table.ring_action[:table.used, 0] != EMPTY))


# "log": exports read on their own calls, so that a slow one never holds up health checks
@ray.remote(num_cpus=0, concurrency_groups={"admin": 2, "log": 2})
class ShardActor:
    def __init__(self, name: str, n_partitions: int, seed: int, store_url: str = "memory",
                 journal_policy: str = "fsync", *, owner: str):
        """`owner`: the token of the cluster whose controller creates it, whose claim the
        store must hold where this shard opens it (host.py); Ray passes it again at a
        restart, as the other arguments, and each start the token of the controller that
        starts it (a later `kairos up` takes this actor up with a token of its own, or keeps
        it serving and tells it its token: `set_owner`)."""
        self.name = name
        pauses.track()
        self.incarnation = uuid.uuid4().hex  # changes when Ray restarts the actor
        self.backend = RayBackend()
        self.metrics = ShardMetrics(name)
        self.models = ModelSync(name)
        self.pushes = Pushes(name, self.backend.sink, self._sinks_gone)
        self.host = ShardHost(name, n_partitions, seed, StoreAt(store_url),
                              journal_policy, deliver=self.pushes.push,
                              observe=self.metrics.observe_batch, settle=pauses.settle,
                              jobs=(self._sync_models, self._flush_metrics, self._probe_sinks),
                              owner=owner)
        self._plane = PlaneServer(self.host.handle)
        self._snapshot: dict[str, Any] = {"shard": name, "started": False}
        self._flushed: Shard | None = None  # the Shard whose tallies the metrics follow
        self._api: GatewayServer | None = None
        self._api_serving: dict[str, Any] = {}  # what it was asked to serve with
        self._api_kept = Remembered.of_actor(f"{name}.api")
        self._resume_api()
        self._told_disowned = False  # the controller nudged since recovery found it disowned
        if restarted():
            self.backend.nudge_controller()  # to be started again: the controller's round

    # -- lifecycle -----------------------------------------------------------------------------

    async def ready(self) -> str:
        return self.incarnation

    async def data_address(self) -> tuple[str, int, bytes, bytes | None]:
        """Where this incarnation serves request batches (dataplane.py): host, port, the
        secret a connection must prove it knows (only Ray's authorised callers learn it) and
        its TLS certificate's fingerprint (None off TLS: pinned.py).
        (On the default group's event loop, the one `handle` and the worker use: each
        concurrency group has a loop of its own.)"""
        host, port = await self._plane.start(DATA_HOST or ray.util.get_node_ip_address())
        return host, port, self._plane.secret, self._plane.fingerprint

    async def start(self, catalog_text: str, partitions: list[int],
                    channel_watches: list[tuple], map_version: int,
                    sources: dict[int, str] | None = None, *, owner: str) -> str:
        """Recover these partitions from the store (`sources`: the journal of a dead shard
        whose partitions these were), then serve them on this catalog, the store holding the
        claim of `owner` (the token of the controller that starts it: host.py)."""
        compiled = compiled_from_text(catalog_text)
        await self.host.start(compiled, {p: map_version for p in partitions},
                              [tuple(w) for w in channel_watches], sources, owner)
        return self.incarnation

    async def serve_api(self, host: str, port: int = 0, keys_file: str | None = None,
                        keys_env: str | None = None,
                        tls_files: tuple[str, str, str | None] | None = None,
                        ports: tuple[int, int] | None = None) -> int:
        """Serve kairos.v1 from this process too (api.py: one hop fewer for clients that
        route), on `port`, else the first free one of `ports` (low, high), else any; the
        port. As a gateway does, it reads its secrets from files or its own environment, and
        serves again, on the same port, after Ray restarts the actor."""
        serving = {"host": host, "port": port, "keys_file": keys_file, "keys_env": keys_env,
                   "tls_files": tls_files and list(tls_files), "ports": ports and list(ports)}
        if self._api is None:
            self._serve_api(**serving)
        elif {**serving, "port": self._api_serving["port"]} != self._api_serving:
            log.warning("%s serves its endpoint already, with other arguments: kept as it is "
                        "until the shard restarts", self.name)
        try:
            bound = await self._api.start()
        except Exception:
            self._api = None  # not serving: the next call tries again
            raise
        self._api_kept.keep({**self._api_serving, "port": bound})
        return bound

    def _serve_api(self, host: str, port: int, keys_file: str | None, keys_env: str | None,
                   tls_files: list[str | None] | None, ports: list[int] | None = None) -> None:
        self._api_serving = {"host": host, "port": port, "keys_file": keys_file,
                             "keys_env": keys_env, "tls_files": tls_files, "ports": ports}
        backend = OwnShardFirst(self.name, self.host, self.backend)
        self._api = GatewayServer(self.name, host, port, keys_file, keys_env,
                                  tls_files and tuple(tls_files), backend,
                                  node=ray.get_runtime_context().get_node_id(), of_shard=True,
                                  ports=ports and (ports[0], ports[1]),
                                  interceptors=lambda gateway: (
                                      RouteHint(self.name, gateway.client),))
        self._api.metrics = GatewayMetrics(self.name)

    def _resume_api(self) -> None:
        """Restarted by Ray while it served its endpoint: serve it again as it did."""
        saved = self._api_kept.recall()
        if saved is not None:
            try:
                self._serve_api(**saved)
            except Exception:  # kept by another version of this code: the shard goes on
                log.exception("%s: the record of its endpoint does not fit; not serving it",
                              self.name)
                self._api_kept.forget()

    async def api_batches_in_process(self) -> int:
        """Batches this process's API answered without the data plane (0 if it serves none)."""
        gateway = self._api.gateway if self._api else None
        return gateway.client.backend.in_process if gateway else 0

    async def deliver(self, decisions: list, incarnation: str | None = None) -> None:
        """Watched decisions for the watches registered through this process's API (their
        sink: this actor's name and its endpoint's incarnation); Gone for another one's."""
        if self._api is not None:
            await self._api.deliver(decisions, incarnation)
        elif incarnation is not None:
            raise Gone(f"{self.name}: serves no endpoint, so no watch streams of "
                       f"incarnation {incarnation}")

    # -- push ----------------------------------------------------------------------------------

    async def _sinks_gone(self, sinks: list[str]) -> None:
        await self.host.run(drop_sinks, sinks)

    # -- background ----------------------------------------------------------------------------

    async def _sync_models(self) -> None:
        await self.models.run(lambda: self.host.shard and self.host.shard.engine,
                              self.backend.learner, self.host.stirred)

    async def _probe_sinks(self) -> None:
        """Every PROBE_S, drop the watches of the sinks Gone (sinks.py)."""
        while True:
            await asyncio.sleep(PROBE_S)
            if self.host.shard is not None:
                await self.pushes.probe(await self.host.run(Shard.watched_sinks))

    async def _flush_metrics(self) -> None:
        """The metrics, and the endpoint's health, every METRICS_FLUSH_S."""
        while True:
            await asyncio.sleep(METRICS_FLUSH_S)
            shard = self.host.shard
            if shard is not None:
                await self._flush(shard)
            # to be started again: tell the controller, once (it goes on running a round a
            # second while a shard is down; a nudge a flush would run them back to back)
            disowned = bool(self.host.recovery.get("disowned"))
            if disowned and not self._told_disowned:
                self.backend.nudge_controller()
            self._told_disowned = disowned
            if self._api is not None:  # routed to only while it recovered and owns partitions
                await self._api.set_serving(shard is not None and shard is self.host.shard
                                            and self._snapshot.get("partitions", 0) > 0)

    async def _flush(self, shard: Shard) -> None:
        pauses.keep_short()
        if shard is not self._flushed:
            self.metrics.restart_tallies()
            self._flushed = shard
        counts = shard.counts.copy()
        counts["rejected"] = self.host.rejected
        counts["model_updates_refused"] = shard.engine.models.refused
        counts["values_clipped"] = shard.engine.values_clipped
        counts["values_unbounded"] = shard.engine.values_unbounded
        self.metrics.flush(counts, shard.by_channel.copy(), shard.by_group.copy(),
                           self.host.queued, len(shard.engine.table),
                           shard.engine.models.version,
                           self.host.recovery.get("seconds", 0.0), len(shard.dirty))
        # read as it stands, not in turn with the data path (`host.run`): it changes nothing,
        # and a call there would wake an idle shard's tick loop every flush (host.py)
        self._snapshot = shard.stats()

    # -- control (from the controller) --------------------------------------------------------

    async def freeze(self, partitions: list[int], version: int) -> bytes:
        """Park the partitions, let their customers' pushes land (so they do before any of
        the new owner's: sinks.py), then hand them over, with the views whose pushes the
        flush dropped not shown, so their new owner (or this shard, thawed) pushes them."""
        await self.host.run(Shard.park, partitions, version)
        await self.host.settled()  # the pushes of rounds before the park are queued
        moving, n = set(partitions), self.host.n_partitions
        unsent = await self.pushes.flush(lambda customer_id: partition_of(customer_id, n)
                                         in moving)
        return await self.host.run(Shard.export, partitions, version, unsent)

    async def adopt(self, payload: bytes, version: int) -> int:
        return await self.host.run(Shard.adopt, payload, version)

    async def release(self, partitions: list[int], version: int) -> None:
        await self.host.run(Shard.release, partitions, version)

    async def thaw(self, partitions: list[int], version: int) -> None:
        await self.host.run(Shard.thaw, partitions, version)

    async def confirm(self, partitions: list[int], version: int) -> None:
        await self.host.run(Shard.confirm, partitions, version)

    async def prepare(self, catalog_text: str) -> str:
        # compiled on a thread, not on the data path: a large catalog takes seconds, and every
        # shard prepares at once; Shard.prepare then finds it compiled (compiled_from_text
        # keeps the last texts)
        await asyncio.to_thread(compiled_from_text, catalog_text)
        return await self.host.run(Shard.prepare, catalog_text)

    async def commit(self, version: str) -> None:
        await self.host.run(Shard.commit, version)
        pauses.settle()  # the old catalog's engine is freed

    async def retire(self) -> None:
        """Owning nothing any more: drop the journal, before the controller stops this actor
        (a shard of the same name made later is another actor: it drops the endpoint's file
        this one leaves, `_resume_api`)."""
        await self.host.run(Shard.retire)

    async def watch_channel(self, sink: str, channel: str, placement: str | None,
                            active: bool) -> None:
        await self.host.run(Shard.watch_channel, sink, channel, placement, active)

    async def stats(self) -> dict[str, Any]:
        """Fresh statistics, taken in turn with the data path."""
        stats = await self.host.run(Shard.stats)
        return {**stats, "queued": self.host.queued, "rejected": self.host.rejected,
                "incarnation": self.incarnation, "recovery": self.host.recovery,
                "gc": pauses.observed()}

    async def rings_written(self) -> int:
        """How many resident customers have an interaction written to their ring (read only;
        bench.resident checks that its customers were served, their rings' pages resident)."""
        return await self.host.run(rings_written)

    async def snapshot(self, dirty_only: bool = False) -> int:
        """Snapshot every partition served (`dirty_only`: those with changes no snapshot
        holds yet), now, in turn with the data path (the background checkpoint writes a few
        at a time); the customers written."""
        return await self.host.run(Shard.snapshot_dirty if dirty_only else Shard.snapshot)

    # -- admin (own concurrency group: answers while the data path is busy) --------------------

    @ray.method(concurrency_group="log")
    async def read_log(self, query: DecisionPage | PageOutcomes, live: list[str],
                       timeout_s: float) -> tuple[list, bool | int]:
        """The decision log, read on a thread (host.py `read_log`: at most two at once),
        waited for as long as its caller waits: then this call's slot is free for the next,
        and the read stops."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self.host.read_log(query, live, timeout_s)
        except StoreUnavailable as exc:
            raise Unavailable(str(exc)) from exc
        except TimeoutError:
            raise Unavailable(f"{self.name}: reading the decision log took over "
                              f"{timeout_s:g} s") from None

    @ray.method(concurrency_group="admin")
    async def set_owner(self, owner: str) -> None:
        """Check the claim of `owner` from the next build on, this one kept serving as it is:
        a controller with a token of its own (a `kairos up`) takes this shard up serving
        (resuming.py), and the token it was started with is gone for good. (The admin group:
        answered while the data path is busy; a build reads the token as it begins.)"""
        self.host.owner = owner

    @ray.method(concurrency_group="admin")
    async def health(self) -> dict[str, Any]:
        """Cheap liveness and the last statistics snapshot (at most a second old)."""
        return {**self._snapshot, "queued": self.host.queued,
                "started": self.host.shard is not None, "incarnation": self.incarnation,
                "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                # the token it checks: the controller starts one refused for another's again
                "recovery": self.host.recovery, "owner": self.host.owner,
                "model_adoptions": list(self.models.adoptions),
                "model_deltas_dropped": self.models.dropped}


def drop_sinks(shard: Shard, sinks: list[str]) -> None:
    """Shard.drop_sink for several sinks, as one `ShardHost.run`."""
    shard.watches.drop_sinks(sinks)
