"""A move held frozen because its target did not answer its release (test_held_moves.py) holds
back its two shards and its partitions, and nothing more: no scale-down, drain or uncrowding
stops either shard (the target may still adopt late, and the source would then thaw), a shard
retired anyway has its journal fenced so that a late adopt writes no snapshot, requests that
wait for the held partitions do not fill their shard's queue limit, and the rest of the
partitions spread as evenly as the held ones allow. Ray-free (LocalBackend)."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.control import controller as controller_module
from kairos.cluster.control import moves
from kairos.cluster.control.controller import Controller
from kairos.cluster.control.learner import Learner
from kairos.cluster.control.partitions import Move, PartitionMap, partition_of
from kairos.cluster.storage.store import JournalFenced
from kairos.cluster.transport import client as client_module
from kairos.cluster.transport.client import HELD, Busy, KairosClient
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import default_compiled

from tests.unit.control.test_held_moves import SOURCE, TARGET, held_move
from tests.unit.control.test_interrupted import (CUSTOMERS, T0, Crashing, Hooked,
                                                 assert_one_owner_each, ingest_all)


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)
    monkeypatch.setattr(controller_module, "DRAIN_UNREADY_S", 0.0)


def test_a_scale_down_or_a_drain_does_not_stop_the_target_of_a_held_move(tmp_path):
    async def main():
        backend, controller, held = await held_move(str(tmp_path), 100)
        with pytest.raises(RuntimeError, match=f"{TARGET} cannot stop yet"):
            await controller.scale(1)
        with pytest.raises(RuntimeError, match=f"{TARGET} cannot stop yet"):
            await controller.drain_node(controller.placement[TARGET])
        assert TARGET in controller.shards and TARGET in backend.shards
        assert {m.partition for m in controller.moving} == held
        await controller.reconcile()  # it still does not answer: the source stays frozen
        assert held <= set(backend.shards[SOURCE].leaving)
        backend.fail.clear()  # it answers: the move is undone, and the scale goes through
        await controller.reconcile()
        await controller.scale(1)
        assert controller.shards == [SOURCE]
        assert_one_owner_each(backend, controller)
        assert await ingest_all(backend, 1) == [2] * len(CUSTOMERS)
    asyncio.run(main())


def test_a_crowded_node_gives_up_a_shard_that_no_held_move_keeps(tmp_path):
    async def main():
        backend, controller, held = await held_move(str(tmp_path), 100)
        backend.node_names[:] = [controller.placement[SOURCE]]  # both shards on one node ...
        controller.placement[TARGET] = controller.placement[SOURCE]
        backend.node_names.append("node-z")  # ... and an empty one beside it
        await controller._uncrowd()  # each of its shards is in the held move: none goes
        assert sorted(controller.shards) == [SOURCE, TARGET]
        assert held <= set(backend.shards[SOURCE].leaving)
    asyncio.run(main())


class Recording(Crashing):
    """Records the adopts asked of each shard (a late one is sent again), and lets `retire`
    fail as the other steps do."""

    def __init__(self):
        super().__init__()
        self.adopts: dict[str, list[tuple[bytes, int]]] = {}

    def shard(self, name: str) -> "RecordingShard":
        return RecordingShard(self, name)


class RecordingShard(Hooked):
    async def adopt(self, payload, version):
        self._backend.adopts.setdefault(self.name, []).append((payload, version))
        return await super().adopt(payload, version)

    async def retire(self):
        return await self._step("retire")


def test_a_retired_shard_that_runs_on_writes_no_snapshot_of_a_late_adopt(tmp_path):
    """Retired while it did not answer (cut off from Ray, not from the store), a shard whose
    adopt arrives late must not overwrite the snapshot of the partitions' owner."""
    async def main():
        backend = Recording()
        backend.local_learner = Learner(default_compiled(), default_catalog_text(),
                                        unconfirmed=True)
        controller = backend.local_controller = Controller(backend, n_partitions=64,
                                                           store_url=str(tmp_path))
        backend.store = controller.store  # the shards' store: the one the controller fences
        await controller.start(1)
        await ingest_all(backend, 0)
        # the move is held: its target did not answer the release (nor then the retire)
        backend.fail.update({(TARGET, "adopt"): 1, (TARGET, "release"): 100,
                             (TARGET, "retire"): 1})
        with pytest.raises(RuntimeError, match="handoffs failed"):
            await controller.scale(2)
        (payload, version), = backend.adopts[TARGET]
        late = backend.shards[TARGET]  # it runs on after the kill
        await controller._retire([TARGET])  # as a scale-down did before it was kept
        assert TARGET not in controller.shards
        partitions = [p for p in range(64) if controller.map.owners[p] == SOURCE]
        before = {p: controller.store.snapshot_lsn(p) for p in partitions}
        with pytest.raises(JournalFenced):
            late.adopt(payload, version)
        assert {p: controller.store.snapshot_lsn(p) for p in partitions} == before
        assert all(lsn is None or lsn[0] != TARGET for lsn in before.values())
    asyncio.run(main())


