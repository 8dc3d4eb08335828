"""A DrainNode sent again for a node whose drain runs (`kairos drain` re-sends it through
another gateway when its relay's call was cut) joins that drain and answers its result: the
shards and partitions it moved, when it is done, without a second unready period."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.control import controller as controller_module
from kairos.cluster.control.nodes import NodeRefused, NodeUnknown

from tests.unit.control.test_nodes import Watched, started

UNREADY_S = 0.5


@pytest.fixture(autouse=True)
def waits(monkeypatch):
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)
    monkeypatch.setattr(controller_module, "DRAIN_UNREADY_S", UNREADY_S)


def test_a_drain_asked_for_again_while_it_runs_answers_the_first_ones_result():
    async def main():
        ctl = await started(Watched(), n_shards=6)
        loop = asyncio.get_running_loop()
        began = loop.time()
        first = asyncio.create_task(ctl.drain_node("node-b"))
        await asyncio.sleep(0.05)
        assert ctl._drains == {"node-b"}  # the control loop leaves it alone
        again = await ctl.drain_node("node-b")
        took = loop.time() - began
        done = await first
        assert done["moved"] > 0 and done["shards"]
        assert again == done
        assert took < 2 * UNREADY_S  # not a second unready period after the first
        assert ctl._drains == set()
    asyncio.run(main())


def test_a_drain_whose_caller_is_cut_goes_on_and_the_retry_gets_its_result():
    async def main():
        ctl = await started(Watched(), n_shards=6)
        shards = sorted(s for s, n in ctl.placement.items() if n == "node-b")
        first = asyncio.create_task(ctl.drain_node("node-b"))
        await asyncio.sleep(0.05)
        first.cancel()  # the relaying gateway stopped: its call to the controller ends
        with pytest.raises(asyncio.CancelledError):
            await first
        assert ctl._drains == {"node-b"}
        again = await ctl.drain_node("node-b")
        assert sorted(again["shards"]) == shards and again["moved"] > 0
        assert "node-b" not in ctl.placement.values() and not ctl.nodes.gateway_of("node-b")
    asyncio.run(main())


def test_a_failed_drain_is_tried_anew_by_the_next_call(monkeypatch):
    async def main():
        ctl = await started(Watched(), n_shards=6)
        real = ctl._rebalance

        async def fails(*args, **kwargs):
            raise RuntimeError("a shard did not answer")
        monkeypatch.setattr(ctl, "_rebalance", fails)
        calls = [asyncio.create_task(ctl.drain_node("node-b")) for _ in range(2)]
        for call in calls:  # both callers get the one failure
            with pytest.raises(RuntimeError, match="did not answer"):
                await call
        monkeypatch.setattr(ctl, "_rebalance", real)
        done = await ctl.drain_node("node-b")
        assert done["moved"] > 0
    asyncio.run(main())


class SlowStop(Watched):
    """Gateways whose stop takes STOP_S, as calls in flight finish: the node's gateway record
    is gone (the node shows drained) while its drain still runs."""

    STOP_S = 0.3

    def gateway(self, name: str):
        gateway = super().gateway(name)
        stop = gateway.stop

        async def graceful():
            await asyncio.sleep(self.STOP_S)
            await stop()
        gateway.stop = graceful
        return gateway


def test_a_drain_asked_for_after_it_ended_answers_its_result_at_once():
    """The review's case: the first DrainNode's answer was lost, and the one sent again comes
    while the gateway stops or after the drain ended. It answered a drain of its own: 0
    partitions moved, after another unready period."""
    async def main():
        backend = SlowStop()
        ctl = await started(backend, n_shards=6)
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(ctl.drain_node("node-b"))
        while ctl.nodes.gateway_of("node-b"):  # its gateway stopping: it shows drained
            await asyncio.sleep(0.01)
        assert ctl._drained("node-b") and not first.done()
        during = await ctl.drain_node("node-b")
        done = await first
        assert done["moved"] > 0 and during == done
        backend.log.clear()
        began = loop.time()
        assert await ctl.drain_node("node-b") == done
        assert loop.time() - began < UNREADY_S / 2 and backend.log == []
    asyncio.run(main())


def test_a_drained_node_taken_back_is_drained_anew():
    async def main():
        ctl = await started(Watched(), n_shards=6)
        first = await ctl.drain_node("node-b")
        ctl.nodes.released.add("node-b")  # the autoscaler's drain, then a step up
        await ctl.reuse_node("node-b")
        await ctl.reconcile()  # a gateway and shards again
        assert ctl.nodes.gateway_of("node-b") and "node-b" in ctl.placement.values()
        again = await ctl.drain_node("node-b")
        assert again["moved"] > 0 and again["shards"] != first["shards"]
        assert again["version"] > first["version"]
    asyncio.run(main())


def test_a_failed_drain_whose_caller_was_cut_is_logged(monkeypatch, caplog):
    async def main():
        ctl = await started(Watched(), n_shards=6)
        failing = asyncio.Event()

        async def fails(*args, **kwargs):
            await failing.wait()
            raise RuntimeError("a shard did not answer")
        monkeypatch.setattr(ctl, "_rebalance", fails)
        call = asyncio.create_task(ctl.drain_node("node-b"))
        await asyncio.sleep(0.05)
        call.cancel()  # the relaying gateway stopped
        failing.set()
        await asyncio.sleep(0.05)
        assert ctl._drains == set()
    asyncio.run(main())
    failed = [r for r in caplog.records if r.getMessage() == "the drain of node node-b failed"]
    assert len(failed) == 1 and "did not answer" in str(failed[0].exc_info[1])


def test_a_refused_drain_is_not_logged_as_a_failure(caplog):
    async def main():
        ctl = await started(Watched(), n_shards=6, home="node-c")
        with pytest.raises(NodeUnknown):
            await ctl.drain_node("node-gone")  # a preStop hook's node that left already
        with pytest.raises(NodeRefused):
            await ctl.drain_node("node-c")
        await asyncio.sleep(0.05)
        assert ctl._drains == set()
    asyncio.run(main())
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
