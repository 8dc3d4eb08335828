"""A full restart (a KubeRay Recreate upgrade, the head container restarted, a suspend and
resume) takes the saved cluster up while only the head's node is back: the shards it creates
wait until the alive nodes host them no denser than they were placed when the state was saved
(takeup.py), or, past KAIROS_TAKEUP_NODES_WAIT_S, go on the nodes alive with a warning. Issue
18: before, every shard went on the head, and a head sized for its share ran out of memory
recovering them all. Without Ray (Actors)."""
from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter

import msgpack
import pytest

from kairos.cluster.control import controller as controller_module
from kairos.cluster.control import takeup
from kairos.cluster.control.controller import IN_PROCESS_OWNER, Controller
from kairos.cluster.control.saved import STATE_KEY
from kairos.cluster.storage.ownership import StoreClaim
from kairos.cluster.storage.store import StoreInUse

from tests.support.waiting import until
from tests.unit.control.actors import Actors, controller_on
from tests.unit.control.test_store_claim import lose_claim

SPREAD = {"node-a": 2, "node-b": 2, "node-c": 2}


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(takeup, "POLL_S", 0.01)


async def fully_restarted(store: str) -> tuple[Actors, Controller]:
    """6 shards saved 2 to a node on 3 nodes, then every process gone and only node-a (the
    head) back; the backend and the controller that saved it."""
    backend = Actors()
    saved = await controller_on(backend, store, 6)
    assert Counter(saved.placement.values()) == SPREAD
    backend.shards.clear()
    backend.node_names = ["node-a"]
    return backend, saved


def saved_state(controller: Controller) -> dict:
    """The state in `controller`'s store, as the last save left it."""
    return msgpack.unpackb(controller.store.get_meta(STATE_KEY), raw=False)


def notices(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def waiting(caplog, resuming: asyncio.Future, take: int) -> bool:
    """Whether the take-up said it waits with the alive nodes taking `take` shards (or, as
    without the wait, already ended)."""
    return resuming.done() or bool(notices(caplog, f"serving nodes alive take {take}"))


def test_the_shards_a_full_restart_creates_wait_for_the_nodes_to_host_them(tmp_path, caplog):
    async def main():
        backend, _ = await fully_restarted(str(tmp_path))
        with caplog.at_level(logging.WARNING, logger="kairos.controller"):
            resuming = asyncio.ensure_future(controller_on(backend, str(tmp_path), 6))
            await until(lambda: waiting(caplog, resuming, 2), 10, "waiting for nodes")
            backend.node_names.append("node-b")  # room for 4 of the 6: it waits on
            await until(lambda: waiting(caplog, resuming, 4), 10, "waiting for one more")
            backend.node_names.append("node-c")
            controller = await resuming
        assert Counter(controller.placement.values()) == SPREAD
        assert Counter(backend.created_on[s] for s in controller.shards) == SPREAD
        assert all(backend.shards[s] is not None for s in controller.shards)  # all started
    asyncio.run(main())


def test_nodes_that_never_come_leave_the_shards_on_those_alive_with_a_warning(
        tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 0.2)

    async def main():
        backend, _ = await fully_restarted(str(tmp_path))
        with caplog.at_level(logging.WARNING, logger="kairos.controller"):
            controller = await controller_on(backend, str(tmp_path), 6)
        assert Counter(controller.placement.values()) == {"node-a": 6}
        assert all(backend.shards[s] is not None for s in controller.shards)
        assert notices(caplog, "after 0.2 s the 1 serving nodes alive take 2 of the 6 shards "
                               "to create at 2 a node")
        # less than a second to wait is not "0 s"
        assert re.search(r"waiting up to 0\.\d+ s", notices(caplog, "waiting up to")[0])
    asyncio.run(main())


def test_a_wait_set_to_0_places_the_shards_at_once_and_quietly(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 0.0)

    async def main():
        backend, _ = await fully_restarted(str(tmp_path))
        with caplog.at_level(logging.WARNING, logger="kairos.controller"):
            controller = await controller_on(backend, str(tmp_path), 6)
        assert Counter(controller.placement.values()) == {"node-a": 6}
        assert not notices(caplog, "nodes alive") and not notices(caplog, "more to a node")
    asyncio.run(main())


def test_a_take_up_that_timed_out_leaves_the_next_full_restart_to_wait_again(
        tmp_path, caplog, monkeypatch):
    """The 6 shards the first take-up crowded on node-a are not the density saved: the next
    full restart waits for 3 nodes again, and spreads them 2 a node."""
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 0.2)

    async def main():
        backend, _ = await fully_restarted(str(tmp_path))
        crowded = await controller_on(backend, str(tmp_path), 6)
        assert Counter(crowded.placement.values()) == {"node-a": 6}
        assert saved_state(crowded)["density"] == 2
        monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 30.0)
        backend.shards.clear()  # a second full restart, only node-a back at first
        with caplog.at_level(logging.WARNING, logger="kairos.controller"):
            resuming = asyncio.ensure_future(controller_on(backend, str(tmp_path), 6))
            await until(lambda: waiting(caplog, resuming, 2), 10, "waiting for nodes")
            backend.node_names += ["node-b", "node-c"]
            controller = await resuming
        assert Counter(controller.placement.values()) == SPREAD
    asyncio.run(main())


