"""A node that joined is given shards, then their share of partitions (rounds.py `_grow`). A
controller that crashes between the two leaves shards that own nothing, which the resumed
controller stops: the node must be given shards again, not be taken as one that has them.
Ray-free (LocalBackend)."""
from __future__ import annotations

import asyncio
import contextlib

from kairos.cluster.control import moves
from kairos.cluster.control.controller import Controller

from tests.support.waiting import until
from tests.unit.control.test_nodes import SPEC, Watched, no_waits, started  # noqa: F401


def test_a_join_cut_short_by_a_crash_before_its_first_move_is_done_after_the_resume(
        tmp_path, monkeypatch):
    async def main():
        backend = Watched()
        store = str(tmp_path / "store")
        ctl = await started(backend, store=store)
        reached = asyncio.Event()

        async def crash_here(*args):  # after the new shards are saved, before any move
            reached.set()
            await asyncio.Future()

        budget = moves.round_budget
        monkeypatch.setattr(moves, "round_budget", crash_here)
        backend.node_names.append("node-d")
        grow = asyncio.ensure_future(ctl._grow())
        await until(reached.is_set, 10, "the grow's first round", poll_s=0)
        grow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await grow
        monkeypatch.setattr(moves, "round_budget", budget)
        # as Ray restarts the controller: it resumes (no start, which marks every node known)
        again = backend.local_controller = Controller(
            backend, n_partitions=64, store_url=store, gateways=SPEC, shards_per_cpu=1.0)
        assert await again.resume()
        assert "node-d" not in again.placement.values()  # the shards that owned nothing
        await again.reconcile()
        joined = [s for s, n in again.placement.items() if n == "node-d"]
        assert joined and all(again.map.partitions_of(s) for s in joined)
        assert "node-d" in again.nodes.known
        counts = [len(again.map.partitions_of(s)) for s in again.shards]
        assert max(counts) - min(counts) <= 1
    asyncio.run(main())
