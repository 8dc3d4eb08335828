"""Which move target keeps a restarted source down, and which one is replaced for it: a target
Ray restarted lost any adopt pending with its old process, so it holds nothing back; one that
is itself not started (it waits on a target of its own, or its start fails) is not hung, and is
never replaced for keeping a source waiting. Ray-free (the Actors harness)."""
from __future__ import annotations

import asyncio
import logging

import pytest

from kairos.cluster.control import controller as controller_module, rounds
from kairos.cluster.control.partitions import Move

from tests.unit.control.actors import Actors, controller_on

A, B, C = "kairos-shard-0000", "kairos-shard-0001", "kairos-shard-0002"
HEIR = "kairos-shard-0003"


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)
    monkeypatch.setattr(rounds, "HELD_TARGET_S", 0.3)


async def held(store: str, *moves: tuple[str, str]):
    """Three shards, with `moves` (source, target) of one partition each left unsettled."""
    backend = Actors()
    controller = await controller_on(backend, store, n_shards=3)
    controller.moving = [Move(controller.map.partitions_of(s)[0], s, t) for s, t in moves]
    await controller._save()
    return backend, controller


def started(backend: Actors, controller) -> dict[str, bool]:
    return {s: backend.shards.get(s) is not None for s in controller.shards}


def test_in_a_chain_the_hung_target_is_replaced_not_the_one_waiting_on_it(tmp_path):
    """A->B and B->C held, C hung, A and B restarted: A starts at once (B's new process cannot
    adopt late), B waits on C and is never replaced, C is replaced, then B starts."""
    async def main():
        backend, controller = await held(str(tmp_path), (A, B), (B, C))
        backend.fail[(C, "release")] = 10**6
        backend.restart(A)
        backend.restart(B)
        await controller.reconcile()
        assert started(backend, controller) == {A: True, B: False, C: True}
        await asyncio.sleep(0.35)
        await controller.reconcile()
        assert B in controller.shards and C not in controller.shards
        await controller.reconcile()
        assert B in controller.shards and all(started(backend, controller).values())
        assert not controller.moving and len(controller.shards) == 3
    asyncio.run(main())


def test_a_restarted_target_whose_start_fails_is_not_replaced_nor_holds_its_source(tmp_path):
    """A->B held, A and B restarted, B's start fails for a few rounds: A starts at once, and B,
    not hung, is never replaced."""
    async def main():
        backend, controller = await held(str(tmp_path), (A, B))
        backend.restart(A)
        backend.restart(B)
        backend.fail[(B, "start")] = 3
        await controller.reconcile()
        assert started(backend, controller) == {A: True, B: False, C: True}
        for _ in range(4):
            await asyncio.sleep(0.15)
            await controller.reconcile()
        assert controller.shards == [A, B, C] and all(started(backend, controller).values())
        assert not controller.moving
    asyncio.run(main())


def test_a_started_target_that_does_not_answer_is_still_replaced(tmp_path):
    async def main():
        backend, controller = await held(str(tmp_path), (A, B))
        backend.fail[(B, "release")] = 10**6
        backend.restart(A)
        await controller.reconcile()
        assert started(backend, controller)[A] is False
        await asyncio.sleep(0.35)
        await controller.reconcile()
        await controller.reconcile()
        assert B not in controller.shards and all(started(backend, controller).values())
    asyncio.run(main())


def test_a_node_is_not_uncrowded_while_a_replacement_is_not_started(tmp_path):
    """C hung and replaced (its heir lands on A's node), the heir's start failing a while: no
    shard is made or retired meanwhile (a rebalance may need the heir to serve), and once it
    serves the crowded node gives one up, the cluster left at three shards."""
    async def main():
        backend, controller = await held(str(tmp_path), (A, C))
        backend.fail[(C, "release")] = 10**6
        backend.restart(A)
        await controller.reconcile()
        await asyncio.sleep(0.35)
        backend.fail[(HEIR, "start")] = 3
        for _ in range(2):
            await controller.reconcile()
            assert controller.shards == [A, B, HEIR] and HEIR in controller.replacing
        for _ in range(3):
            await controller.reconcile()
        assert len(controller.shards) == 3 and all(started(backend, controller).values())
        assert len(set(controller.placement.values())) == 3  # uncrowded
    asyncio.run(main())


def test_a_replacement_that_waits_on_a_target_is_not_logged_as_failed(tmp_path, caplog):
    """A->B held, B hung, A's node leaves: A's heir waits on B, said as a held start, not as a
    failed replacement with a traceback."""
    async def main():
        backend, controller = await held(str(tmp_path), (A, B))
        backend.fail[(B, "release")] = 10**6
        backend.node_names.remove(backend.created_on[A])
        with caplog.at_level(logging.WARNING, "kairos.controller"):
            await controller.reconcile()
        assert A not in controller.shards and HEIR in controller.replacing
        assert not [r for r in caplog.records if r.exc_info]
        assert any(f"{HEIR} starts once {B}" in r.getMessage() for r in caplog.records)
    asyncio.run(main())


def test_a_resumed_controller_does_not_replace_a_target_that_waits_on_its_own(tmp_path):
    """As the chain above, taken up by a controller that knows no start of A or B (it cannot
    tell B's process from the one the move ran with): B, waiting on C, is still not replaced
    for keeping A down; C is, then B and A start."""
    async def main():
        backend, controller = await held(str(tmp_path), (A, B), (B, C))
        backend.fail[(C, "release")] = 10**6
        backend.restart(A)
        backend.restart(B)
        resumed = await controller_on(backend, str(tmp_path))
        for _ in range(2):
            await resumed.reconcile()
        await asyncio.sleep(0.35)
        for _ in range(4):
            await resumed.reconcile()
            assert B in resumed.shards
        assert C not in resumed.shards and all(started(backend, resumed).values())
        assert not resumed.moving
    asyncio.run(main())