def test_a_node_lost_does_not_raise_the_density_saved_and_a_scale_up_does(tmp_path):
    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path), 6)
        backend.node_names.remove("node-c")  # its 2 shards are replaced on node-a and node-b
        await controller._replace_departed(backend.nodes())
        assert Counter(controller.placement.values()) == {"node-a": 3, "node-b": 3}
        assert saved_state(controller)["density"] == 2
        await controller.scale(8)  # more shards than 2 nodes host at 3 a node
        assert Counter(controller.placement.values()) == {"node-a": 4, "node-b": 4}
        assert saved_state(controller)["density"] == 4
    asyncio.run(main())


def test_a_draining_node_alive_is_no_room_for_the_shards_a_full_restart_creates(tmp_path,
                                                                               caplog):
    async def main():
        backend, saved = await fully_restarted(str(tmp_path))
        state = saved_state(saved)
        state["nodes"]["draining"] = ["node-c"]
        saved.store.put_meta(STATE_KEY, msgpack.packb(state, use_bin_type=True))
        backend.node_names += ["node-b", "node-c"]  # room for 4 of the 6 at 2 a node
        with caplog.at_level(logging.WARNING, logger="kairos.controller"):
            resuming = asyncio.ensure_future(controller_on(backend, str(tmp_path), 6))
            await until(lambda: waiting(caplog, resuming, 4), 10, "waiting for a node")
            backend.node_names.append("node-d")
            controller = await resuming
        assert Counter(controller.placement.values()) == {"node-a": 2, "node-b": 2,
                                                          "node-d": 2}
    asyncio.run(main())


def test_a_state_saved_before_the_density_was_kept_is_taken_up_as_before(
        tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 30.0)

    async def main():
        backend, saved = await fully_restarted(str(tmp_path))
        state = msgpack.unpackb(saved.store.get_meta(STATE_KEY), raw=False)
        del state["density"]
        saved.store.put_meta(STATE_KEY, msgpack.packb(state, use_bin_type=True))
        with caplog.at_level(logging.WARNING, logger="kairos.controller"):
            controller = await controller_on(backend, str(tmp_path), 6)
        assert Counter(controller.placement.values()) == {"node-a": 6}
        assert not notices(caplog, "nodes alive take")
    asyncio.run(main())


def test_a_restarted_controller_whose_nodes_have_room_does_not_wait(tmp_path, caplog,
                                                                    monkeypatch):
    """Ray restarted the controller, and one shard with it: its node hosts it again at once."""
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 30.0)

    async def main():
        backend = Actors()
        saved = await controller_on(backend, str(tmp_path), 6)
        gone = saved.shards[4]
        await backend.kill_shard(gone)
        with caplog.at_level(logging.WARNING, logger="kairos.controller"):
            controller = Controller(backend, n_partitions=64, store_url=str(tmp_path))
            assert await controller.resume()
        assert controller.placement == saved.placement and backend.shards[gone] is not None
        assert not notices(caplog, "nodes alive take")
    asyncio.run(main())


def test_a_controller_restarted_with_nodes_gone_for_good_creates_their_shards_at_once(
        tmp_path, caplog, monkeypatch):
    """Ray restarted the controller, and node-b and node-c left for good with their shards:
    the shards that answer tell that the Ray cluster survived, and no node is about to
    rejoin. Node-a, full at 2 a node, takes their 4 shards at once rather than after the wait
    (the control loop spreads them over the nodes that join later)."""
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 3600.0)

    async def main():
        backend = Actors()
        saved = await controller_on(backend, str(tmp_path), 6)
        backend.node_names = ["node-a"]
        for name in [s for s, node in saved.placement.items() if node != "node-a"]:
            await backend.kill_shard(name)
        with caplog.at_level(logging.WARNING, logger="kairos.controller"):
            controller = Controller(backend, n_partitions=64, store_url=str(tmp_path))
            resuming = asyncio.ensure_future(controller.resume())
            await until(lambda: waiting(caplog, resuming, 2), 10, "the take-up")
            assert not notices(caplog, "nodes alive take")
            assert await resuming
        assert Counter(controller.placement.values()) == {"node-a": 6}
        assert all(backend.shards[s] is not None for s in controller.shards)
    asyncio.run(main())


