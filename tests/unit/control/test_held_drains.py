"""What a move held by a target that does not answer its release (test_held_moves.py) leaves
to the control loop: a drain of one of its shards' node waits, without a retry each round,
until the shard answers or its node leaves, while the node's other partitions move around
the move, asking the shard that did not answer nothing; a scale-down stops the shards it
emptied before it met the move; and a settle that thaws nothing publishes no new map, while
one that sent a thaw does, even when the thaw's answer was lost. A node that joins
with more shards than partitions is known once its rebalance ends (rounds.py `_grow`), so
that it is not joined again every round. Ray-free (LocalBackend)."""
from __future__ import annotations

import asyncio
import logging

import pytest

from kairos.cluster.control import controller as controller_module
from kairos.cluster.control.controller import Controller
from kairos.cluster.control.learner import Learner
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import default_compiled

from kairos.cluster.transport.backend import Unavailable

from tests.unit.control.test_held_moves import SOURCE, TARGET, held_move
from tests.unit.control.test_interrupted import (Crashing, Hooked, assert_one_owner_each,
                                                 ingest_all, started)

THIRD = "kairos-shard-0002"


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)
    monkeypatch.setattr(controller_module, "DRAIN_UNREADY_S", 0.0)


def _records(caplog, level: int, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= level and text in r.getMessage()]


def test_a_catch_up_that_thaws_nothing_publishes_no_new_map(tmp_path):
    async def main():
        backend, controller, held = await held_move(str(tmp_path), 10**6)
        version, releases = controller.map.version, backend.fail[(TARGET, "release")]
        for _ in range(3):
            await controller.reconcile()
        assert backend.fail[(TARGET, "release")] == releases - 3  # asked each round
        assert controller.map.version == version == controller.routing()["version"]
        assert {m.partition for m in controller.moving} == held
    asyncio.run(main())


def test_a_thaw_whose_answer_was_lost_publishes_the_map_past_the_freeze(tmp_path, monkeypatch):
    async def main():
        backend, controller, held = await held_move(str(tmp_path), 1)
        frozen_at = controller.routing()["version"]
        thaw = Hooked.thaw

        async def lost(self, partitions, version):  # it runs, its answer does not come back
            await thaw(self, partitions, version)
            monkeypatch.setattr(Hooked, "thaw", thaw)
            raise Unavailable(f"{self.name}: no answer within the call's deadline")

        monkeypatch.setattr(Hooked, "thaw", lost)
        await controller.reconcile()  # the target answers its release: the move is undone
        source = backend.shards[SOURCE]
        assert not held & set(source.leaving)
        granted = {source.owned[p] for p in held}
        assert granted == {controller.routing()["version"]} and frozen_at < min(granted)
    asyncio.run(main())


def test_a_thaw_that_keeps_failing_publishes_no_map_until_it_lands_at_the_published_one(
        tmp_path):
    """Review rev41 d-moves4 finding 1: each round re-sent a failing thaw at a new version and
    published it, waking every long poll and spending waiting clients' redirects. Once it
    lands, one map past it wakes the senders held since the freeze."""
    async def main():
        backend, controller = await started(str(tmp_path), 1)
        await ingest_all(backend, 0)
        # the adopt fails, and the source refuses the thaw that undoes the move four times
        backend.fail.update({(TARGET, "adopt"): 1, (SOURCE, "thaw"): 4})
        with pytest.raises(RuntimeError, match="handoffs failed"):
            await controller.scale(2)
        source = backend.shards[SOURCE]
        held = {m.partition for m in controller.moving}
        assert held and held <= set(source.leaving)
        version = controller.routing()["version"]  # the thaw went at it, published
        for _ in range(3):
            await controller.reconcile()
        assert controller.routing()["version"] == version and held <= set(source.leaving)
        await controller.reconcile()  # it lands, at the version already published
        assert not held & set(source.leaving) and not controller.moving
        assert {source.owned[p] for p in held} == {version}
        assert controller.routing()["version"] == version + 1
        assert not controller.thaws_published
        assert_one_owner_each(backend, controller)
    asyncio.run(main())


def test_a_thaw_first_sent_by_a_catch_up_publishes_one_map_however_often_it_fails(tmp_path):
    async def main():
        backend, controller, held = await held_move(str(tmp_path), 1)
        backend.fail[(SOURCE, "thaw")] = 3  # the target answers: the catch-ups undo the move
        frozen_at = controller.routing()["version"]
        for _ in range(3):
            await controller.reconcile()
        assert controller.routing()["version"] == frozen_at + 1  # the first send's, alone
        await controller.reconcile()
        source = backend.shards[SOURCE]
        assert not held & set(source.leaving) and not controller.moving
        assert {source.owned[p] for p in held} == {frozen_at + 1}
        assert controller.routing()["version"] == frozen_at + 2  # landed: senders woken
    asyncio.run(main())


def test_a_held_move_beside_a_failing_thaw_publishes_no_map_each_round(tmp_path):
    """Review rev42 d-shard finding 1: a move held by a target that never answers counted as
    a thaw not yet sent every round, so the other move's failing thaw was re-sent at a new
    version, and published, each round."""
    async def main():
        backend, controller = await started(str(tmp_path), 1)
        await ingest_all(backend, 0)
        backend.fail.update({(TARGET, "adopt"): 1, (THIRD, "adopt"): 10**6,
                             (THIRD, "release"): 10**6, (SOURCE, "thaw"): 4})
        with pytest.raises(RuntimeError, match="handoffs failed"):
            await controller.scale(3)
        version = controller.routing()["version"]
        for _ in range(3):
            await controller.reconcile()
        assert controller.routing()["version"] == version
        await controller.reconcile()  # the thaw lands: one map, for the senders it held
        assert controller.routing()["version"] == version + 1
        assert {m.target for m in controller.moving} == {THIRD}  # held, still
    asyncio.run(main())


