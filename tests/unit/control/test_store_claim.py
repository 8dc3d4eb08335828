"""Two clusters on one store would write the same shards' journals: the controller claims its
store before its cluster writes anything (ownership.py), and a second cluster's controller,
its own owner token, refuses to start, or to take up what the first saved, while the first
holds the store: it starts no shard and writes nothing. Once the first gives the store up (it
stops), the second starts there and takes up where the first stopped. A controller that lost
its claim stops its cluster's writers and answers nothing more."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from kairos.cluster.control import actor as actor_module
from kairos.cluster.control.actor import ControllerActor
from kairos.cluster.control.controller import IN_PROCESS_OWNER
from kairos.cluster.control.nodes import GatewaySpec
from kairos.cluster.storage.ownership import StoreClaim
from kairos.cluster.storage.store import StoreInUse

from tests.support.waiting import until
from tests.unit.control.actors import Actors, ActorShard, controller_on


@pytest.fixture
def actor_on(monkeypatch):
    """ControllerActor's own class (not Ray's) on a LocalBackend, for the cluster `owner`."""
    monkeypatch.setattr(actor_module.ray, "get_runtime_context",
                        lambda: SimpleNamespace(get_node_id=lambda: "node-a"))

    def make(backend: Actors, store: str, owner: str, **options):
        monkeypatch.setattr(actor_module, "RayBackend", lambda *classes: backend)
        return ControllerActor.__ray_metadata__.modified_class(None, 64, store, owner=owner,
                                                               **options)

    return make


def files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def test_a_second_cluster_on_a_store_another_holds_starts_and_writes_nothing(tmp_path,
                                                                             actor_on):
    async def main():
        first = actor_on(Actors(), str(tmp_path), "first")
        await first.claim_store()  # runtime.start's first step
        backend = Actors()
        second = actor_on(backend, str(tmp_path), "second")
        with pytest.raises(StoreInUse):  # on a store still empty: its first write would show
            await second.start(2)
        assert list(files(tmp_path)) == ["owner.lock"]  # no outcome secret, no state
        await first.start(2)
        written = files(tmp_path)
        with pytest.raises(StoreInUse) as refused:
            await second.start(2)
        assert str(refused.value).startswith(
            f"the store {tmp_path} is in use by another Kairos cluster (its controller: host ")
        assert f"pid {os.getpid()}, since" in str(refused.value)
        with pytest.raises(StoreInUse):  # as after Ray restarted it: the first's, not its own
            await second.controller.resume()
        assert not backend.shards and files(tmp_path) == written
        assert await first.status()  # the first serves on

        await first.release_store()  # it stops
        routing = await second.start(2)
        assert routing["shards"] == sorted(first.controller.shards)  # taken up
    asyncio.run(main())


def test_a_controller_actor_claims_with_the_owner_it_is_given_and_only_that(tmp_path, actor_on):
    """One of its process's own would make the controller Ray restarts (another process)
    another cluster to the store its first incarnation holds: refused, or made to wait out
    its own lease."""
    with pytest.raises(TypeError, match="owner"):
        ControllerActor.__ray_metadata__.modified_class(None, 64, str(tmp_path))
    assert actor_on(Actors(), str(tmp_path), "ours").controller.store_claim.owner == "ours"


def test_a_controller_that_lost_its_claim_stops_its_cluster_and_writes_nothing_more(
        tmp_path, actor_on, monkeypatch):
    """A renewal of its claim found another cluster's lease (its own ran out unrenewed, and
    another cluster claimed the store meanwhile): its loop, its shards and its gateways stop,
    and what it is asked, or was doing, fails rather than write."""
    monkeypatch.setattr(actor_module, "CONTROL_LOOP_S", 0.01)

    async def main():
        backend = Actors()
        actor = actor_on(backend, str(tmp_path), "first", gateways=GatewaySpec("127.0.0.1", 0))
        controller = actor.controller
        controller.store_claim = StoreClaim(controller.store, "first", lease_s=1.0, renew_s=0.1)
        await actor.start(2)
        assert len(backend.shards) == 2 and len(backend.gateways) == 3
        lose_claim(controller, monkeypatch)  # as a Redis lease another took
        await until(lambda: not backend.shards and not backend.gateways, 5,
                    "its shards and gateways stopped")
        assert backend.learner_stood_down  # it saves nothing more
        written = files(tmp_path)
        for call in (actor.status(), actor.scale(3), controller.scale(3),
                     controller.watch_channel("sink", "email", None)):
            with pytest.raises(StoreInUse, match="lost its store to another"):
                await call
        await asyncio.sleep(0.1)  # rounds of its loop, had it gone on
        assert actor._loop_task.done() and not backend.shards and files(tmp_path) == written
        assert await actor.stop_loop()  # runtime.stop: the learner's merges are not saved
    asyncio.run(main())



def lose_claim(controller, monkeypatch) -> None:
    """A renewal of the claim finds another cluster's lease from now on."""
    def taken(owner, holder):
        raise StoreInUse("the store is in use by another Kairos cluster (its controller: the "
                         "second cluster)")
    monkeypatch.setattr(controller.store, "claim", taken)


