"""Nodes joining and leaving, without Ray (LocalBackend): a gateway on every node, shards for
nodes that join, drains in the order load balancers need, and all of it taken up again by a
restarted controller."""
from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

import msgpack

import pytest

from kairos.cluster.control import controller as controller_module
from kairos.cluster.control import nodes as nodes_module
from kairos.cluster.control import saved as saved_module
from kairos.cluster.control.controller import Controller
from kairos.cluster.control.learner import Learner
from kairos.cluster.control.nodes import GatewaySpec, NodeRefused, NodeUnknown
from kairos.cluster.transport.client import KairosClient
from kairos.core.compiler import default_compiled

from tests.support.local_backend import LocalBackend, LocalGateway, LocalShard
from tests.support.waiting import until

T0 = 1_795_629_600.0
SPEC = GatewaySpec("127.0.0.1", 50051, consecutive=True)


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)
    monkeypatch.setattr(controller_module, "DRAIN_UNREADY_S", 0.0)


class Watched(LocalBackend):
    """A LocalBackend that logs, in order, gateways turning unready and partitions frozen
    for a move."""

    def __init__(self, nodes=("node-a", "node-b", "node-c")):
        super().__init__(nodes)
        self.local_learner = Learner(default_compiled())
        self.log: list[tuple[str, str]] = []
        self.hang_freeze = False  # a freeze that never returns: the controller "crashes"

    def shard(self, name: str) -> "LoggedShard":
        return LoggedShard(self, name)

    def gateway(self, name: str) -> "LoggedGateway":
        return LoggedGateway(self, name)


class LoggedShard(LocalShard):
    async def health(self):  # as a ShardActor's: started, and the node it runs on
        return {**await super().health(), "started": True,
                "node": self._backend.created_on.get(self.name)}

    async def freeze(self, partitions, version):
        self._backend.log.append(("freeze", self.name))
        if self._backend.hang_freeze:
            await asyncio.Future()  # until the test cancels the controller's task
        return await super().freeze(partitions, version)


class LoggedGateway(LocalGateway):
    async def unready(self):
        self._backend.log.append(("unready", self.name))
        await super().unready()

    async def stop(self):
        self._backend.log.append(("stop", self.name))
        await super().stop()


async def started(backend: Watched, n_shards: int = 3, store: str = "memory",
                  spec: GatewaySpec | None = SPEC, home: str | None = None) -> Controller:
    controller = backend.local_controller = Controller(
        backend, n_partitions=64, store_url=store, gateways=spec, shards_per_cpu=1.0,
        home_node=home)
    await controller.start(n_shards)
    return controller


def gateways_by_node(backend: LocalBackend) -> dict[str, int]:
    return {g["node"]: g["port"] for g in backend.gateways.values()}


def test_every_node_gets_a_gateway_at_start_on_consecutive_ports():
    async def main():
        backend = Watched()
        ctl = await started(backend)
        assert gateways_by_node(backend) == {"node-a": 50051, "node-b": 50052, "node-c": 50053}
        status = {n["node"]: n for n in ctl.nodes.describe(
            (await ctl.status())["shards"])}
        assert all(n["serving"] and not n["draining"] for n in status.values())
        assert sum(n["partitions"] for n in status.values()) == 64
    asyncio.run(main())


def test_without_a_spec_the_controller_starts_no_gateway():
    async def main():
        backend = Watched()
        ctl = await started(backend, spec=None)
        backend.node_names.append("node-d")
        await ctl.reconcile()
        assert backend.gateways == {}
    asyncio.run(main())


def test_shard_endpoints_are_in_the_map_at_the_node_s_address_after_joins_and_restarts(
        tmp_path):
    async def main():
        backend = Watched()
        store = str(tmp_path / "store")
        spec = GatewaySpec("0.0.0.0", 50051, consecutive=True, shard_endpoints=True)
        ctl = await started(backend, store=store, spec=spec)

        def endpoints(controller: Controller) -> dict[str, str]:
            return controller.endpoints.by_shard
        address = {n: info["address"] for n, info in backend.node_info().items()}
        want = {name: f"{address[ctl.placement[name]]}:{backend.endpoints[name]['port']}"
                for name in ctl.shards}
        assert endpoints(ctl) == want and len(set(want.values())) == 3
        assert {e["host"] for e in backend.endpoints.values()} == {"0.0.0.0"}
        backend.node_names.append("node-d")
        await ctl.reconcile()
        joined = [n for n in ctl.shards if ctl.placement[n] == "node-d"]
        assert joined and all(endpoints(ctl)[n].startswith("10.0.0.4:") for n in joined)
        again = await started(backend, len(ctl.shards), store, spec=None)  # Ray restarted it
        assert endpoints(again) == endpoints(ctl)
    asyncio.run(main())


