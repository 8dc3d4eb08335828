"""Controller: shards and their placement, the partition map, catalog versions, nodes.

`Controller` talks to shards, gateways and the learner only through a Backend, so it runs
without Ray in tests; `ControllerActor` (actor.py) is the named, detached Ray actor around it.

- Shards are spread over the serving nodes, each new one on the node with the fewest.
- The map is versioned; gateways and clients follow it by long poll. Scaling (scaling.py)
  moves partitions in bounded rounds (moves.py): freeze (the old owner answers MOVED with the
  next version) -> hand over the customers -> the new owner adopts them -> the version is
  published -> the old owner forgets them; clients re-send what met the freeze, in order. A
  round's moves are saved before the first freeze and settled after a crash.
- A catalog switch (catalogs.py) is two-phase: every shard prepares (compiles), then all
  commit; a shard that refuses the catalog in the first phase leaves every shard on the old
  version. The version is saved before the first commit; shards that miss either phase are
  caught up (lagging.py).
- Every remote call has a deadline (ray_backend.py): a shard that does not answer fails only
  its own step, and holds the lock (a reconfiguration calls shards under it) no longer than
  that. Long polls, channel watches and the control loop's health checks take no lock.
- The state (saved.py: map, shard names, catalogs, watches, nodes) is saved in the store's
  meta at every change: a controller Ray restarts, or a cluster started again on the same
  store, takes up (resuming.py) the same shards and partitions, and the catalog running when
  it stopped; the shards it creates wait for the nodes to host them no denser than they were,
  or for as many nodes as it last ran on if fewer (takeup.py).
- A store serves one cluster at a time: a start or a take-up first claims it for the cluster
  (ownership.py; the owner token outlives Ray's restarts of the controller), and fails with
  StoreInUse, before anything is written or started, while another cluster holds it. Once the
  claim is lost, the state is saved no more and no shard is created (StoreInUse).
- One reconfiguration at a time. The control loop (rounds.py) replaces shards whose node died
  (the new one recovers the dead one's partitions from the store), re-starts shards Ray
  restarted (they recover from the store), tells a restarted learner the catalog, finishes
  drains a crash cut short, gives nodes that join shards and a gateway (nodes.py), and
  re-places shards from crowded nodes; and the count of serving nodes the cluster last ran
  on, which a full restart's take-up waits for at most, follows the nodes its rounds find:
  up at once, down after settled rounds for a wait's length (takeup.py).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text

from kairos.cluster.control.catalogs import Catalogs
from kairos.cluster.control.drains import Drains
from kairos.cluster.control.endpoints import ShardEndpoints
from kairos.cluster.control.lagging import Lagging
from kairos.cluster.control.nodes import GatewaySpec, NodeRefused, Nodes, NodeUnknown
from kairos.cluster.control.partitions import DEFAULT_PARTITIONS, Move, PartitionMap
from kairos.cluster.control.resuming import Resuming
from kairos.cluster.control.rounds import ControlLoop
from kairos.cluster.control.saved import STATE_KEY, state_blob
from kairos.cluster.control.scaling import Scaling
from kairos.cluster.control.status import cluster_status
from kairos.cluster.control.takeup import Density, NodesRun, kept_on, resumed_count, uneven
from kairos.cluster.longpoll import Changes
from kairos.cluster.settings import DRAIN_UNREADY_S, LONG_POLL_S, RETIRE_GRACE_S, SHARDS_PER_CPU
from kairos.cluster.shard.outcomes import outcome_secret
from kairos.cluster.storage.ownership import StoreClaim, new_owner
from kairos.cluster.storage.providers import open_store, redact
from kairos.cluster.throttled import ThrottledWarning
from kairos.cluster.transport.backend import Backend, Unavailable

log = logging.getLogger("kairos.controller")
# the cluster of the Controllers made in this process without an owner (tests): one, as a
# controller constructed again on a store stands for the one before. Not ControllerActor's: a
# controller Ray restarts runs in another process, and claims with runtime.start's owner
IN_PROCESS_OWNER = new_owner()


SHARD_PREFIX = "kairos-shard-"


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:04d}"


def _seed_of(name: str) -> int:
    return int(name.rsplit("-", 1)[1]) + 1


class Controller(ControlLoop, Catalogs, Scaling, Resuming):
    """The control loop's round (reconcile) is in rounds.py, the catalog switches in
    catalogs.py, scaling in scaling.py, the take-up of a saved cluster in resuming.py."""

    def __init__(self, backend: Backend, catalog_text: str | None = None,
                 n_partitions: int = DEFAULT_PARTITIONS, store_url: str = "memory",
                 journal_policy: str = "fsync", gateways: GatewaySpec | None = None,
                 shards_per_cpu: float = SHARDS_PER_CPU, home_node: str | None = None,
                 owner: str = IN_PROCESS_OWNER):
        self.backend = backend
        self.home_node = home_node  # where this controller and the learner run: not drained
        self.store_url = store_url
        self.store_shown = redact(store_url)  # what logs and errors say: no password
        self.store = open_store(store_url)
        self.store_claim = StoreClaim(self.store, owner)  # the cluster's claim on the store
        self.journal_policy = journal_policy
        self._requested_catalog = catalog_text
        self.catalog_text = catalog_text or default_catalog_text()
        self.catalog_version = compiled_from_text(self.catalog_text, quiet=True).version
        self.previous_catalog: str | None = None
        self.evidence, self.previous_evidence = {}, {}  # PutCatalog's: {json, summary}
        self.n_partitions = n_partitions
        self.map: PartitionMap | None = None
        self.placement: dict[str, str | None] = {}  # shard -> node it was placed on
        self.incarnations: dict[str, str] = {}
        self.endpoints = ShardEndpoints(backend)  # where each shard serves kairos.v1 itself
        self.channel_watches: set[tuple[str, str, str | None]] = set()
        self._watch_changes = 0  # made so far: a shard's start tells whether any came meanwhile
        self.moving: list[Move] = []  # recorded moves not yet settled (saved)
        self.thaws_published: set[Move] = set()  # undone, thaw sent at a published version
        # replacement -> the journal each of its partitions recovers from (the shard it replaced)
        # until its health says it serves (saved; rounds.py)
        self.replacing: dict[str, dict[int, str]] = {}
        self.ready = False  # its state is whole: started, or taken up from the store
        self.lagging = Lagging(backend)
        self.nodes = Nodes(backend, gateways, shards_per_cpu)
        self.density = Density()  # what the saved state records (takeup.py)
        self.nodes_run = NodesRun()  # the serving nodes it last ran on, saved too (takeup.py)
        self.drains = Drains(self._drained)
        self._requested_gateways = gateways
        self._next_index = 0
        # new shard names handed out and not placed yet (saved before their actor is created:
        # a resume stops those a crash left behind, unknown to it otherwise)
        self.starting: set[str] = set()
        self._map_changes = Changes()
        self._reconfiguring = asyncio.Lock()
        self._saving = asyncio.Lock()
        self._routable: PartitionMap | None = None  # the map as last saved: what clients see
        # the shards that did not answer the last catch-up (its health, or its settle), and
        # the drains they hold back, each with its notice (rounds.py)
        self._unanswered: set[str] = set()
        self._held_drains: dict[str, ThrottledWarning] = {}
        self._held_starts: dict[tuple[str, str], ThrottledWarning] = {}  # (shard, what said)
        self._waiting_since: dict[str, float] = {}  # shard -> its first start Unreleased
        self._healths: dict[str, dict[str, Any]] = {}  # the last catch-up's, of those answering
        # shards down on a store not this cluster's, each with its notice (rounds.py)
        self._unclaimed: dict[str, ThrottledWarning] = {}

    @property
    def shards(self) -> list[str]:
        return list(self.placement)

    @property
    def _drains(self) -> set[str]:  # the control loop finishes the drains not running
        return self.drains.running()

    def _serving_shards(self) -> list[str]:
        """Shards that may be given partitions: those not on a draining node."""
        return [s for s, n in self.placement.items() if n not in self.nodes.draining]

    # -- start and the map ---------------------------------------------------------------------

    async def start(self, n_shards: int) -> None:
        """Start `n_shards` shards, or, when the store holds an earlier controller's state,
        take up its shards (each recovers what it owned) and then scale to `n_shards` (with
        KAIROS_RESUME_KEEPS_SHARDS, keeps them, `n_shards` a floor: takeup.py)."""
        if n_shards < 1:
            raise ValueError(f"need at least one shard, got {n_shards}")
        await self.store_claim.claim()  # before anything is written: StoreInUse
        outcome_secret(self.store)  # before any shard starts, so that all share one
        if resumed := await self.resume():
            # asked for by this start (`kairos up --catalog` on a store in use); a resume after
            # Ray restarted the controller never applies it: it is the catalog of the first
            # start, and PutCatalog may have switched since
            requested = self._requested_catalog
            if requested is not None and requested != self.catalog_text:
                await self.put_catalog(requested)
            kept = kept_on(self.nodes, self.placement)  # before a scale down: takeup.py
            count = resumed_count(len(self.shards), n_shards, self.nodes, kept)
            if count != len(self.shards) or uneven(kept, self.map, self._serving_shards()[:count]):
                await self.scale(count)
        else:
            kept = None
            await self.check_first_catalog()
            names = [await self._create_shard() for _ in range(n_shards)]
            self.map = PartitionMap.initial(names, self.n_partitions)
            await asyncio.gather(*(self._start_shard(name) for name in names))
        # the nodes it placed shards on are no joiners: given no share of new shards
        self.nodes.known.update(self.nodes.alive() if kept is None else kept)
        await self._publish()
        if not resumed:  # it may follow a catalog an earlier cluster saved with its posterior
            await self._learner_told()
        self.ready = True
        if failed := await self.nodes.ensure_gateways(self.nodes.alive()):
            raise RuntimeError("the gateways did not start: " + "; ".join(
                f"node {node}: {why}" for node, why in failed.items()))

    async def _learner_told(self) -> None:
        """Tell the learner the running catalog; a learner that does not answer is told by the
        control loop (rounds.py): it must not keep clients from a map meanwhile."""
        try:
            await self.backend.learner().switch(self.catalog_text)
        except Exception:
            log.exception("the learner was not told catalog %s; the control loop tries again",
                          self.catalog_version)

    async def _save(self) -> None:
        """Write the state as it is now, on a thread (a directory fsyncs, Redis is a network
        call: neither may stall the long polls this loop serves), in the order asked."""
        self.store_claim.check()
        blob = state_blob(self)
        async with self._saving:  # FIFO: a later state is never overwritten by an earlier one
            await asyncio.to_thread(self.store.put_meta, STATE_KEY, blob)

    async def _create_shard(self, name: str | None = None, node: str | None = None) -> str:
        """Create a shard actor (a new name, or a saved one being brought back) on `node`,
        by default the first of the serving nodes with the fewest shards. A new name is saved
        (`starting`, with the next index) before its actor exists: a crash before the shard
        is saved as one leaves a name the resumed controller stops, and hands out no more."""
        self.store_claim.check()
        if name is None:
            name = shard_name(self._next_index)
            self._next_index += 1
            self.starting.add(name)
            if self.map is None:  # a first start saves nothing before its map: one that
                await self.backend.kill_shard(name)  # crashed may have left this name taken
            else:
                await self._save()
        if node is None:
            load = self.nodes.load(self.nodes.alive(), self.placement)
            node = min(load, key=load.__getitem__, default=None)
        try:
            await self.backend.create_shard(name, node, self.n_partitions, _seed_of(name),
                                            self.store_url, self.journal_policy,
                                            self.store_claim.owner)
        except Exception:
            await self.backend.kill_shard(name)  # not left pending on a node that went away
            raise
        await self._unless_lost(name)
        self.placement[name] = node
        self.starting.discard(name)  # saved as a shard from the next save on
        return name

    async def _unless_lost(self, name: str) -> None:
        """StoreInUse, the shard `name` killed, if the claim was lost while it came up: the
        stand-down (ControllerActor) stopped the shards it found, before this one."""
        if self.store_claim.lost():
            await self.backend.kill_shard(name)
            self.store_claim.check()

    async def _start_shard(self, name: str) -> None:
        """Have the shard recover its partitions from the store and serve them. A replacement
        (rounds.py) recovers those never snapshotted from the journal of the shard it
        replaces, at every start until its health says it serves, and is published once a
        start of it succeeds."""
        if self.map:  # Unreleased while a move's target may still adopt late what it serves
            await self._released_before_start(name)
            self._start_unheld(name)
        partitions = self.map.partitions_of(name) if self.map else []
        watches = set(self.channel_watches)  # a watch may change while the start runs
        changes = self._watch_changes
        self.incarnations[name] = await self.backend.shard(name).start(
            self.catalog_text, partitions, sorted(watches, key=str),
            self.map.version if self.map else 1, self.replacing.get(name),
            owner=self.store_claim.owner)
        await self._unless_lost(name)
        await self.lagging.started(name, watches, lambda: set(self.channel_watches),
                                   changed=self._watch_changes != changes)
        await self.endpoints.serve(name, self.nodes.spec, self.placement.get(name))
        if name in self.replacing:
            await self._publish()

    async def _publish(self) -> None:
        routable = self.map  # saved before clients see it: no routing by a map a crash undoes
        await self._save()
        self._routable = routable
        self._map_changes.announce()

    def routing(self) -> dict[str, Any]:
        """The map as clients take it: shard names and an owner index per partition."""
        pmap = self._routable
        names = pmap.shards_in_use()
        index = {n: i for i, n in enumerate(names)}
        owners = np.array([index[o] for o in pmap.owners], np.uint16)
        return {"version": pmap.version, "shards": names, "owners": owners.tobytes(),
                "catalog_version": self.catalog_version}

    async def shard_endpoints(self) -> dict[str, str]:
        """Each shard's own kairos.v1 endpoint (host:port), where it serves one (endpoints.py)."""
        return dict(self.endpoints.by_shard)

    async def get_map(self, known_version: int, timeout_s: float = LONG_POLL_S) -> dict | None:
        """Long poll: the map once its version differs from `known_version`; None on timeout."""
        if not await self._map_changes.wait_until(
                lambda: self._routable is not None and self._routable.version != known_version,
                timeout_s):
            return None
        return self.routing()

    # -- scaling -------------------------------------------------------------------------------

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
            # should it run on (cut off from Ray, not from the store), a late adopt of a move
            # writes no snapshot over its owner's: every write naming its journal is refused
            await asyncio.to_thread(self.store.fence_journal, name)
            await self.backend.kill_shard(name)
            self._forget_shard(name)

    def _forget_shard(self, name: str) -> None:
        self.placement.pop(name, None)
        self.incarnations.pop(name, None)
        self.endpoints.forget(name)
        self.lagging.forget(name)
        self.replacing.pop(name, None)
        self._start_unheld(name)

    # -- watches -------------------------------------------------------------------------------

    async def watch_channel(self, sink: str, channel: str, placement: str | None,
                            active: bool = True) -> None:
        """Recorded first, so shards that start later get it; a shard that does not answer
        now gets it from the control loop (not under the lock: a long reconfiguration must
        not hold up a watch stream's start)."""
        key = (sink, channel, placement)
        self._watch_changes += 1
        if active:
            self.channel_watches.add(key)
        else:
            self.channel_watches.discard(key)
        await self._save()
        await self.lagging.watch_channel(self.shards, (*key, active))

    async def _catch_up(self, names: list[str]) -> None:
        """Bring shards that answer again up to date: the catalog, channel watches, and the
        moves an interrupted round left. Those that did not answer it (`names` leaves them
        out, or they failed the settle) hold back the drains of their moves' nodes."""
        await self.lagging.commit_catalog(names, self.catalog_text, self.catalog_version)
        await self.lagging.replay_watches(names)
        involved = {s for m in self.moving for s in (m.source, m.target)} & set(self.placement)
        # else a shard known not to answer would hold the lock
        stuck = await self._settle() if involved <= set(names) else set()
        self._unanswered = (set(self.placement) - set(names)) | stuck

    # -- nodes ---------------------------------------------------------------------------------

    async def drain_node(self, node: str) -> dict[str, Any]:
        """Take `node` out while traffic flows: its gateway turns NOT_SERVING (and serves on
        for DRAIN_UNREADY_S at least, while probes take it out), its partitions move to the
        shards of the other nodes, then its shards and its gateway stop. Returns once the
        node holds nothing. NodeUnknown for a node that is not alive, NodeRefused for the last
        serving one and the controller's own. A drain a crash interrupted is finished by the
        control loop. Asked for again while it runs, or after it while the node stays drained,
        it answers that drain's result (drains.py)."""
        if self.nodes.disown(node):  # an operator drains it: theirs to remove, not ours
            await self._save()
        return await self._join_drain(node)

    async def _drain(self, node: str) -> dict[str, Any]:
        alive = self.nodes.alive()
        if node not in alive:
            raise NodeUnknown(f"{node} is not an alive node of this cluster")
        if node == self.home_node:
            raise NodeRefused(f"node {node} runs the controller and the learner: it cannot "
                              f"be drained")
        if self.nodes.serving(alive) == [node]:
            raise NodeRefused(f"node {node} is the last node that serves: nothing could take "
                              f"its partitions")
        started = asyncio.get_running_loop().time()
        self.nodes.draining.add(node)
        await self._save()  # a restarted controller keeps it out too, and finishes it
        await self.nodes.unready(node)
        async with self._reconfiguring:
            victims = [s for s, n in self.placement.items() if n == node]
            target = self._serving_shards()
            if victims and not target:  # its shards were all there were
                target = [await self._create_shard()]
                await self._start_shard(target[0])
            moved = await self._rebalance(target)
            await self._retire(victims)
        await asyncio.sleep(max(0.0, started + DRAIN_UNREADY_S
                                - asyncio.get_running_loop().time()))
        await self.nodes.stop_gateway(node)
        await self._save()
        log.warning("node %s is drained: %d partitions moved, shards %s stopped", node, moved,
                    victims)
        return {"node": node, "shards": victims, "moved": moved, "version": self.map.version}

    async def status(self) -> dict[str, Any]:
        return await cluster_status(self)
