"""A start on a saved cluster with KAIROS_RESUME_KEEPS_SHARDS (a KubeRay head: its `kairos start
--shards` is the same at every restart) keeps the shards it took up, the count asked a floor;
without it, it scales to the count asked, as `kairos up --shards` on a store in use is documented
to. Before, a full restart took up the joiners' shards (after waiting for the workers to rejoin),
then scaled them down to `--shards` and marked every node known, so the workers were never
given their shares again: 88 shards in production moved into 8 before the head served. It keeps
no more than the nodes hosting them are sized for (a take-up that stopped waiting for workers
crowded theirs there), and evens out a spread left uneven. Without Ray (Actors)."""
from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from kairos.cluster.control import controller as controller_module
from kairos.cluster.control import takeup
from kairos.cluster.control.controller import Controller

from tests.unit.control.actors import Actors, controller_on

WORKERS = ("node-b", "node-c")


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(takeup, "POLL_S", 0.01)
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)


def keeping(monkeypatch, on: bool) -> None:
    monkeypatch.setattr(takeup, "RESUME_KEEPS_SHARDS", int(on))


async def grown(store: str) -> Actors:
    """The head started with `--shards 2`, then two workers joined: 6 shards, 2 on each node
    (2 CPUs each); the backend."""
    backend = Actors(("node-a",))
    backend.cpus.update(dict.fromkeys(("node-a", *WORKERS), 2.0))
    controller = await controller_on(backend, store, 2)
    backend.node_names += WORKERS
    await controller._grow()
    assert Counter(controller.placement.values()) == dict.fromkeys(("node-a", *WORKERS), 2)
    return backend


def fully_restarted(backend: Actors) -> list[str]:
    """Every process gone, the three nodes back under new ids (Ray gives a node a new one at
    each start): the ids."""
    backend.shards.clear()
    backend.node_names = [f"{node}-again" for node in ("node-a", *WORKERS)]
    backend.cpus.update(dict.fromkeys(backend.node_names, 2.0))
    return list(backend.node_names)


async def restarted_and_settled(backend: Actors, store: str, n_shards: int) -> Controller:
    """The head's `kairos start --shards n_shards` on the saved cluster, then the control
    loop's steps that give shards to joiners and spread crowded nodes out."""
    controller = await controller_on(backend, store, n_shards)
    await controller._grow()
    await controller._uncrowd()
    return controller


def test_a_full_restart_keeps_the_joiners_shards_where_the_setting_is_on(tmp_path,
                                                                         monkeypatch):
    keeping(monkeypatch, True)

    async def main():
        backend = await grown(str(tmp_path))
        saved = backend.local_controller.map.version
        nodes = fully_restarted(backend)
        controller = await restarted_and_settled(backend, str(tmp_path), 2)
        assert Counter(controller.placement.values()) == dict.fromkeys(nodes, 2)
        assert len(controller.map.shards_in_use()) == 6
        assert controller.map.version == saved  # an even spread kept: nothing moved
        assert all(backend.shards[s] is not None for s in controller.shards)
    asyncio.run(main())


# off: the count asked, as before the setting (2 of the 6 saved); on, the count asked is a floor
# the kept shards are scaled up to (8)
@pytest.mark.parametrize("keep, asked", [(False, 2), (True, 8)])
def test_a_full_restart_scales_to_the_count_asked_unless_it_keeps_more(tmp_path, monkeypatch,
                                                                       keep, asked):
    keeping(monkeypatch, keep)

    async def main():
        backend = await grown(str(tmp_path))
        fully_restarted(backend)
        controller = await restarted_and_settled(backend, str(tmp_path), asked)
        assert len(controller.shards) == asked
        assert len(controller.map.shards_in_use()) == asked
    asyncio.run(main())


def test_a_node_alive_hosting_no_kept_shard_is_given_its_share_as_a_joiner(tmp_path,
                                                                          monkeypatch):
    """`kairos start` again while the Ray cluster lives on (its shards answer, where they
    were) and a worker joined meanwhile: the kept shards did not place it, so the control
    loop gives it its share."""
    keeping(monkeypatch, True)

    async def main():
        backend = await grown(str(tmp_path))
        backend.node_names.append("node-d")
        backend.cpus["node-d"] = 2.0
        controller = await restarted_and_settled(backend, str(tmp_path), 2)
        assert Counter(controller.placement.values()) == dict.fromkeys(
            ("node-a", *WORKERS, "node-d"), 2)
    asyncio.run(main())


