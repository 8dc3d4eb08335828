"""A start on a saved cluster with KAIROS_RESUME_KEEPS_SHARDS (a KubeRay head: its `kairos start
--shards` is the same at every restart) keeps the shards it took up, the count asked a floor;
without it, it scales to the count asked, as `kairos up --shards` on a store in use is documented
to. Before, a full restart took up the joiners' shards (after waiting for the workers to rejoin),
then scaled them down to `--shards` and marked every node known, so the workers were never
given their shares again: 88 shards in production moved into 8 before the head served. Without
Ray (Actors)."""
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
        nodes = fully_restarted(backend)
        controller = await restarted_and_settled(backend, str(tmp_path), 2)
        assert Counter(controller.placement.values()) == dict.fromkeys(nodes, 2)
        assert len(controller.map.shards_in_use()) == 6
        assert all(backend.shards[s] is not None for s in controller.shards)
    asyncio.run(main())


def test_a_full_restart_scales_to_the_count_asked_where_the_setting_is_off(tmp_path,
                                                                          monkeypatch):
    keeping(monkeypatch, False)

    async def main():
        backend = await grown(str(tmp_path))
        fully_restarted(backend)
        controller = await restarted_and_settled(backend, str(tmp_path), 2)
        assert len(controller.shards) == 2 and len(controller.map.shards_in_use()) == 2
    asyncio.run(main())


def test_the_count_asked_is_a_floor_the_kept_shards_are_scaled_up_to(tmp_path, monkeypatch):
    keeping(monkeypatch, True)

    async def main():
        backend = await grown(str(tmp_path))
        fully_restarted(backend)
        controller = await restarted_and_settled(backend, str(tmp_path), 8)
        assert len(controller.shards) == 8 and len(controller.map.shards_in_use()) == 8
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
