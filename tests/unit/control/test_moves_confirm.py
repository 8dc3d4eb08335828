"""A move the controller settled done confirms it to its target (a thaw): the partitions it
adopted are no longer arriving, so their timers fire there (shard/handoff.py)."""
from __future__ import annotations

import asyncio

from tests.support.local_backend import LocalBackend


def test_a_settled_move_leaves_nothing_arriving_on_its_target():
    async def main():
        backend = LocalBackend()
        ctl = await backend.start_runtime(1)
        await ctl.scale(2)
        moved = {s.name: dict(s.ownership.arriving) for s in backend.shards.values()}
        assert sum(len(s.owned) for s in backend.shards.values()) == ctl.map.n_partitions
        assert moved == {name: {} for name in moved}
        await backend.close()
    asyncio.run(main())
