"""The serving nodes the cluster last ran on (takeup.py `NodesRun`), recorded by the control
loop's settled rounds and saved: a full restart's take-up waits for no more of them, whatever
the density saved asks for. The review of d76fdac: a density raised to follow the nodes never
came back down (new Ray node ids join as new nodes, given new shards), and later full restarts
put the shards on the head at once. Without Ray (Actors)."""
from __future__ import annotations

import asyncio
import logging
from collections import Counter

import msgpack
import pytest

from kairos.cluster.control import controller as controller_module
from kairos.cluster.control import takeup
from kairos.cluster.control.controller import Controller, shard_name
from kairos.cluster.control.nodes import GatewaySpec
from kairos.cluster.control.saved import STATE_KEY

from tests.support.waiting import until
from tests.unit.control.actors import Actors, controller_on
from tests.unit.control.test_takeup_nodes import (SPREAD, fully_restarted, notices, saved_state,
                                                  saves_of, waiting)

SHORT_WAIT_S = 0.05  # a wait's length the tests let pass (rounds before and after a sleep)
GATEWAYS = GatewaySpec("127.0.0.1", 50051, consecutive=True)


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(takeup, "POLL_S", 0.01)
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)


async def settled_rounds(controller: Controller, rounds: int = 12) -> None:
    """Control-loop rounds until one ends settled (replacements, joiners' shards placed)."""
    for _ in range(rounds):
        await controller.reconcile()
        if controller.settled:
            return
    raise AssertionError("the control loop did not settle")


async def ran_a_wait_long(controller: Controller, monkeypatch) -> None:
    """Settled rounds a wait's length apart: the first finds the nodes, the last records."""
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", SHORT_WAIT_S)
    await settled_rounds(controller)
    await asyncio.sleep(2 * SHORT_WAIT_S)
    await settled_rounds(controller)


def test_rounds_raise_the_count_at_once_and_settled_ones_lower_it_after_a_wait(monkeypatch,
                                                                             caplog):
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 120.0)
    run = takeup.NodesRun()
    run.taken_up(None, None)  # a first start
    run.ran(2, settled=False, now=0.0)
    assert run.count is None  # no bound yet: a round that is not settled sets none
    run.ran(2, settled=True, now=0.0)
    assert run.count == 2 and run.unsaved  # the first settled round records what it found
    run.saved = 2
    run.ran(3, settled=False, now=1.0)
    assert run.count == 3 and run.unsaved  # a rise, at once, settled or not
    run.saved = 3
    run.ran(1, settled=True, now=10.0)  # fewer from here on
    run.ran(3, settled=True, now=100.0)  # back: counted anew
    run.ran(1, settled=True, now=110.0)
    run.ran(2, settled=True, now=200.0)
    run.ran(1, settled=False, now=230.0)  # a round not settled lowers nothing
    assert run.count == 3
    with caplog.at_level(logging.WARNING, logger="kairos.controller"):
        run.ran(1, settled=True, now=229.0)
        assert run.count == 3 and not run.unsaved
        run.ran(1, settled=True, now=230.0)  # every settled round for 120 s found fewer
    assert run.count == 2 and run.unsaved  # the most they found
    assert notices(caplog, "has run on 2 serving nodes at most for 120 s, not 3: a full "
                           "restart now waits for 2 at most")
    run.taken_up(3, 2)  # a take-up counts anew, from the count saved
    assert run.count == 3 and not run.unsaved
    run.ran(1, settled=True, now=300.0)
    run.ran(1, settled=True, now=419.0)
    assert run.count == 3
    run.taken_up(None, 3)  # a state saved before the count: from the nodes it knew, unsaved
    assert run.count == 3 and run.unsaved


def test_a_wait_set_to_0_lowers_the_count_at_once_and_quietly(monkeypatch, caplog):
    """No take-up waits then: there is nothing to tell."""
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 0.0)
    run = takeup.NodesRun()
    run.taken_up(3, None)
    with caplog.at_level(logging.WARNING, logger="kairos.controller"):
        run.ran(2, settled=True, now=0.0)
    assert run.count == 2 and not caplog.records