def test_a_shard_a_scale_creates_while_the_controller_stands_down_is_not_left_running(
        tmp_path, actor_on, monkeypatch):
    """The stand-down stops the shards it finds; one that came up after it looked is killed
    by the call that created it, which fails: none is left for `kairos down` to miss."""
    async def main():
        backend = Actors()
        actor = actor_on(backend, str(tmp_path), "first")
        controller = actor.controller
        controller.store_claim = StoreClaim(controller.store, "first", lease_s=1.0, renew_s=0.1)
        await actor.start(2)
        creating, created = asyncio.Event(), asyncio.Event()
        create = backend.create_shard

        async def held_back(name, node, *args):
            creating.set()
            await created.wait()
            await create(name, node, *args)
        monkeypatch.setattr(backend, "create_shard", held_back)
        scale = asyncio.ensure_future(actor.scale(3))
        await creating.wait()
        lose_claim(controller, monkeypatch)
        await until(lambda: not backend.shards, 5, "the shards it ran stopped")
        created.set()
        with pytest.raises(StoreInUse, match="lost its store to another"):
            await scale
        assert not backend.shards
    asyncio.run(main())


def test_a_take_up_under_way_when_the_claim_is_lost_leaves_no_shard_running(
        tmp_path, actor_on, monkeypatch):
    """Ray restarted the controller, and its take-up of the saved cluster is half-way when the
    claim is lost: the stand-down cancels it, and stops the shards it placed and the ones the
    saved map names that it had not reached yet."""
    async def main():
        backend = Actors()
        first = await controller_on(backend, str(tmp_path), 2)
        again = actor_on(backend, str(tmp_path), IN_PROCESS_OWNER)
        controller = again.controller
        controller.store_claim = StoreClaim(controller.store, IN_PROCESS_OWNER, lease_s=1.0,
                                            renew_s=0.1)
        asked, answered = asyncio.Event(), asyncio.Event()
        health = ActorShard.health

        async def held_back(shard):
            if shard.name == first.shards[1]:
                asked.set()
                await answered.wait()
            return await health(shard)
        monkeypatch.setattr(ActorShard, "health", held_back)
        status = asyncio.ensure_future(again.status())
        await asked.wait()
        assert list(controller.placement) == [first.shards[0]]
        lose_claim(controller, monkeypatch)
        await until(lambda: not backend.shards, 5, "the shards stopped")
        answered.set()
        with pytest.raises(StoreInUse, match="lost its store to another"):
            await status
        await asyncio.sleep(0.1)  # what the take-up would do next, had it gone on
        assert not backend.shards
    asyncio.run(main())
