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