def test_a_node_lost_for_good_is_waited_for_by_the_first_full_restart_only(
        tmp_path, caplog, monkeypatch):
    """Node-c never comes back: the first full restart waits for it, gives up and places the
    6 shards on node-a and node-b. Rounds within a wait's length after record nothing (a
    restart then waits for node-c again); once every settled round for a wait's length found
    2 nodes, 2 are recorded, and the next full restart waits for node-b and not node-c."""
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 0.2)

    async def main():
        backend = Actors()
        saved = await controller_on(backend, str(tmp_path), 6)
        await settled_rounds(saved)
        assert saved_state(saved)["nodes_run"] == 3
        backend.shards.clear()  # a full restart: node-c never back
        backend.node_names = ["node-a", "node-b"]
        first = await controller_on(backend, str(tmp_path), 6)
        assert Counter(first.placement.values()) == {"node-a": 3, "node-b": 3}
        monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 30.0)
        for _ in range(3):
            await settled_rounds(first)
        assert saved_state(first)["nodes_run"] == 3  # less than a wait's length
        await ran_a_wait_long(first, monkeypatch)
        assert saved_state(first)["nodes_run"] == 2
        assert saved_state(first)["density"] == 2  # the density is not raised
        monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 30.0)
        backend.shards.clear()  # a second full restart, only node-a back at first
        backend.node_names = ["node-a"]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="kairos.controller"):
            resuming = asyncio.ensure_future(controller_on(backend, str(tmp_path), 6))
            await until(lambda: waiting(caplog, resuming, 2), 10, "waiting for node-b")
            assert not resuming.done()
            backend.node_names.append("node-b")
            controller = await resuming
        assert Counter(controller.placement.values()) == {"node-a": 3, "node-b": 3}
        assert notices(caplog, "the 2 serving nodes alive are as many as the cluster last ran "
                               "on: the 6 shards to create are placed on them, more than 2")
        assert not notices(caplog, "more to a node")
    asyncio.run(main())


async def restart_waits_for_3_nodes(backend: Actors, store: str, n_shards: int,
                                    caplog) -> Controller:
    """A full restart with node-a back first, then node-d, then node-e: it waits for 3 (the
    nodes the cluster last ran on), not 5 (10 shards at 2 a node) nor fewer."""
    backend.shards.clear()
    backend.node_names = ["node-a"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kairos.controller"):
        resuming = asyncio.ensure_future(controller_on(backend, store, n_shards))
        await until(lambda: waiting(caplog, resuming, 2), 10, "waiting for nodes")
        backend.node_names.append("node-d")
        await until(lambda: waiting(caplog, resuming, 4), 10, "waiting for one more")
        assert not resuming.done()
        backend.node_names.append("node-e")
        controller = await resuming
    assert Counter(controller.placement.values()) == {"node-a": 4, "node-d": 3, "node-e": 3}
    assert not notices(caplog, "more to a node")
    return controller


def test_head_alone_for_a_wait_then_workers_back_as_new_nodes_are_waited_for_by_a_restart(
        tmp_path, caplog, monkeypatch):
    """The workers are preempted while the cluster runs, for longer than a wait: node-a alone
    hosts the 6 shards (1 recorded). They come back as new nodes (new Ray node ids), each
    given its share of new shards (10 shards, 2 a node saved): 3 are recorded at once, and
    the next full restart waits for 3 nodes, rather than placing the shards on the head."""
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 30.0)

    async def main():
        backend = Actors()
        backend.cpus.update(dict.fromkeys(SPREAD, 2.0))  # each node's share: 2 shards
        controller = await controller_on(backend, str(tmp_path), 6)
        backend.node_names = ["node-a"]
        await ran_a_wait_long(controller, monkeypatch)
        assert Counter(controller.placement.values()) == {"node-a": 6}
        assert saved_state(controller)["nodes_run"] == 1
        monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 30.0)
        backend.cpus.update({"node-d": 2.0, "node-e": 2.0})
        backend.node_names += ["node-d", "node-e"]
        await settled_rounds(controller)
        n_shards = len(controller.shards)
        assert n_shards == 10 and saved_state(controller)["nodes_run"] == 3
        assert saved_state(controller)["density"] == 2
        await restart_waits_for_3_nodes(backend, str(tmp_path), n_shards, caplog)
    asyncio.run(main())


def test_workers_slower_than_a_timed_out_take_up_and_a_wait_are_waited_for_by_the_next(
        tmp_path, caplog, monkeypatch):
    """A full restart gives up on node-b and node-c (6 shards on node-a); the rounds on node-a
    alone for a wait's length record 1. The workers come back later (new nodes: node-d and
    node-e), given their shares: 3 are recorded, and the next full restart waits for them."""
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 0.2)

    async def main():
        backend, _ = await fully_restarted(str(tmp_path))
        backend.cpus.update({n: 2.0 for n in ("node-a", "node-d", "node-e")})
        controller = await controller_on(backend, str(tmp_path), 6)
        assert Counter(controller.placement.values()) == {"node-a": 6}
        await ran_a_wait_long(controller, monkeypatch)
        assert saved_state(controller)["nodes_run"] == 1
        monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 30.0)
        backend.node_names += ["node-d", "node-e"]
        await settled_rounds(controller)
        assert saved_state(controller)["nodes_run"] == 3
        await restart_waits_for_3_nodes(backend, str(tmp_path), len(controller.shards), caplog)
    asyncio.run(main())


