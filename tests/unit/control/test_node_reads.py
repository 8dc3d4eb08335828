"""The control round reads Ray's node table (a call to the GCS, and this process's CPU) no more
than its decisions need: once at its start and once in its node-joined check, which the
crowded-node check shares while nothing yielded between them, and a node's CPUs once for its
life. Nodes that join or leave while the round waits (for the lock, for calls) are still seen
by that round's checks under the lock. Ray-free (LocalBackend)."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.control import controller as controller_module
from kairos.cluster.control.nodes import Nodes

from tests.unit.control.test_nodes import LoggedShard, Watched, started


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)
    monkeypatch.setattr(controller_module, "DRAIN_UNREADY_S", 0.0)


class Counted(Watched):
    """Counts the node table's reads; a shard's health yields, as a Ray call does."""

    def __init__(self, nodes=("node-a", "node-b", "node-c")):
        super().__init__(nodes)
        self.reads = {"nodes": 0, "node_info": 0}

    def nodes(self):
        self.reads["nodes"] += 1
        return super().nodes()

    def node_info(self):
        self.reads["node_info"] += 1
        return super().node_info()

    def shard(self, name):
        return YieldingShard(self, name)


class YieldingShard(LoggedShard):
    async def health(self):
        await asyncio.sleep(0)
        return await super().health()


def test_an_idle_round_reads_the_node_list_twice_and_the_cpus_not_at_all():
    async def main():
        backend = Counted()
        ctl = await started(backend)
        await ctl.reconcile()  # the first: each node's CPUs
        for _ in range(3):
            backend.reads = {"nodes": 0, "node_info": 0}
            await ctl.reconcile()
            assert backend.reads == {"nodes": 2, "node_info": 0}
    asyncio.run(main())


def test_a_node_that_joins_while_the_round_waits_for_the_lock_gets_its_shards_that_round():
    async def main():
        backend = Counted()
        ctl = await started(backend)
        async with ctl._reconfiguring:  # a drain, say: the round read the nodes, and waits
            round_ = asyncio.create_task(ctl.reconcile())
            await asyncio.sleep(0.01)
            backend.node_names.append("node-d")
        await round_
        assert "node-d" in ctl.placement.values()
    asyncio.run(main())


class LeavesOnGrow(Counted):
    """node-b leaves while the round gives node-c (joined) its shard."""

    async def create_shard(self, name, node, *args):
        if node == "node-c":
            self.node_names.remove("node-b")
        await super().create_shard(name, node, *args)


def test_a_node_that_leaves_while_the_round_gives_shards_to_one_that_joined_gets_none():
    async def main():
        backend = LeavesOnGrow(("node-a", "node-b"))
        backend.cpus["node-b"] = 2.0  # under its share by one, node-a over its own by one
        ctl = await started(backend, n_shards=3)
        backend.node_names.append("node-c")
        await ctl.reconcile()
        # the crowded-node check read the nodes anew after the join's moves: none is placed
        # on node-b, gone (its shard is replaced by the next round)
        assert list(backend.created_on.values()).count("node-b") == 1
        assert list(ctl.placement.values()).count("node-c") == 1
    asyncio.run(main())


def test_a_read_is_shared_until_an_await_yields():
    async def main():
        backend = Counted()
        nodes = Nodes(backend, None, 1.0)
        assert nodes.alive() == nodes.alive(again=True) == ["node-a", "node-b", "node-c"]
        assert backend.reads["nodes"] == 1
        backend.node_names.append("node-d")
        assert "node-d" in nodes.alive()  # not asked to share: read now
        await asyncio.sleep(0)
        backend.node_names.remove("node-a")
        assert "node-a" not in nodes.alive(again=True)
        assert backend.reads["nodes"] == 3
    asyncio.run(main())


def test_a_read_is_shared_only_with_the_task_that_made_it():
    """Another task's read, made in the same turn of the loop, is not this task's: a task woken
    in that turn reads anew (review rev-ctl finding 2)."""
    async def main():
        backend = Counted()
        nodes = Nodes(backend, None, 1.0)

        woken = asyncio.Event()

        async def reader():  # woken in the same turn of the loop, first
            await woken.wait()
            nodes.alive()
            backend.node_names.remove("node-a")  # time passes after its read

        async def sharer():
            await woken.wait()
            return nodes.alive(again=True)

        tasks = [asyncio.create_task(reader()), asyncio.create_task(sharer())]
        await asyncio.sleep(0)
        woken.set()
        assert "node-a" not in (await asyncio.gather(*tasks))[1]
    asyncio.run(main())


def test_a_cpu_read_makes_the_next_shared_read_fresh():
    """A node-info read (a node's CPUs, first seen) between two reads is newer than the first:
    the second does not share the first (review rev-ctl finding 1)."""
    async def main():
        backend = Counted()
        nodes = Nodes(backend, None, 1.0)
        alive = nodes.alive()
        backend.node_names.append("node-d")
        nodes.shares(alive + ["node-d"])  # a node not seen before: its CPUs are read
        assert "node-d" in nodes.alive(again=True)
    asyncio.run(main())
