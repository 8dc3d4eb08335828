"""The autoscaler's drain of a worker marks it released once done, a step up then taking it
back rather than asking Ray for a node its unit stands in for: also when that drain failed
once and the control loop (or a restarted controller) finished it. Ray-free (LocalBackend)."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.control import controller as controller_module
from kairos.cluster.control.autoscaling import Step
from kairos.cluster.control.controller import Controller
from kairos.cluster.control.nodes import GatewaySpec, NodeRefused

from tests.unit.control.test_autoscaling import Counting, controlling, scaled


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)
    monkeypatch.setattr(controller_module, "DRAIN_UNREADY_S", 0.0)


def failing_once(monkeypatch, controller: Controller) -> None:
    """The controller's next rebalance fails (a shard did not answer), those after succeed."""
    real, failures = controller._rebalance, [RuntimeError("a shard did not answer")]

    async def rebalance(target):
        if failures:
            raise failures.pop()
        return await real(target)
    monkeypatch.setattr(controller, "_rebalance", rebalance)


def test_a_drain_that_failed_once_is_taken_back_by_the_next_step_up(monkeypatch):
    async def main():
        backend, ctl, scaling, rounds = await scaled(["head", "w1", "w2"])
        failing_once(monkeypatch, ctl)
        [step] = await rounds(10, 1, drains=True)  # its drain fails
        drained = step.drain
        await rounds(2, 1, drains=True)  # the control loop finishes the drain, then marks it
        assert drained not in ctl.placement.values() and ctl.nodes.released == {drained}
        assert await rounds(5, 300, drains=True) == [Step(desired=2, reuse=drained)]
        assert backend.requests[-1] == [{"kairos_worker": 1}] * 2
        assert drained in ctl.placement.values() and not ctl.nodes.releasing
    asyncio.run(main())


def test_a_step_up_takes_back_a_node_whose_drain_is_held(monkeypatch):
    """A drain held (here every rebalance fails, as with a move a shard does not answer)
    leaves the node releasing: its unit answers the standing request, so only taking it back
    gives the step up its worker. Its gateway, NOT_SERVING for good, makes way for a new one."""
    async def main():
        backend, ctl, scaling, rounds = await scaled(["head", "w1", "w2"])
        ctl.nodes.spec = GatewaySpec("127.0.0.1", 0)
        await rounds(1, 1)
        held = [True]
        real = ctl._rebalance

        async def rebalance(target):
            if held:
                raise RuntimeError("a move is not settled")
            return await real(target)
        monkeypatch.setattr(ctl, "_rebalance", rebalance)
        [step] = await rounds(10, 1, drains=True)
        node = step.drain
        unready = ctl.nodes.gateway_of(node).name
        assert backend.gateways[unready]["state"] == "unready" and ctl.nodes.releasing == {node}
        assert await rounds(5, 300, drains=True) == [Step(desired=2, reuse=node)]
        assert backend.requests[-1] == [{"kairos_worker": 1}] * 2
        assert node not in ctl.nodes.draining | ctl.nodes.releasing | ctl.nodes.released
        # stopped, and another (its name free again) serves there
        assert backend.gateways[ctl.nodes.gateway_of(node).name]["state"] == "serving"
        held.clear()
        await rounds(2, 300, drains=True)
        assert node in ctl.placement.values() and node not in ctl.nodes.draining
    asyncio.run(main())


async def release_cut_short(monkeypatch, store: str) -> tuple[Counting, Controller]:
    """A controller over head, w1 and w2 whose autoscaler drain of w1 failed (still marked
    releasing), with its backend."""
    backend = Counting(["head", "w1", "w2"])
    ctl = Controller(backend, n_partitions=16, store_url=store, home_node="head")
    await ctl.start(3)
    failing_once(monkeypatch, ctl)
    with pytest.raises(RuntimeError):
        await ctl.release_node("w1")
    return backend, ctl


def test_a_restarted_controller_finishes_the_autoscalers_drain_and_marks_it(monkeypatch,
                                                                               tmp_path):
    async def main():
        store = str(tmp_path / "store")
        backend, _ = await release_cut_short(monkeypatch, store)
        again = backend.local_controller = Controller(backend, n_partitions=16,
                                                      store_url=store, home_node="head")
        await again.start(3)  # as Ray restarts it
        assert "w1" in again.nodes.draining and "w1" not in again.nodes.released
        for _ in range(2):
            await again.reconcile()
        assert "w1" not in again.placement.values() and again.nodes.released == {"w1"}
    asyncio.run(main())


def test_a_release_refused_leaves_the_node_unmarked():
    async def main():
        _, ctl = await controlling(["head", "w1"], 2)
        with pytest.raises(NodeRefused):
            await ctl.release_node("head")
        assert not ctl.nodes.releasing and not ctl.nodes.released
    asyncio.run(main())


def test_an_operators_drain_of_a_node_the_autoscaler_was_releasing_drops_its_mark(monkeypatch,
                                                                                   tmp_path):
    """Theirs to remove: a later step up must not take it back."""
    async def main():
        store = str(tmp_path / "store")
        backend, ctl = await release_cut_short(monkeypatch, store)
        assert ctl.nodes.releasing == {"w1"}
        await ctl.drain_node("w1")
        assert not ctl.nodes.releasing and not ctl.nodes.released
        again = Controller(backend, n_partitions=16, store_url=store, home_node="head")
        await again.start(3)
        assert not again.nodes.releasing and not again.nodes.released
    asyncio.run(main())
