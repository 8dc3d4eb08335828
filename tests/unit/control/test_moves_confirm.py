"""A move the controller settled done confirms it to its target: the partitions it
adopted are no longer arriving, so their timers fire there (shard/handoff.py)."""
from __future__ import annotations

import asyncio

from kairos.cluster.control.moves import confirm_owned

from tests.support.local_backend import LocalBackend


def test_a_settled_move_leaves_nothing_arriving_on_its_target():
    async def main():
        backend = LocalBackend()
        ctl = await backend.start_runtime(1)
        await ctl.scale(2)
        moved = {s.name: dict(s.ownership.arriving) for s in backend.shards.values()}
        assert sum(len(s.owned) for s in backend.shards.values()) == ctl.map.n_partitions
        assert moved == {name: {} for name in moved}
        # the adopt snapshotted each partition; a thaw to confirm wrote each a second time
        new = next(s for s in backend.shards.values() if s.name != ctl.map.shards_in_use()[0])
        assert new.counts["snapshots"] == len(new.owned) > 0
        await backend.close()
    asyncio.run(main())


def test_the_saved_map_confirms_what_a_target_still_holds_arriving():
    """A confirmation that failed (or an older controller that never sent one) leaves the
    target's partitions arriving; `confirm_owned` for the saved map confirms them, and leaves
    one adopted by a move newer than the map arriving."""
    async def main():
        backend = LocalBackend()
        ctl = await backend.start_runtime(2)
        name = ctl.map.shards_in_use()[0]
        shard = backend.shards[name]
        mine = ctl.map.partitions_of(name)
        shard.ownership.arriving.update({mine[0]: ctl.map.version,
                                         mine[1]: ctl.map.version + 1})
        await confirm_owned(backend, ctl.map)
        assert shard.ownership.arriving == {mine[1]: ctl.map.version + 1}
        await backend.close()
    asyncio.run(main())