def test_without_shard_endpoints_the_map_names_none():
    async def main():
        ctl = await started(Watched())
        assert await ctl.shard_endpoints() == {}
    asyncio.run(main())


def test_a_node_that_joins_gets_a_gateway_and_shards_by_its_cpus_while_events_flow():
    async def main():
        backend = Watched()
        ctl = await started(backend)
        client = await KairosClient(backend).connect()
        customers = [f"c{i}" for i in range(30)]
        for c in customers:
            await client.ingest(c, "app_open", T0)
        backend.cpus["node-d"] = 2.0
        backend.node_names.append("node-d")
        wave = asyncio.gather(*(client.ingest(c, "app_open", T0 + 1) for c in customers))
        await ctl.reconcile()
        assert await wave == [2] * len(customers)  # each applied once, in order
        new = [s for s, n in ctl.placement.items() if n == "node-d"]
        assert len(new) == 2 and len(ctl.shards) == 5
        counts = [len(ctl.map.partitions_of(s)) for s in ctl.shards]
        assert max(counts) - min(counts) <= 1
        assert gateways_by_node(backend)["node-d"] == 50054
        await ctl.reconcile()  # once given its shards, a node is not given more
        assert len(ctl.shards) == 5
        for c in customers:
            assert await client.ingest(c, "app_open", T0 + 2) == 3
        await client.close()
    asyncio.run(main())


def test_a_drain_turns_the_gateway_unready_before_partitions_move_then_stops_everything():
    async def main():
        backend = Watched()
        ctl = await started(backend, n_shards=6)
        client = await KairosClient(backend).connect()
        customers = [f"c{i}" for i in range(40)]
        for c in customers:
            await client.ingest(c, "app_open", T0)
        victims = {s for s, n in ctl.placement.items() if n == "node-b"}
        gateway = next(name for name, g in backend.gateways.items() if g["node"] == "node-b")
        backend.log.clear()
        wave = asyncio.gather(*(client.ingest(c, "app_open", T0 + 1) for c in customers))
        done = await ctl.drain_node("node-b")
        assert await wave == [2] * len(customers)
        assert set(done["shards"]) == victims and done["moved"] == 64 * 2 // 6
        first_freeze = next(i for i, (what, _) in enumerate(backend.log) if what == "freeze")
        assert backend.log[0] == ("unready", gateway) and first_freeze > 0
        assert backend.log[-1] == ("stop", gateway)
        assert gateway not in backend.gateways  # stopped, then let go of
        assert not victims & set(ctl.shards) and "node-b" not in ctl.placement.values()
        assert sorted(p for s in ctl.shards for p in ctl.map.partitions_of(s)) == \
            list(range(64))
        node_b = next(n for n in ctl.nodes.describe((await ctl.status())["shards"])
                      if n["node"] == "node-b")
        assert node_b["draining"] and not node_b["serving"] and not node_b["shards"]
        await ctl.reconcile()  # a drained node gets no gateway and no shard again
        assert "node-b" not in gateways_by_node(backend)
        assert "node-b" not in ctl.placement.values()
        for c in customers:
            assert await client.ingest(c, "app_open", T0 + 2) == 3
        await client.close()
    asyncio.run(main())


def test_drain_refuses_an_unknown_node_the_controllers_own_and_the_last_serving_one():
    async def main():
        backend = Watched(("node-a", "node-b", "node-c"))
        ctl = await started(backend, n_shards=3, home="node-c")
        with pytest.raises(NodeUnknown, match="node-x"):
            await ctl.drain_node("node-x")
        with pytest.raises(NodeRefused, match="runs the controller"):
            await ctl.drain_node("node-c")
        first = await ctl.drain_node("node-a")
        backend.node_names.remove("node-c")  # the controller's node left: b is the last
        with pytest.raises(NodeRefused, match="last node"):
            await ctl.drain_node("node-b")
        # drained already: the drain's result (drains.py), not a drain of the empty node
        assert await ctl.drain_node("node-a") == first and first["moved"] > 0
    asyncio.run(main())