def test_settled_rounds_write_the_store_only_when_the_count_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 30.0)

    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path), 6)
        saves = saves_of(controller, monkeypatch)
        await settled_rounds(controller)
        assert [s["nodes_run"] for s in saves] == [3]  # the first round records it
        for _ in range(5):
            await controller.reconcile()
        assert controller.settled and len(saves) == 1
    asyncio.run(main())


def test_a_save_of_the_count_that_failed_is_made_again_by_the_next_round(tmp_path, caplog,
                                                                         monkeypatch):
    """The store refuses the save that records 2 nodes once (a Redis failover): that step of
    the round fails, logged as such, the round is not settled, and the next one, finding
    nothing new, saves it."""
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 30.0)

    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path), 6)
        await settled_rounds(controller)
        backend.node_names.remove("node-c")  # its 2 shards are replaced on node-a and node-b
        await settled_rounds(controller)
        monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", SHORT_WAIT_S)
        await settled_rounds(controller)  # the first round of a wait's length finding 2
        await asyncio.sleep(2 * SHORT_WAIT_S)
        put, refusals = controller.store.put_meta, [ConnectionError("failover")]
        caplog.clear()

        def refused_once(key: str, blob: bytes) -> None:
            if key == STATE_KEY and refusals:
                raise refusals.pop()
            put(key, blob)
        monkeypatch.setattr(controller.store, "put_meta", refused_once)
        with caplog.at_level(logging.ERROR, logger="kairos.controller"):
            await controller.reconcile()
        assert not refusals and saved_state(controller)["nodes_run"] == 3
        assert notices(caplog, "control loop:") == [
            "control loop: saving the serving nodes the cluster runs on failed; the next "
            "round tries again"]
        assert not controller.settled
        await controller.reconcile()
        assert saved_state(controller)["nodes_run"] == 2
    asyncio.run(main())


@pytest.mark.parametrize("nodes_run", [1, None], ids=["recorded", "absent"])
def test_a_state_saved_before_the_count_was_kept_waits_for_the_density_alone(
        tmp_path, caplog, monkeypatch, nodes_run):
    """6 shards at 2 a node: a take-up that finds 1 node recorded places them at once on
    node-a; without the count it waits for 3 nodes, as before the count was kept."""
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 30.0)

    async def main():
        backend, saved = await fully_restarted(str(tmp_path))
        state = saved_state(saved)
        state["nodes_run"] = nodes_run
        if nodes_run is None:
            del state["nodes_run"]
        saved.store.put_meta(STATE_KEY, msgpack.packb(state, use_bin_type=True))
        with caplog.at_level(logging.WARNING, logger="kairos.controller"):
            resuming = asyncio.ensure_future(controller_on(backend, str(tmp_path), 6))
            await until(lambda: waiting(caplog, resuming, 2), 10, "waiting for nodes")
            if nodes_run:
                controller = await resuming
                assert Counter(controller.placement.values()) == {"node-a": 6}
                assert not notices(caplog, "more to a node")  # no wait timed out
                return
            backend.node_names.append("node-b")
            await until(lambda: waiting(caplog, resuming, 4), 10, "waiting for one more")
            assert not resuming.done()
            backend.node_names.append("node-c")
            controller = await resuming
        assert Counter(controller.placement.values()) == SPREAD
    asyncio.run(main())


def test_a_state_saved_without_the_count_counts_from_the_nodes_it_knew(tmp_path, caplog,
                                                                       monkeypatch):
    """The review of a47cb0e (M1): the release that brings the count takes up a state an
    older controller saved without it (3 nodes known). The workers are slower than the wait:
    the take-up places the 6 shards on node-a, and the rounds there record 3, not 1, so that
    the next full restart (node-a killed for its memory) waits for 3 nodes again."""
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", SHORT_WAIT_S)

    async def main():
        backend, saved = await fully_restarted(str(tmp_path))
        state = saved_state(saved)
        del state["nodes_run"]
        saved.store.put_meta(STATE_KEY, msgpack.packb(state, use_bin_type=True))
        crowded = await controller_on(backend, str(tmp_path), 6)
        assert Counter(crowded.placement.values()) == {"node-a": 6}
        monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 30.0)
        await settled_rounds(crowded)
        assert saved_state(crowded)["nodes_run"] == 3
        backend.shards.clear()
        backend.node_names = ["node-a"]
        with caplog.at_level(logging.WARNING, logger="kairos.controller"):
            resuming = asyncio.ensure_future(controller_on(backend, str(tmp_path), 6))
            await until(lambda: waiting(caplog, resuming, 2), 10, "waiting for nodes")
            backend.node_names.append("node-b")
            await until(lambda: waiting(caplog, resuming, 4), 10, "waiting for one more")
            assert not resuming.done()
            backend.node_names.append("node-c")
            controller = await resuming
        assert Counter(controller.placement.values()) == SPREAD
    asyncio.run(main())