def test_a_held_drain_moves_the_partitions_that_can_move_asking_the_held_shard_nothing(
        tmp_path, caplog):
    async def main():
        backend, controller = await started(str(tmp_path), 3)
        await ingest_all(backend, 0)
        source, stuck = controller.shards[:2]  # a drain's handoff to `stuck` fails part-way
        node = controller.placement[source]
        backend.fail.update({(stuck, "adopt"): 10**6, (stuck, "release"): 10**6})
        with pytest.raises(RuntimeError, match="handoffs failed"):
            await controller.drain_node(node)
        held = {m.partition for m in controller.moving}
        assert held and len(controller.map.partitions_of(source)) > len(held)
        its_own = controller.map.partitions_of(stuck)
        asked: list[str] = []
        shard, around = backend.shard, controller._drain_around

        async def recorded(name: str) -> None:
            backend.shard = lambda s: asked.append(s) or shard(s)
            try:
                await around(name)
            finally:
                backend.shard = shard

        controller._drain_around = recorded
        caplog.clear()
        releases = backend.fail[(stuck, "release")]
        await controller.reconcile()
        assert set(controller.map.partitions_of(source)) == held  # the rest moved
        assert stuck not in asked and controller.map.partitions_of(stuck) == its_own
        assert backend.fail[(stuck, "release")] == releases - 1  # the catch-up's alone
        assert not _records(caplog, logging.ERROR, "")
        version = controller.map.version
        for _ in range(3):
            await controller.reconcile()
        assert controller.map.version == version == controller.routing()["version"]
        assert not _records(caplog, logging.ERROR, "")
        assert len(_records(caplog, logging.WARNING, f"the drain of node {node} waits")) == 1
        assert len(_records(caplog, logging.WARNING, "moved in a spread")) == 1
        backend.fail.clear()  # restarted, it answers: the drain is finished
        await controller.reconcile()
        assert node not in controller.placement.values() and not controller.moving
        assert_one_owner_each(backend, controller)
    asyncio.run(main())


def test_a_drain_held_by_a_move_waits_without_a_retry_each_round_until_its_node_leaves(
        tmp_path, caplog):
    async def main():
        backend, controller, held = await held_move(str(tmp_path), 10**6)
        node = controller.placement[TARGET]
        with pytest.raises(RuntimeError, match=f"{TARGET} cannot stop yet"):
            await controller.drain_node(node)
        version = controller.map.version
        caplog.clear()
        for _ in range(4):
            await controller.reconcile()
        assert controller.map.version == version
        assert not _records(caplog, logging.ERROR, "")  # no drain tried, none failed
        assert not _records(caplog, logging.WARNING, "finishing the drain")
        waits = _records(caplog, logging.WARNING, f"the drain of node {node} waits")
        assert len(waits) == 1 and TARGET in waits[0].getMessage()
        assert node in controller.nodes.draining and TARGET in controller.placement
        # the way out: the node leaves (or the shard answers again, below)
        backend.node_names.remove(node)
        await controller.reconcile()
        assert TARGET not in controller.placement and not controller.moving
        assert not controller.nodes.draining
        assert not held & set(backend.shards[SOURCE].leaving)  # the source serves them again
        assert_one_owner_each(backend, controller)
    asyncio.run(main())


def test_a_drain_held_by_a_move_is_finished_once_its_shard_answers_again(tmp_path, caplog):
    async def main():
        backend, controller, held = await held_move(str(tmp_path), 10**6)
        node = controller.placement[TARGET]
        with pytest.raises(RuntimeError, match="cannot stop yet"):
            await controller.drain_node(node)
        await controller.reconcile()
        backend.fail.clear()  # restarted, it answers
        await controller.reconcile()
        assert not controller.moving and not held & set(backend.shards[SOURCE].leaving)
        assert node not in controller.placement.values()  # drained
        assert_one_owner_each(backend, controller)
    asyncio.run(main())


def test_a_scale_down_that_meets_a_held_move_stops_the_shards_it_emptied(tmp_path):
    async def main():
        backend, controller, held = await held_move(str(tmp_path), 10**6)
        with pytest.raises(RuntimeError, match="not even yet"):
            await controller.scale(3)
        assert controller.map.partitions_of(THIRD)
        with pytest.raises(RuntimeError, match=f"{TARGET} cannot stop yet"):
            await controller.scale(1)
        assert not controller.map.partitions_of(THIRD)
        assert controller.shards == [SOURCE, TARGET]  # the third is stopped, the move's kept
        assert THIRD not in backend.shards
        backend.fail.clear()
        await controller.reconcile()
        await controller.scale(1)
        assert controller.shards == [SOURCE]
        assert_one_owner_each(backend, controller)
    asyncio.run(main())


def test_a_node_whose_shard_is_given_no_partition_joins_once(tmp_path, caplog):
    async def main():
        backend = Crashing()
        backend.local_learner = Learner(default_compiled(), default_catalog_text(),
                                        unconfirmed=True)
        controller = backend.local_controller = Controller(backend, n_partitions=4,
                                                           store_url=str(tmp_path))
        await controller.start(4)  # as many shards as partitions: a new one gets none
        backend.node_names.append("node-d")
        caplog.clear()
        for _ in range(3):
            await controller.reconcile()
        joined = [s for s, n in controller.placement.items() if n == "node-d"]
        assert len(joined) == 1 and not controller.map.partitions_of(joined[0])
        assert "node-d" in controller.nodes.known
        assert len(_records(caplog, logging.WARNING, "node node-d joined")) == 1
    asyncio.run(main())
