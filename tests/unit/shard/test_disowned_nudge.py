"""A shard whose journal is no longer its own tells the controller once, not at every metrics
flush (review rev-idle M1: with the control loop woken by each nudge, K such shards ran K
rounds a second, each asking every shard its health, for as long as they stayed down); and
asking Ray whether this actor was restarted, which reads Ray's GCS, never raises out of an
actor's constructor (M2: Ray restarts no actor whose constructor raised)."""
from __future__ import annotations

import asyncio

import ray

from kairos.cluster.shard import actor as shard_actor
from kairos.cluster.shard.actor import ShardActor
from kairos.cluster.transport import ray_backend

Actor = ShardActor.__ray_metadata__.modified_class.__ray_actor_class__


class Host:
    def __init__(self) -> None:
        self.shard, self.recovery = None, {}


class Backend:
    def __init__(self) -> None:
        self.nudges = 0

    def nudge_controller(self) -> None:
        self.nudges += 1


def test_a_disowned_shard_nudges_the_controller_once_an_episode(monkeypatch):
    monkeypatch.setattr(shard_actor, "METRICS_FLUSH_S", 0.001)
    a = object.__new__(Actor)
    a.host, a.backend, a._api, a._told_disowned = Host(), Backend(), None, False

    async def flushes(disowned: bool, n: int = 20) -> int:
        a.host.recovery["disowned"] = disowned
        before = a.backend.nudges
        loop = asyncio.ensure_future(a._flush_metrics())
        await asyncio.sleep(0.001 * n)
        loop.cancel()
        return a.backend.nudges - before

    async def episodes() -> list[int]:
        return [await flushes(True), await flushes(True), await flushes(False),
                await flushes(True)]

    assert asyncio.run(episodes()) == [1, 0, 0, 1]


def test_asking_ray_whether_restarted_never_raises(monkeypatch):
    class Context:
        @property
        def was_current_actor_reconstructed(self) -> bool:
            raise ray.exceptions.RaySystemError("Failed to connect to GCS")

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", Context)
    assert ray_backend.restarted() is True  # a needless nudge: a round, not a lost shard
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert ray_backend.restarted() is False