def test_a_gateway_that_cannot_start_is_tried_again_later_and_holds_nothing_up(monkeypatch):
    async def main():
        backend = Watched()
        ctl = await started(backend)
        # nodes.py's clock only (asyncio's is the same function: it must keep running),
        # stopped: however slow the machine, the second try comes within the pause
        now = [1e6]
        monkeypatch.setattr(nodes_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
        backend.gateway_fails_on.add("node-d")
        backend.node_names.append("node-d")
        await ctl.reconcile()  # the node still gets its shard
        assert "node-d" in ctl.placement.values()
        assert "node-d" not in gateways_by_node(backend)
        await ctl.reconcile()  # within the pause: not tried again
        assert ctl.nodes._retry["node-d"][1] == 1.0
        backend.gateway_fails_on.clear()
        now[0] = 1e12
        await ctl.reconcile()
        assert "node-d" in gateways_by_node(backend)
    asyncio.run(main())


def test_a_node_that_leaves_lets_its_gateway_go_and_its_number_is_used_again():
    async def main():
        backend = Watched()
        ctl = await started(backend)
        backend.node_names.remove("node-b")
        await ctl.reconcile()
        assert set(gateways_by_node(backend)) == {"node-a", "node-c"}
        backend.node_names.append("node-e")
        await ctl.reconcile()
        assert gateways_by_node(backend)["node-e"] == 50052
    asyncio.run(main())


def test_a_restarted_controller_takes_up_gateways_and_drains(tmp_path):
    async def main():
        backend = Watched()
        store = str(tmp_path / "store")
        ctl = await started(backend, store=store)
        await ctl.drain_node("node-c")
        again = await started(backend, store=store, spec=None)  # as Ray restarts it
        assert again.nodes.spec == SPEC and again.nodes.draining == {"node-c"}
        assert {g.name for g in again.nodes.gateways.values()} == set(backend.gateways)
        backend.node_names.append("node-d")
        await again.reconcile()
        assert set(gateways_by_node(backend)) == {"node-a", "node-b", "node-d"}
        assert "node-c" not in again.placement.values()
    asyncio.run(main())


def test_a_drain_cut_short_by_a_controller_crash_is_finished_after_the_restart(tmp_path):
    async def main():
        backend = Watched()
        store = str(tmp_path / "store")
        ctl = await started(backend, store=store)
        backend.hang_freeze = True
        drain = asyncio.ensure_future(ctl.drain_node("node-b"))
        await until(lambda: ("freeze" in {w for w, _ in backend.log}), 10, "a freeze",
                    poll_s=0)
        drain.cancel()  # the controller "crashed" in the middle of the drain's first round
        with contextlib.suppress(asyncio.CancelledError):
            await drain
        backend.hang_freeze = False
        again = await started(backend, store=store)
        await again.reconcile()  # the control loop's first round after the restart
        assert "node-b" in again.nodes.draining
        assert "node-b" not in again.placement.values()
        assert "node-b" not in gateways_by_node(backend)
        owners = set(again.map.owners)
        assert owners <= set(again.shards) and len(owners) == 2
    asyncio.run(main())


def test_a_state_saved_before_nodes_were_kept_is_taken_up(tmp_path):
    async def main():
        backend = Watched()
        store = str(tmp_path / "store")
        ctl = await started(backend, store=store, spec=None)
        state = msgpack.unpackb(ctl.store.get_meta(saved_module.STATE_KEY), raw=False)
        del state["nodes"]  # as a controller of the release before wrote it
        ctl.store.put_meta(saved_module.STATE_KEY, msgpack.packb(state, use_bin_type=True))
        again = await started(backend, store=store)  # now with gateways
        assert set(gateways_by_node(backend)) == {"node-a", "node-b", "node-c"}
        assert again.nodes.known == {"node-a", "node-b", "node-c"}
        assert not again.nodes.draining
    asyncio.run(main())


def test_partitions_never_go_to_a_draining_nodes_shards_while_a_node_joins():
    async def main():
        backend = Watched()
        ctl = await started(backend, n_shards=3)
        backend.node_names.append("node-d")
        await asyncio.gather(ctl.drain_node("node-a"), ctl.reconcile())
        await ctl.reconcile()
        on_a = [s for s, n in ctl.placement.items() if n == "node-a"]
        assert on_a == [] and "node-d" in ctl.placement.values()
        assert set(ctl.map.owners) <= set(ctl.shards)
    asyncio.run(main())