def test_a_state_saved_without_the_count_counts_no_node_it_was_draining(tmp_path,
                                                                          monkeypatch):
    """The review of de74710 (LOW 1): counting the nodes an older state knew leaves out those
    it was draining (an operator's drain, a worker the autoscaler released): a full restart
    would wait for a node that was on its way out. (The take-up, on node-a alone, waits for
    the density only: a short wait.)"""
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", SHORT_WAIT_S)

    async def main():
        backend, saved = await fully_restarted(str(tmp_path))
        state = saved_state(saved)
        del state["nodes_run"]
        assert len(state["nodes"]["known"]) == 3
        state["nodes"]["draining"] = [state["nodes"]["known"][-1]]
        saved.store.put_meta(STATE_KEY, msgpack.packb(state, use_bin_type=True))
        controller = await controller_on(backend, str(tmp_path), 6)
        assert controller.nodes_run.count == 2
    asyncio.run(main())


def test_a_joiner_raises_the_count_though_the_rounds_never_settle(tmp_path, caplog,
                                                                  monkeypatch):
    """The review of a47cb0e (M2): node-d joins and is given its 2 shards, but its gateway
    never starts (tried again forever): no round settles. The rise is recorded anyway, and
    a full restart waits for 4 nodes, rather than placing the 8 shards on 3 of them."""
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 30.0)

    async def main():
        backend = Actors()
        backend.cpus.update(dict.fromkeys(["node-a", "node-b", "node-c", "node-d"], 2.0))
        controller = await controller_on(backend, str(tmp_path), 6, gateways=GATEWAYS)
        await settled_rounds(controller)
        assert saved_state(controller)["nodes_run"] == 3
        backend.gateway_fails_on.add("node-d")
        backend.node_names.append("node-d")
        for _ in range(4):
            await controller.reconcile()
            assert not controller.settled
        assert Counter(controller.placement.values())["node-d"] == 2
        assert saved_state(controller)["nodes_run"] == 4
        backend.gateway_fails_on.clear()
        backend.shards.clear()  # a full restart, the nodes back one at a time
        backend.node_names = ["node-a"]
        with caplog.at_level(logging.WARNING, logger="kairos.controller"):
            resuming = asyncio.ensure_future(controller_on(backend, str(tmp_path), 8,
                                                           gateways=GATEWAYS))
            await until(lambda: waiting(caplog, resuming, 2), 10, "waiting for nodes")
            backend.node_names += ["node-b", "node-c"]
            await until(lambda: waiting(caplog, resuming, 6), 10, "waiting for node-d")
            assert not resuming.done()
            backend.node_names.append("node-d")
            restarted = await resuming
        assert Counter(restarted.placement.values()) == dict.fromkeys(
            ["node-a", "node-b", "node-c", "node-d"], 2)
    asyncio.run(main())


def test_rounds_that_do_not_settle_lower_no_count(tmp_path, monkeypatch):
    """Node-c is lost and its shards' replacements do not start (a store slow to recover
    from, say): the rounds for more than a wait's length find 2 nodes, none settled, and the
    count stays 3; it is lowered only by settled rounds for a wait's length after."""
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 30.0)

    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path), 6)
        await settled_rounds(controller)
        assert saved_state(controller)["nodes_run"] == 3
        first = controller._next_index  # the replacements' names: their starts fail
        backend.fail.update({(shard_name(i), "start"): 1000 for i in range(first, first + 4)})
        backend.node_names.remove("node-c")
        monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", SHORT_WAIT_S)
        await controller.reconcile()
        await asyncio.sleep(2 * SHORT_WAIT_S)
        for _ in range(3):
            await controller.reconcile()
            assert not controller.settled and controller.replacing
        assert controller.nodes_run.count == 3 and saved_state(controller)["nodes_run"] == 3
        backend.fail.clear()
        await settled_rounds(controller)  # the first settled round finding 2
        assert saved_state(controller)["nodes_run"] == 3
        await asyncio.sleep(2 * SHORT_WAIT_S)
        await settled_rounds(controller)
        assert saved_state(controller)["nodes_run"] == 2
    asyncio.run(main())