def test_a_controller_killed_while_it_waits_leaves_the_next_one_to_wait_again(tmp_path,
                                                                              caplog):
    async def main():
        backend, saved = await fully_restarted(str(tmp_path))
        blob = saved.store.get_meta(STATE_KEY)
        with caplog.at_level(logging.WARNING, logger="kairos.controller"):
            resuming = asyncio.ensure_future(controller_on(backend, str(tmp_path), 6))
            await until(lambda: waiting(caplog, resuming, 2), 10, "waiting for nodes")
            resuming.cancel()  # its process dies
            await asyncio.wait([resuming])
            assert not backend.shards and saved.store.get_meta(STATE_KEY) == blob
            caplog.clear()
            resuming = asyncio.ensure_future(controller_on(backend, str(tmp_path), 6))
            await until(lambda: waiting(caplog, resuming, 2), 10, "waiting again")
            backend.node_names += ["node-b", "node-c"]
            controller = await resuming
        assert Counter(controller.placement.values()) == SPREAD
    asyncio.run(main())


def test_a_claim_lost_while_the_take_up_waits_creates_no_shard(tmp_path, caplog, monkeypatch):
    async def main():
        backend, _ = await fully_restarted(str(tmp_path))
        controller = backend.local_controller = Controller(backend, n_partitions=64,
                                                           store_url=str(tmp_path))
        controller.store_claim = StoreClaim(controller.store, IN_PROCESS_OWNER, lease_s=1.0,
                                            renew_s=0.1)
        with caplog.at_level(logging.WARNING, logger="kairos.controller"):
            resuming = asyncio.ensure_future(controller.start(6))
            await until(lambda: waiting(caplog, resuming, 2), 10, "waiting for nodes")
            lose_claim(controller, monkeypatch)
            await until(resuming.done, 10, "the take-up ended")
        with pytest.raises(StoreInUse, match="another Kairos cluster"):
            await resuming
        assert not backend.shards and controller.map is None
    asyncio.run(main())


def test_spreading_a_timed_out_take_up_out_never_raises_the_density_saved(
        tmp_path, monkeypatch):
    """The nodes come back after the take-up timed out (6 on node-a): each step that spreads
    the shards out creates one on a node with room before it retires one of node-a's, and
    those 7 shards are no scale-up. The density saved stays 2 at every save: a full restart
    meanwhile waits for the nodes again, rather than putting 4 on the head."""
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 0.2)
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)

    async def main():
        backend, _ = await fully_restarted(str(tmp_path))
        backend.cpus.update(dict.fromkeys(SPREAD, 2.0))  # each node's share: 2 shards
        controller = await controller_on(backend, str(tmp_path), 6)
        assert Counter(controller.placement.values()) == {"node-a": 6}
        saves = saves_of(controller, monkeypatch)
        backend.node_names += ["node-b", "node-c"]
        await asyncio.sleep(0)  # the node table the start read, node-a alone, is read again
        for _ in range(4):  # a shard from node-a to node-b, node-c, node-b, node-c
            await controller._uncrowd()
        assert Counter(controller.placement.values()) == SPREAD
        densities = [s["density"] for s in saves]
        assert densities and set(densities) == {2}
    asyncio.run(main())


def test_a_scale_up_while_crowded_saves_an_even_spread_over_the_serving_nodes(
        tmp_path, monkeypatch):
    """6 crowded on node-a by a take-up that timed out, node-b and node-c back: 7 shards
    are recorded at 3 a node (7 over 3 serving nodes), not at the crowding's 6 or more."""
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 0.2)

    async def main():
        backend, _ = await fully_restarted(str(tmp_path))
        controller = await controller_on(backend, str(tmp_path), 6)
        backend.node_names += ["node-b", "node-c"]
        await controller.scale(7)
        assert max(Counter(controller.placement.values()).values()) == 6  # still crowded
        assert saved_state(controller)["density"] == 3
    asyncio.run(main())


def test_a_joiners_shares_raise_the_density_saved(tmp_path):
    """A node with 3 CPUs joins 2 nodes hosting 2 shards each: it is given 3, and a full
    restart may place 3 a node."""
    async def main():
        backend = Actors(("node-a", "node-b"))
        backend.cpus.update({"node-a": 2.0, "node-b": 2.0, "node-c": 3.0})
        controller = await controller_on(backend, str(tmp_path), 4)
        assert saved_state(controller)["density"] == 2
        backend.node_names.append("node-c")
        await controller._grow()
        assert Counter(controller.placement.values()) == {"node-a": 2, "node-b": 2,
                                                          "node-c": 3}
        assert saved_state(controller)["density"] == 3
    asyncio.run(main())


def saves_of(controller: Controller, monkeypatch) -> list[dict]:
    """The states `controller` saves from now on, each as written to its store."""
    saves, put = [], controller.store.put_meta

    def recorded(key: str, blob: bytes) -> None:
        put(key, blob)
        if key == STATE_KEY:
            saves.append(msgpack.unpackb(blob, raw=False))
    monkeypatch.setattr(controller.store, "put_meta", recorded)
    return saves