def test_requests_waiting_for_a_held_partition_leave_its_shard_room_and_are_bounded(
        tmp_path, monkeypatch):
    async def main():
        backend, controller, held = await held_move(str(tmp_path), 100)
        monkeypatch.setattr(client_module, "CLIENT_QUEUE_LIMIT", 5)
        hot = next(c for c in (f"h{i}" for i in range(10_000)) if partition_of(c, 64) in held)
        cold = next(c for c in (f"k{i}" for i in range(10_000)) if partition_of(c, 64) not in
                    held and controller.map.owners[partition_of(c, 64)] == SOURCE)
        client = await KairosClient(backend).connect()
        try:
            def send(i: int) -> asyncio.Future:
                return asyncio.ensure_future(client.ingest(hot, "page_view", T0 + 1 + i,
                                                           {"category": "home"}))
            waiting = [send(0)]
            await asyncio.sleep(0.3)  # it met the freeze: its lane waits, and those after it
            waiting += [send(i) for i in range(1, 9)]
            await asyncio.sleep(0)
            assert client._waiting[HELD] == 5 and not client._waiting[SOURCE]
            # its shard's other partitions are served, not refused Busy
            assert await asyncio.wait_for(client.ingest(cold, "page_view", T0 + 1,
                                                        {"category": "home"}), 2) == 1
            backend.fail.clear()
            await controller.reconcile()  # settled: those that waited go
            results = await asyncio.wait_for(asyncio.gather(*waiting,
                                                            return_exceptions=True), 5)
        finally:
            await client.close()
        refused = [r for r in results if isinstance(r, Busy)]
        assert refused and all(HELD in str(r) for r in refused)  # past their own limit
        assert [r for r in results if not isinstance(r, Busy)] == \
            list(range(1, 1 + len(results) - len(refused)))  # in order, each once
        assert not client._waiting[HELD]
    asyncio.run(main())


def test_the_free_partitions_spread_around_those_a_held_move_pins():
    shards = [f"s{i}" for i in range(3)]
    pmap = PartitionMap(["s0"] * 64, 5, shards[:2])
    held = [Move(p, "s0", "s1") for p in range(0, 64, 2)]  # 32 held on s0, s1 stuck
    planned = moves.plan_around(pmap, shards, 64, held, {"s1"})
    after = pmap.apply(planned, shards)
    assert [len(after.partitions_of(s)) for s in shards] == [32, 0, 32]
    assert not {m.partition for m in planned} & {m.partition for m in held}
    # pinned past an even share: that shard gives all it may, the others share the rest
    held = [Move(p, "s0", "s1") for p in range(40)]
    planned = moves.plan_around(pmap, shards, 64, held, set())
    after = pmap.apply(planned, shards)
    assert [len(after.partitions_of(s)) for s in shards] == [40, 12, 12]
    assert not {m.partition for m in planned} & set(range(40))
