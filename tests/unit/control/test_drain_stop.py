"""A drain under way ends with the control loop (runtime.stop's first step, a controller that
lost its store): shielded from its callers' cancels, it went on creating and stopping shards
while runtime.stop listed and stopped them."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from kairos.cluster.control import actor as actor_module
from kairos.cluster.control import controller as controller_module
from kairos.cluster.control.actor import ControllerActor
from kairos.cluster.control.drains import Drains
from kairos.cluster.transport.backend import Unavailable

from tests.support.waiting import until
from tests.unit.control.test_nodes import SPEC, Watched


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)
    monkeypatch.setattr(controller_module, "DRAIN_UNREADY_S", 0.0)
    monkeypatch.setattr(actor_module.ray, "get_runtime_context",
                        lambda: SimpleNamespace(get_node_id=lambda: "node-a"))


def test_stopping_the_loop_ends_the_drains_under_way(monkeypatch):
    async def main():
        backend = Watched()
        monkeypatch.setattr(actor_module, "RayBackend", lambda *classes: backend)
        actor = ControllerActor.__ray_metadata__.modified_class(None, 64, "memory",
                                                                gateways=SPEC, owner="ours")
        await actor.start(6)
        held, rebalance = asyncio.Event(), actor.controller._rebalance

        async def waits_on_a_shard(*args, **kwargs):
            await held.wait()
            return await rebalance(*args, **kwargs)
        monkeypatch.setattr(actor.controller, "_rebalance", waits_on_a_shard)
        call = asyncio.create_task(actor.drain_node("node-b"))
        await until(lambda: ("unready", "kairos-gateway-1") in backend.log, 5,
                    "the drain to begin")
        call.cancel()  # as the control loop's own call is, when the loop is cancelled
        await actor.stop_loop()
        assert actor.controller.drains.running() == set()
        backend.log.clear()
        held.set()
        await asyncio.sleep(0.1)
        assert backend.log == []  # nothing of it goes on: no freeze, no gateway stopped
    asyncio.run(main())


@pytest.mark.parametrize("call", [
    lambda actor: actor.drain_node("node-b"),
    lambda actor: actor.scale(8),
    lambda actor: actor.put_catalog("not even a catalog"),
    lambda actor: actor.rollback_catalog(),
], ids=["drain", "scale", "put_catalog", "rollback"])
def test_a_change_asked_for_after_the_loop_stopped_is_refused(monkeypatch, call):
    """A kairos drain sent again through a gateway that runtime.stop has not stopped yet (its
    relay was cut by the stop) started a drain that nothing cancelled: it moved partitions
    while runtime.stop listed and stopped the shards."""
    async def main():
        backend = Watched()
        monkeypatch.setattr(actor_module, "RayBackend", lambda *classes: backend)
        actor = ControllerActor.__ray_metadata__.modified_class(None, 64, "memory",
                                                                gateways=SPEC, owner="ours")
        await actor.start(6)
        await actor.stop_loop()
        backend.log.clear()
        placement = dict(actor.controller.placement)
        with pytest.raises(Unavailable, match="the controller is stopping"):
            await call(actor)
        await asyncio.sleep(0.05)
        assert backend.log == [] and actor.controller.placement == placement
    asyncio.run(main())


def test_no_drain_starts_once_the_drains_were_cancelled():
    """A DrainNode past the actor's check when the loop stops (its node's release saved
    first) would start its drain after the cancel."""
    async def main():
        drains = Drains(lambda node: False)
        await drains.cancel()
        started = []

        async def drain():
            started.append(True)
            return {}
        with pytest.raises(Unavailable, match="the controller is stopping"):
            await drains.join("node-b", drain)
        assert started == []
    asyncio.run(main())
