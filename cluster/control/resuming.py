"""Controller's take-up of a saved cluster (`resume`): the state saved.py reads, the shards
that serve kept (told this controller's token), the others created again (no denser than
they were placed: takeup.py) and started all at once. A part of Controller (controller.py),
which holds the map, the placement, the lock this runs under, `_create_shard`,
`_start_shard`, `_publish` and `_catch_up`."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgpack

from kairos.core.compiler import compiled_from_text

from kairos.cluster.control.endpoints import ShardEndpoints
from kairos.cluster.control.lagging import Lagging
from kairos.cluster.control.moves import Unreleased
from kairos.cluster.control.saved import STATE_KEY, take_up
from kairos.cluster.control.takeup import nodes_to_host
from kairos.cluster.transport.backend import Unavailable

log = logging.getLogger("kairos.controller")


class Resuming:
    """A resume: whole or not at all."""

    async def resume(self) -> bool:
        """Take up the state saved in the store, whole or not at all: a failure leaves nothing
        taken up, so that the next call (ControllerActor) resumes again; whether there was
        one. The catalog is the saved one: what this controller was constructed with is the
        first start's (start() applies it). StoreInUse while another cluster holds the
        store: what it saved is not this cluster's to take up."""
        await self.store_claim.claim()
        blob = await asyncio.to_thread(self.store.get_meta, STATE_KEY)
        if blob is None:
            return False
        state = msgpack.unpackb(blob, raw=False)
        if state["n_partitions"] != self.n_partitions:
            raise ValueError(f"the store {self.store_shown} holds {state['n_partitions']} "
                             f"partitions, not {self.n_partitions}: start with the same count "
                             f"or another store")
        async with self._reconfiguring:
            self._clear()  # what an earlier attempt that failed left
            try:
                await self._take_up(state)
            except BaseException:
                self._clear()
                raise
        return True

    def _clear(self) -> None:
        """Nothing taken up: no map to route by, no shard known."""
        self.map = self._routable = None
        self.placement, self.incarnations, self.replacing = {}, {}, {}
        self.moving, self.thaws_published = [], set()
        self.lagging = Lagging(self.backend)
        self.endpoints = ShardEndpoints(self.backend)
        self.ready = False

    async def _take_up(self, state: dict[str, Any]) -> None:
        # compiled on a thread: a large catalog takes seconds, and this loop serves long polls
        version = (await asyncio.to_thread(compiled_from_text, state["catalog"])).version
        names = take_up(self, state, version)  # every shard that existed, owning or retiring
        if self._requested_gateways is not None:
            self.nodes.spec = self._requested_gateways
        log.warning("resuming the cluster saved in %s: map version %d, %d shards",
                    self.store_shown, self.map.version, len(names))
        # a move's target may hold what it adopted (settled below); a replacement may own
        # nothing yet
        kept = {m.target for m in self.moving} | set(self.replacing)
        # retiring, created for a scale and given nothing yet, or created and not saved: its
        # actor may run on (detached), its name taken
        for name in sorted({n for n in names if n not in self.map.owners and n not in kept}
                           | (self.starting - set(names))):
            await self.backend.kill_shard(name)
            await asyncio.to_thread(self.store.drop_journal, name)
        self.starting = set()
        serving, starting, missing, told = [], [], [], []
        owner = self.store_claim.owner
        for name in [n for n in names if n in self.map.owners or n in kept]:
            try:
                health = await self.backend.shard(name).health()
            except Unavailable:
                health = None
            if health is not None and health.get("started"):
                self.placement[name] = health.get("node")
                self.incarnations[name] = health["incarnation"]
                self.replacing.pop(name, None)  # it recovered what it replaced
                if health.get("catalog_version") != self.catalog_version:
                    self.lagging.catalog.add(name)  # the switch was interrupted
                if health.get("owner", owner) != owner:  # an earlier controller's token
                    told.append(name)
                serving.append(name)
                continue
            if health is None:
                missing.append(name)
            else:  # it answers, not serving yet (Ray restarted it, or it is rebuilding)
                self.placement[name] = health.get("node")
            starting.append(name)
        # not all on the first node back from a full restart, where no shard answered (none
        # placed). A state without nodes_run waits for the density alone: the nodes it knew,
        # where the count starts (saved.py), may be fewer for a node away at its last save
        await nodes_to_host(self.nodes, bool(self.placement), len(missing),
                            state.get("density"), state.get("nodes_run"), self.store_claim)
        for name in missing:  # one at a time: a shard created is placed by the ones before
            await self._create_shard(name)
        # kept serving, each checks this controller's claim from its next rebuild on: the
        # claim of the one it was started by is gone for good (its rebuild would be refused)
        served = asyncio.gather(*(self.backend.shard(name).set_owner(owner) for name in told),
                                *(self.endpoints.serve(name, self.nodes.spec,
                                                       self.placement[name])
                                  for name in serving), return_exceptions=True)
        unreleased, failed = await self._start_all(starting)
        failed += [r for r in await served if isinstance(r, BaseException)]
        for held in unreleased:  # the control loop's
            log.warning("taking up the cluster: %s; the control loop starts it then", held)
        for exc in failed[1:]:
            log.error("taking up the cluster: %s", exc)
        if failed:
            raise failed[0]
        await self._publish()
        await self._learner_told()  # after: a learner that does not answer delays no map
        try:
            await self._catch_up(self.shards)
        except Exception:
            log.exception("finishing what the previous controller left failed; the control "
                          "loop tries again")
        self.ready = True

    async def _start_all(self, names: list[str]) -> tuple[list[Unreleased], list[BaseException]]:
        """Start `names` all at once, as a new cluster's (each may take KAIROS_SHARD_START_S to
        recover: one after another they would outlast a pod's startup probe); the Unreleased
        left, and the other failures. A source of a move not settled asks its target, starting
        beside it, for the release while the target still recovers, which refuses it: those
        are started again while a pass starts one more (a chain of moves takes a pass a link).
        Else a fresh Ray cluster, where no process could adopt late, would leave the sources
        down until the control loop's next round, and fail a scale that follows the resume."""
        while True:
            results = await asyncio.gather(*(self._start_shard(name) for name in names),
                                           return_exceptions=True)
            unreleased = [r for r in results if isinstance(r, Unreleased)]
            failed = [r for r in results
                      if isinstance(r, BaseException) and not isinstance(r, Unreleased)]
            if failed or len(unreleased) in (0, len(names)):
                return unreleased, failed
            names = [n for n, r in zip(names, results) if isinstance(r, Unreleased)]
