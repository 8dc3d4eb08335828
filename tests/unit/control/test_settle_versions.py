"""The versions a settle sends its steps at (scaling.py `_settle`): a move the map shows done
is settled at the map's version, so that no shard is fenced at a version the map does not
reach, which would refuse the next move's step, made at it, as late. Ray-free."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.control.partitions import Move

from tests.unit.control.test_interrupted import ingest_all, started

A, B, C = "kairos-shard-0000", "kairos-shard-0001", "kairos-shard-0002"


def test_a_partition_moves_back_after_its_release_was_settled_beside_a_held_move(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        await ingest_all(backend, 0)
        # held moves: their adopt fails, and their target answers no release
        backend.fail.update({(C, "adopt"): 1, (C, "release"): 10**6})
        with pytest.raises(RuntimeError, match="handoffs failed"):
            await controller.scale(3)
        held = {m.partition for m in controller.moving}
        p = next(p for p in reversed(controller.map.partitions_of(A)) if p not in held)
        backend.fail[(A, "release")] = 1  # the done move's source misses its release
        await controller._move([Move(p, A, B)], [A, B, C], {C})
        await controller._settle()
        assert backend.shards[A].ownership.fenced[p] <= controller.map.version
        await controller._move([Move(p, B, A)], [A, B, C], {C})
        assert controller.map.owners[p] == A and p in backend.shards[A].owned
        assert {m.partition for m in controller.moving} == held
    asyncio.run(main())