@pytest.mark.parametrize("back", [("a2",), ("a2", "b2")])
def test_the_kept_shards_are_no_more_than_the_nodes_back_are_sized_for(tmp_path, monkeypatch,
                                                                       back):
    """The take-up stopped waiting for the workers (autoscaled nodes, not back yet) and placed
    the 6 saved shards on the nodes back: those keep their share, 2 a node; the workers that
    come back later are joiners given theirs, and the count is back at 6. Keeping all 6 there,
    the head stayed at 6 for good (no node had room for `_uncrowd`) and the cluster grew to
    10 shards."""
    keeping(monkeypatch, True)
    monkeypatch.setattr(takeup, "TAKEUP_NODES_WAIT_S", 0.05)

    async def main():
        backend = await grown(str(tmp_path))
        backend.shards.clear()
        backend.node_names = list(back)
        backend.cpus.update(dict.fromkeys(("a2", "b2", "c2"), 2.0))
        controller = await controller_on(backend, str(tmp_path), 2)
        assert Counter(controller.placement.values()) == dict.fromkeys(back, 2)
        backend.node_names += [n for n in ("b2", "c2") if n not in back]
        for _ in range(3):  # rounds enough to spread a crowded node out, where one has room
            await controller._grow()
            await controller._uncrowd()
        assert Counter(controller.placement.values()) == dict.fromkeys(("a2", "b2", "c2"), 2)
        assert len(controller.map.shards_in_use()) == 6
    asyncio.run(main())


def test_a_spread_a_join_cut_short_left_uneven_is_evened_out_by_the_start(tmp_path,
                                                                          monkeypatch):
    """Its count unchanged, the start keeping its shards scales them all the same: no round
    of the control loop evens out a spread that a scale, drain or join cut short left."""
    keeping(monkeypatch, True)

    async def main():
        backend = Actors(("node-a",))
        backend.cpus.update(dict.fromkeys(("node-a", *WORKERS), 2.0))
        controller = await controller_on(backend, str(tmp_path), 2)
        backend.node_names += WORKERS
        backend.fail[("kairos-shard-0005", "adopt")] = 1  # the join's first round fails
        with pytest.raises(RuntimeError, match="handoffs failed"):
            await controller._grow()
        target = controller._serving_shards()
        assert controller.map.plan([s for s in target if s != "kairos-shard-0005"], 1)
        fully_restarted(backend)
        controller = await restarted_and_settled(backend, str(tmp_path), 2)
        assert not controller.map.plan(controller._serving_shards(), 1)
    asyncio.run(main())


def test_a_first_start_with_the_setting_on_is_a_first_start(tmp_path, monkeypatch):
    """No shards taken up: `--shards` places them, and every node alive is known, those it
    placed none on included (no joiners: they get no share of new shards)."""
    keeping(monkeypatch, True)

    async def main():
        backend = Actors(("node-a", *WORKERS))
        backend.cpus.update(dict.fromkeys(("node-a", *WORKERS), 2.0))
        controller = await controller_on(backend, str(tmp_path), 2)
        await controller._grow()
        await controller._uncrowd()
        assert len(controller.shards) == 2 and len(controller.map.shards_in_use()) == 2
        assert controller.nodes.known == {"node-a", *WORKERS}
    asyncio.run(main())


def test_kept_shards_above_their_nodes_shares_are_scaled_down_to_them(tmp_path, monkeypatch):
    """`kairos start --shards 2` again while the Ray cluster lives on: node-a (2 CPUs) hosts
    the 4 shards of the first start, node-b (1 CPU) the one it got as a joiner. Kept: 3, as
    many as the two are sized for, node-a's crowding spread out (`_uncrowd`)."""
    keeping(monkeypatch, True)

    async def main():
        backend = Actors(("node-a",))
        backend.cpus.update({"node-a": 2.0, "node-b": 1.0})
        controller = await controller_on(backend, str(tmp_path), 4)
        backend.node_names.append("node-b")
        await controller._grow()
        assert Counter(controller.placement.values()) == {"node-a": 4, "node-b": 1}
        controller = await restarted_and_settled(backend, str(tmp_path), 2)
        assert Counter(controller.placement.values()) == {"node-a": 2, "node-b": 1}
        assert len(controller.map.shards_in_use()) == 3
    asyncio.run(main())
