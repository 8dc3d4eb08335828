"""A move whose adopt failed and whose target then did not answer the release: the source
stays frozen (its target may still adopt late: control/moves.py), while the published map
names it as the owner. Clients wait for it, bounded, instead of re-sending at once until
their redirects run out; and the rest of the cluster scales around the stuck move instead of
every ScaleShards failing until the target answers. Ray-free (LocalBackend)."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.control.partitions import partition_of
from kairos.cluster.transport.client import KairosClient

from tests.unit.control.test_interrupted import (CUSTOMERS, T0, assert_one_owner_each,
                                                 ingest_all, started)

SOURCE, TARGET = "kairos-shard-0000", "kairos-shard-0001"


async def held_move(store: str, target_down: int):
    """One shard, scaled to two: the adopt fails, and the target then fails `target_down`
    calls of each step (it does not answer)."""
    backend, controller = await started(store, 1)
    await ingest_all(backend, 0)
    backend.fail.update({(TARGET, "adopt"): 1 + target_down, (TARGET, "release"): target_down})
    with pytest.raises(RuntimeError, match="handoffs failed"):
        await controller.scale(2)
    held = {m.partition for m in controller.moving}
    assert held and held <= set(backend.shards[SOURCE].leaving)  # frozen, as the map says
    assert controller.routing()["version"] == backend.shards[SOURCE].leaving[min(held)]
    return backend, controller, held


def test_a_request_for_a_held_partition_waits_for_the_move_to_settle(tmp_path):
    async def main():
        backend, controller, held = await held_move(str(tmp_path), 1)
        victim = next(c for c in CUSTOMERS if partition_of(c, 64) in held)
        client = await KairosClient(backend).connect()
        try:
            sent = asyncio.ensure_future(client.ingest(victim, "page_view", T0 + 5,
                                                       {"category": "home"}))
            await asyncio.sleep(0.5)  # it met the freeze: MOVED naming the map it holds
            assert not sent.done(), sent.result() if not sent.exception() else sent.exception()
            await controller.reconcile()  # the target answers again: the move is undone
            assert not controller.moving
            assert await asyncio.wait_for(sent, 5) == 2
        finally:
            await client.close()
        assert_one_owner_each(backend, controller)
    asyncio.run(main())


def test_a_scale_goes_on_around_a_move_whose_target_does_not_answer(tmp_path):
    async def main():
        backend, controller, held = await held_move(str(tmp_path), 100)
        with pytest.raises(RuntimeError, match="not even yet.*not settled"):
            await controller.scale(3)
        third = "kairos-shard-0002"
        # the partitions that could move did, to the shard that answers: as many as the source
        # keeps, its held ones counted
        assert len(controller.map.partitions_of(third)) == 32
        assert {m.partition for m in controller.moving} == held  # untouched, still held
        assert held <= set(backend.shards[SOURCE].leaving)
        assert not backend.shards[TARGET].owned  # nothing more sent to the shard that is stuck
        backend.fail.clear()  # it answers again: the next round settles, the next scale spreads
        await controller.reconcile()
        assert not controller.moving
        await controller.scale(3)
        assert sorted(len(controller.map.partitions_of(s)) for s in controller.shards) == \
            [21, 21, 22]
        assert_one_owner_each(backend, controller)
        assert await ingest_all(backend, 1) == [2] * len(CUSTOMERS)
    asyncio.run(main())
