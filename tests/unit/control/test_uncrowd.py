"""A crowded node gives a shard up (rounds.py's `_uncrowd`) by shares of shards per CPU, not
by raw counts: a node with more CPUs keeps its larger count, none is given more than its
CPUs, and none is re-placed while a move is not settled (its rebalance would fail after
starting the new shard, round after round). Ray-free (LocalBackend)."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.control import controller as controller_module
from kairos.cluster.control.controller import Controller

from tests.unit.control.test_held_moves import SOURCE, TARGET, held_move
from tests.unit.control.test_interrupted import assert_one_owner_each
from tests.unit.control.test_nodes import Watched, started


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)
    monkeypatch.setattr(controller_module, "DRAIN_UNREADY_S", 0.0)


def per_node(ctl: Controller) -> dict[str, int]:
    """Shards per node, each owning partitions."""
    assert all(ctl.map.partitions_of(s) for s in ctl.shards)
    counts: dict[str, int] = {}
    for node in ctl.placement.values():
        counts[node] = counts.get(node, 0) + 1
    return counts


def test_a_worker_joining_a_head_started_with_more_shards_keeps_one_per_cpu():
    async def main():  # k8s/base: the head runs 4 shards on 2 CPUs
        backend = Watched(("head",))
        backend.cpus.update({"head": 2.0, "worker-1": 2.0})
        ctl = await started(backend, n_shards=4, home="head")
        backend.node_names.append("worker-1")
        for _ in range(3):
            await ctl.reconcile()
        assert per_node(ctl) == {"head": 4, "worker-1": 2}
    asyncio.run(main())


def test_a_node_with_more_cpus_keeps_its_shards_and_nothing_moves_after_its_join():
    async def main():
        backend = Watched(("node-a", "node-b"))
        backend.cpus["node-c"] = 8.0
        ctl = await started(backend, n_shards=2)
        backend.node_names.append("node-c")
        await ctl.reconcile()
        version = ctl.map.version
        for _ in range(3):
            await ctl.reconcile()
        assert per_node(ctl) == {"node-a": 1, "node-b": 1, "node-c": 8}
        assert ctl.map.version == version
    asyncio.run(main())


def test_a_node_over_its_share_gives_a_shard_to_one_under_its_own():
    async def main():
        backend = Watched(("node-a", "node-b"))
        backend.cpus["node-b"] = 2.0
        ctl = await started(backend, n_shards=3)  # placed by count: two on node-a
        assert per_node(ctl) == {"node-a": 2, "node-b": 1}
        await ctl.reconcile()
        assert per_node(ctl) == {"node-a": 1, "node-b": 2}
        assert sum(len(ctl.map.partitions_of(s)) for s in ctl.shards) == 64
    asyncio.run(main())


def test_no_shard_is_re_placed_while_a_move_is_held(tmp_path):
    async def main():
        backend, ctl, held = await held_move(str(tmp_path), 100)
        node_a, node_b = ctl.placement[SOURCE], ctl.placement[TARGET]
        with pytest.raises(RuntimeError, match="cannot stop yet"):
            await ctl.drain_node(node_b)  # held: TARGET stays, on a draining node
        # a shard past node-a's share (as a replacement is placed), node-c under its own
        extra = await ctl._create_shard(node=node_a)
        await ctl._start_shard(extra)
        for _ in range(3):
            await ctl.reconcile()
        assert sorted(ctl.shards) == sorted([SOURCE, TARGET, extra])
        backend.fail.clear()  # the target answers: the move settles, the drain finishes
        for _ in range(3):
            await ctl.reconcile()
        assert not ctl.moving and per_node(ctl) == {node_a: 1, "node-c": 1}
        assert_one_owner_each(backend, ctl)
    asyncio.run(main())
