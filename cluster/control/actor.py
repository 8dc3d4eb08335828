"""The controller as a named, detached Ray actor (CONTROLLER_NAME, started by runtime.start()):
the control logic of controller.py on a RayBackend that creates shards and gateways, and the
control loop that runs its reconcile rounds and, when it is on, autoscaling (autoscaling.py).
Ray restarts it (max_restarts=-1): the first call after a restart takes up the state the
previous incarnation saved in the store, whole or not at all; one that fails is tried again by
the next call and by the control loop, which runs from then on. A controller whose claim on
the store is lost (ownership.py) stops being the cluster's: its loop stops, and so do the
shards and gateways it runs, and every call after is refused (StoreInUse)."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray

from kairos.cluster.control.autoscaling import Autoscaling
from kairos.cluster.control.controller import Controller
from kairos.cluster.control.nodes import GatewaySpec
from kairos.cluster.control.pace import IDLE_ROUND_S, Pace
from kairos.cluster.gateway.actor import GatewayActor
from kairos.cluster.settings import CONTROL_LOOP_S, CONTROLLER_NAME, LONG_POLL_S, SHARDS_PER_CPU
from kairos.cluster.shard.actor import ShardActor
from kairos.cluster.transport.backend import Unavailable
from kairos.cluster.transport.ray_backend import RayBackend

log = logging.getLogger("kairos.controller")


@ray.remote(num_cpus=0, max_restarts=-1)
class ControllerActor:
    """Started as CONTROLLER_NAME by runtime.start()."""

    def __init__(self, catalog_text: str | None, n_partitions: int, store_url: str = "memory",
                 journal_policy: str = "fsync", gateways: GatewaySpec | None = None,
                 shards_per_cpu: float = SHARDS_PER_CPU, *, owner: str):
        """`owner`: the cluster's token (ownership.new_owner), which Ray passes again when it
        restarts this: a controller's own would be another cluster's to the store it holds."""
        self.controller = Controller(RayBackend(ShardActor, GatewayActor), catalog_text,
                                     n_partitions, store_url, journal_policy, gateways,
                                     shards_per_cpu, ray.get_runtime_context().get_node_id(),
                                     owner)
        self.autoscaling = Autoscaling(self.controller.backend)
        # how often the control loop's rounds run (pace.py)
        self.pace = Pace(self.controller.backend.nodes, CONTROL_LOOP_S, IDLE_ROUND_S)
        self._loop_task: asyncio.Task | None = None
        self._resuming = asyncio.Lock()  # one start or resume at a time
        self._resume_task: asyncio.Task | None = None
        self._guard: asyncio.Task | None = None  # stands down once the claim is lost
        self._stopping = False  # the loop ended for good: no drain, scale or catalog change

    async def claim_store(self) -> None:
        """runtime.start's first call: the store claimed before the learner is created (it
        writes to the store as it starts); StoreInUse while another cluster holds it."""
        self._guard_claim()
        await self.controller.store_claim.claim()

    async def start(self, n_shards: int) -> dict[str, Any]:
        self._guard_claim()
        async with self._resuming:
            try:
                await self.controller.start(n_shards)
            finally:  # a gateway that did not start fails the call, and the loop retries it
                if self.controller.ready:
                    self._start_loop()
        return self.controller.routing()

    async def _ready(self) -> Controller:
        """After Ray restarted this actor (start() is not called again), take up the state
        the previous incarnation saved: whole, or not at all and again at the next call. It
        runs in a task of its own, which callers await shielded: the first call is often a
        long poll for the map, which its caller cancels when it gives up (ray.cancel), and
        that must not cancel a take-up half-way through the shards' starts. StoreInUse once
        the claim on the store is lost."""
        self.controller.store_claim.check()
        if not self.controller.ready:
            if self._resume_task is None or self._resume_task.done():
                self._resume_task = asyncio.get_running_loop().create_task(self._resume_once())
            try:
                await asyncio.shield(self._resume_task)
            except asyncio.CancelledError:
                if self._resume_task.cancelled():  # by the stand-down, not this call's caller
                    self.controller.store_claim.check()
                raise
        return self.controller

    async def _resume_once(self) -> None:
        self._guard_claim()
        async with self._resuming:
            if not self.controller.ready:
                await self._resume()

    async def _resume(self) -> None:
        saved = True
        try:
            saved = await self.controller.resume()
        finally:  # a resume that failed is tried again by the loop's rounds too
            if saved:
                self._start_loop()
        if not saved:
            raise RuntimeError("the controller has not been started")

    def _start_loop(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._control_loop())

    async def _end_loop(self) -> None:
        """Stop the control loop for good: started if it was not, so that none starts later.
        The drains under way end with it: shielded from their callers' cancels, they would go
        on creating and stopping shards while the shards are stopped (drains.py)."""
        self._stopping = True
        self._start_loop()
        self._loop_task.cancel()
        await self.controller.drains.cancel()

    async def _changing(self) -> Controller:
        """For the calls that change the cluster (a drain, a scale, a catalog): Unavailable once
        the loop ended for good. runtime.stop lists and stops the shards next, and such a call
        (a kairos drain sent again through a gateway not stopped yet) would move partitions and
        create shards meanwhile, with nothing to cancel it. Nor does it start a take-up then."""
        self.controller.store_claim.check()  # after a stand-down: StoreInUse, which says why
        self._unless_stopping()
        self.pace.wake()  # what the call leaves unsettled is retried every CONTROL_LOOP_S
        controller = await self._ready()
        self._unless_stopping()  # the loop ended while a take-up ran
        return controller

    def _unless_stopping(self) -> None:
        if self._stopping:
            raise Unavailable("the controller is stopping")

    def _guard_claim(self) -> None:
        if self._guard is None:
            self._guard = asyncio.get_running_loop().create_task(self._stand_down())

    async def _stand_down(self) -> None:
        """Once the claim on the store is lost, another cluster may hold the store: this one's
        writers stop, with the calls runtime.stop makes. The loop first (its rounds save the
        state, start shards and gateways), then the shards (they write the store), then the
        gateways, gracefully. The learner saves nothing more (a Ray restart of it forgets that).
        A take-up under way is cancelled first (it places the shards it finds alive), and the
        shards its saved map names are stopped too. A shard that a call under way (scale, a
        round) creates or starts from now on is killed by that call (Controller._unless_lost).
        """
        why = await self.controller.store_claim.until_lost()
        log.error("%s: the controller stops its shards and gateways", why)
        await self._end_loop()
        controller = self.controller
        # before the cancel: a take-up that fails forgets what it took up, and it places the
        # shards its saved map names one by one
        names = [*controller.shards, *(controller.map.shards_in_use() if controller.map else [])]
        if self._resume_task is not None:
            self._resume_task.cancel()
            await asyncio.wait([self._resume_task])
        try:
            await controller.backend.learner().stand_down()
        except Exception:  # the shards are stopped all the same
            log.exception("telling the learner to save nothing more failed")
        for name in dict.fromkeys([*names, *controller.shards]):
            try:
                await controller.backend.kill_shard(name)
            except Exception:  # the others are stopped all the same
                log.exception("stopping %s failed", name)
        for node in list(controller.nodes.gateways):
            try:
                await controller.nodes.stop_gateway(node)
            except Exception:
                log.exception("stopping the gateway of node %s failed", node)

    async def _control_loop(self) -> None:
        while True:
            await self.pace.next_round()
            try:
                controller = await self._ready()
            except Exception:
                log.exception("taking up the saved cluster failed; trying again")
                self.pace.ran(False, None)
                continue
            try:
                await controller.reconcile()
            except Exception:
                log.exception("control loop round failed; trying again")
            try:
                await self.autoscaling.round(controller)
            except Exception:
                log.exception("autoscaling round failed; trying again")
            # autoscaling measures the load from each round's health answers
            self.pace.ran(controller.settled and not self.autoscaling.limits.enabled,
                          controller.round_alive)

    async def nudge(self) -> None:
        """The control round now, not at its next turn (pace.py): called by a shard or the
        learner that Ray restarted (to be started, or told the catalog), and by a shard
        whose journal is no longer its own."""
        self.pace.wake()

    async def _routing(self) -> Controller:
        """For what the gateways that shards and nodes serve ask as they start (the map, the
        catalog): while a start or a resume runs it is answered as it stands once the state
        is taken up (the map and its catalog), not after it, since the start waits for them
        (a shard it starts serves its own endpoint). The map is a long poll, answered once
        one is published. Before the state is taken up: Unavailable (tried again)."""
        self.controller.store_claim.check()
        if self.controller.ready:
            return self.controller
        if self._resuming.locked():
            if self.controller.map is None:
                raise Unavailable(f"{CONTROLLER_NAME} is taking up the cluster")
            return self.controller
        return await self._ready()

    async def get_map(self, known_version: int, timeout_s: float = LONG_POLL_S):
        return await (await self._routing()).get_map(known_version, timeout_s)

    async def shard_endpoints(self) -> dict[str, str]:
        """Unavailable until the cluster is whole: a gateway keeps the endpoints it knew."""
        if not self.controller.ready and self._resuming.locked():
            raise Unavailable(f"{CONTROLLER_NAME} is taking up the cluster")
        return await (await self._ready()).shard_endpoints()

    async def scale(self, n_shards: int) -> dict[str, Any]:
        return await (await self._changing()).scale(n_shards)

    async def put_catalog(self, catalog_text: str, evidence: dict[str, str] | None = None,
                          expected_version: str | None = None) -> str:
        controller = await self._changing()
        return await controller.put_catalog(catalog_text, evidence, expected_version)

    async def rollback_catalog(self, to_version: str | None = None) -> str:
        return await (await self._changing()).rollback_catalog(to_version)

    async def get_catalog(self) -> dict[str, Any]:
        return await (await self._routing()).get_catalog()

    async def watch_channel(self, sink: str, channel: str, placement: str | None,
                            active: bool = True) -> None:
        self.pace.wake()  # a shard that missed it is caught up by the rounds
        await (await self._ready()).watch_channel(sink, channel, placement, active)

    async def drain_node(self, node: str) -> dict[str, Any]:
        return await (await self._changing()).drain_node(node)

    async def status(self) -> dict[str, Any]:
        return await (await self._ready()).status()

    async def stop_loop(self) -> bool:
        """runtime.stop's first step: its rounds would start the gateways and shards it stops
        again, and save the state. Whether the claim on the store is lost: then the learner's
        last merges are not saved (the store may be another cluster's)."""
        await self._end_loop()
        return self.controller.store_claim.lost() is not None

    async def release_store(self) -> None:
        """Give the store up (runtime.stop, once the writers are stopped, before the kill): a
        kill does not wait for this process to end, which drops a directory's lock, and
        leaves a lease to run out."""
        await self.controller.store_claim.release()
