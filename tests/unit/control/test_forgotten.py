"""What the controller keeps per shard or per node goes with it: a shard gone (names are never
used again) leaves no lock for its watch broadcasts, a node that left Ray no pause before its
gateway's next try. Ray-free (LocalBackend)."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.control import controller as controller_module

from tests.unit.control.test_nodes import Watched, started


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)
    monkeypatch.setattr(controller_module, "DRAIN_UNREADY_S", 0.0)


def test_a_shard_scaled_away_leaves_no_watch_lock():
    async def main():
        ctl = await started(Watched())
        await ctl.watch_channel("kairos-gateway-0", "web", None)
        await ctl.scale(5)
        await ctl.watch_channel("kairos-gateway-0", "app", None)
        await ctl.scale(2)
        assert set(ctl.lagging._order) <= set(ctl.shards)
    asyncio.run(main())


def test_a_node_that_left_leaves_no_gateway_retry():
    async def main():
        backend = Watched()
        ctl = await started(backend)
        backend.gateway_fails_on.add("node-d")
        backend.node_names.append("node-d")
        await ctl.reconcile()
        assert "node-d" in ctl.nodes._retry
        backend.node_names.remove("node-d")
        await ctl.reconcile()
        assert "node-d" not in ctl.nodes._retry
    asyncio.run(main())
