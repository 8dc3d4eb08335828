"""The control loop's pace (issue 17: idle CPU): while its rounds find the cluster settled it
waits longer between them, up to IDLE_ROUND_S, and still runs one within CONTROL_LOOP_S of a
nudge (a process Ray restarted), of a node joining or leaving, or of a round not settled."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from kairos.cluster.control import actor as actor_module
from kairos.cluster.control.actor import ControllerActor
from kairos.cluster.control.pace import Pace

from tests.unit.control.actors import Actors, controller_on

EVERY_S = 0.02


def test_settled_rounds_wait_longer_up_to_the_idle_wait_and_an_unsettled_one_resets_it():
    pace = Pace(lambda: ["a"], 1.0, 8.0)
    waits = []
    for settled in (True, True, True, True, True, False):
        pace.ran(settled, ["a"])
        waits.append(pace.wait_s)
    assert waits == [2.0, 4.0, 8.0, 8.0, 8.0, 1.0]


async def _waited(pace: Pace) -> float:
    started = time.monotonic()
    await pace.next_round()
    return time.monotonic() - started


def test_a_nudge_or_a_node_that_joined_runs_the_round_before_the_idle_wait():
    nodes = ["a"]

    async def main():
        pace = Pace(lambda: list(nodes), EVERY_S, 5.0)
        for _ in range(10):
            pace.ran(True, ["a"])
        asyncio.get_running_loop().call_later(0.1, pace.wake)
        assert await _waited(pace) < 1.0
        assert pace.wait_s == EVERY_S  # and every CONTROL_LOOP_S from then
        for _ in range(10):
            pace.ran(True, ["a"])
        asyncio.get_running_loop().call_later(0.1, nodes.append, "b")
        assert await _waited(pace) < 1.0
    asyncio.run(main())


def test_a_round_leaves_the_cluster_settled_only_once_a_restarted_shard_serves(tmp_path):
    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path))
        await controller.reconcile()
        assert controller.settled and set(controller.round_alive) == set(backend.nodes())
        backend.restart(controller.shards[1])  # Ray restarted it: it answers, not started
        await controller.reconcile()  # which starts it
        assert not controller.settled
        await controller.reconcile()
        assert controller.settled
    asyncio.run(main())


def test_an_idle_loop_runs_fewer_rounds_and_a_nudge_starts_a_restarted_shard_at_once(
        tmp_path, monkeypatch):
    monkeypatch.setattr(actor_module, "CONTROL_LOOP_S", EVERY_S)
    monkeypatch.setattr(actor_module, "IDLE_ROUND_S", 30.0)
    monkeypatch.setattr(actor_module.ray, "get_runtime_context",
                        lambda: SimpleNamespace(get_node_id=lambda: "node-a"))
    backend = Actors()
    monkeypatch.setattr(actor_module, "RayBackend", lambda *classes: backend)
    rounds = []
    reconcile = actor_module.Controller.reconcile

    async def counted(controller):
        rounds.append(time.monotonic())
        await reconcile(controller)
    monkeypatch.setattr(actor_module.Controller, "reconcile", counted)

    async def main():
        actor = ControllerActor.__ray_metadata__.modified_class(None, 64, str(tmp_path),
                                                               owner="ours")
        await actor.start(2)
        await asyncio.sleep(1.0)
        assert len(rounds) < 12  # 50 at one every CONTROL_LOOP_S
        while actor.pace.wait_s < 2.0:
            await asyncio.sleep(0.05)
        ran = len(rounds)
        while len(rounds) == ran:  # a round just ran: the next one waits 2 s or more
            await asyncio.sleep(0.01)
        victim = actor.controller.shards[0]
        backend.restart(victim)
        await actor.nudge()
        await asyncio.sleep(0.5)
        assert backend.shards[victim] is not None  # started again by a round at once
        actor._loop_task.cancel()
    asyncio.run(main())
