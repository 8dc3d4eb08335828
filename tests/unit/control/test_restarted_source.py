"""The source of a move whose target did not answer its release stays frozen (moves.py), but
only in its process's memory. A source Ray restarts, one taken up by a controller Ray
restarted, and a shard that replaces it when its node leaves start only once the target has
released the partitions: serving them earlier, while the target may still run the adopt that
timed out, would let that adopt's snapshot make the next recovery drop what was acknowledged
meanwhile. Ray-free (the Actors harness)."""
from __future__ import annotations

import asyncio
import logging

import pytest

from kairos.cluster.control import controller as controller_module, rounds
from kairos.cluster.control.partitions import partition_of

from tests.support.local_backend import LocalShard
from tests.unit.control.actors import Actors, ActorShard, controller_on, ingest

SOURCE, TARGET, HEIR = "kairos-shard-0000", "kairos-shard-0001", "kairos-shard-0002"
CUSTOMERS = [f"c{i}" for i in range(40)]


@pytest.fixture(autouse=True)
def no_grace(monkeypatch):
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)


@pytest.fixture
def frozen(monkeypatch) -> list[tuple[bytes, int]]:
    """The payloads the shards' freezes answered, with their map versions."""
    answered = []
    freeze = LocalShard.freeze

    async def kept(self, partitions, version):
        payload = await freeze(self, partitions, version)
        answered.append((payload, version))
        return payload

    monkeypatch.setattr(LocalShard, "freeze", kept)
    return answered


async def held_move(store: str):
    """One shard scaled to two: the adopt times out, and the target then answers no release."""
    backend = Actors()
    controller = await controller_on(backend, store, n_shards=1)
    assert set(await ingest(backend, CUSTOMERS, 0)) == {1}
    backend.fail.update({(TARGET, "adopt"): 1, (TARGET, "release"): 10**6})
    with pytest.raises(RuntimeError, match="handoffs failed"):
        await controller.scale(2)
    held = {m.partition for m in controller.moving}
    assert held and held <= set(backend.shards[SOURCE].leaving)
    return backend, controller, [c for c in CUSTOMERS if partition_of(c, 64) in held]


async def late_adopt_then_release(backend: Actors, controller, frozen, waiting: str) -> None:
    """The target runs the adopt that timed out, then answers again: `waiting` starts, and
    what it acknowledges survives its next restart."""
    backend.shards[TARGET].adopt(*frozen[0])
    backend.fail.clear()
    for _ in range(2):  # a target that failed the last round's settle is asked the next
        await controller.reconcile()
    assert not controller.moving and backend.shards[waiting] is not None
    assert controller.routing()["version"] == controller.map.version


async def acknowledged_survives_a_restart(backend: Actors, controller, owner: str,
                                          victims: list[str]) -> None:
    assert set(await asyncio.wait_for(ingest(backend, victims, 1), 10)) == {2}
    backend.restart(owner)
    await controller.reconcile()
    assert set(await asyncio.wait_for(ingest(backend, victims, 2), 10)) == {3}


def test_a_restarted_source_starts_once_its_target_released_the_held_partitions(
        tmp_path, frozen):
    async def main():
        backend, controller, victims = await held_move(str(tmp_path))
        backend.restart(SOURCE)
        for _ in range(2):
            await controller.reconcile()
            assert backend.shards[SOURCE] is None  # not serving what the target may adopt
        assert controller.moving
        await late_adopt_then_release(backend, controller, frozen, SOURCE)
        await acknowledged_survives_a_restart(backend, controller, SOURCE, victims)
    asyncio.run(main())


def test_a_source_restarted_while_the_controller_was_down_is_started_by_the_control_loop(
        tmp_path, frozen):
    async def main():
        backend, _, victims = await held_move(str(tmp_path))
        backend.restart(SOURCE)
        controller = await controller_on(backend, str(tmp_path), n_shards=2)  # takes it up
        assert controller.ready and backend.shards[SOURCE] is None
        await late_adopt_then_release(backend, controller, frozen, SOURCE)
        await acknowledged_survives_a_restart(backend, controller, SOURCE, victims)
    asyncio.run(main())


def test_the_heir_of_a_source_whose_node_left_starts_once_the_target_released(
        tmp_path, frozen):
    async def main():
        backend, controller, victims = await held_move(str(tmp_path))
        backend.node_names.remove(controller.placement[SOURCE])
        await controller.reconcile()
        assert SOURCE not in controller.shards and HEIR in controller.shards
        assert backend.shards[HEIR] is None  # replaced, not started
        await late_adopt_then_release(backend, controller, frozen, HEIR)
        await acknowledged_survives_a_restart(backend, controller, HEIR, victims)
    asyncio.run(main())


@pytest.mark.parametrize("n_shards", [2, 3])
def test_a_fresh_cluster_starts_the_source_once_its_target_started_beside_it(
        tmp_path, monkeypatch, n_shards):
    """Ray started afresh on the saved store: every process is new, and the target, recovering
    beside the source, refuses its release until it started. The take-up asks again once it
    did, so the source serves at once and a scale that follows the resume does not fail on
    the move (k8s: a failed `kairos start` restarts the head, into the same state)."""
    async def main():
        first, _, victims = await held_move(str(tmp_path))
        first.fail.clear()
        start = ActorShard.start

        async def recovering(self, *args, **kwargs):
            if self.name == TARGET:
                await asyncio.sleep(0.2)
            return await start(self, *args, **kwargs)

        monkeypatch.setattr(ActorShard, "start", recovering)
        backend = Actors()
        backend.store = first.store  # the store outlives the cluster
        controller = await controller_on(backend, str(tmp_path), n_shards=n_shards)
        assert backend.shards[SOURCE] is not None and not controller.moving
        assert len(controller.shards) == n_shards
        assert set(await asyncio.wait_for(ingest(backend, victims, 1), 10)) == {2}
    asyncio.run(main())


def test_a_source_waiting_on_its_target_is_said_once_not_every_round(tmp_path, frozen, caplog):
    async def main():
        backend, controller, _ = await held_move(str(tmp_path))
        backend.restart(SOURCE)
        caplog.clear()
        await controller.reconcile()
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("starts once" in m for m in said) and any("restarted" in m for m in said)
        caplog.clear()
        for _ in range(5):
            await controller.reconcile()
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        await late_adopt_then_release(backend, controller, frozen, SOURCE)
        assert not controller._held_starts  # a wait again is said at once
    asyncio.run(main())


def test_a_target_that_keeps_a_restarted_source_down_is_replaced_after_a_while(
        tmp_path, monkeypatch):
    """The source, restarted, serves none of its partitions while it waits; a target that does
    not release them for HELD_TARGET_S (hung on a node that stays) is replaced as one whose
    node left, its journal fenced, and the source starts."""
    monkeypatch.setattr(rounds, "HELD_TARGET_S", 0.3)

    async def main():
        backend, controller, victims = await held_move(str(tmp_path))
        backend.restart(SOURCE)
        for _ in range(2):
            await controller.reconcile()
        assert backend.shards[SOURCE] is None and TARGET in controller.shards
        await asyncio.sleep(0.35)
        await controller.reconcile()
        assert TARGET not in controller.shards and HEIR in controller.shards
        await controller.reconcile()
        assert backend.shards[SOURCE] is not None and not controller.moving
        await acknowledged_survives_a_restart(backend, controller, SOURCE, victims)
    asyncio.run(main())
