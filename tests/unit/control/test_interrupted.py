"""A partition move and a catalog switch interrupted by a crash, without Ray (LocalBackend).

The controller "crashes" at a chosen step: the step hangs, and the test cancels the task the
controller ran in, so nothing after that step runs. A new Controller on the same store then
resumes, as Ray would restart it. Afterwards every partition is owned by exactly one shard,
the one the map names, every shard is on one catalog version, and no acknowledged event is
lost.
"""
from __future__ import annotations

import asyncio
import contextlib

import pytest

from kairos.cluster.control import controller as controller_module
from kairos.cluster.control.controller import Controller
from kairos.cluster.control.learner import Learner
from kairos.cluster.shard.shard import Shard
from kairos.cluster.transport.backend import Unavailable
from kairos.cluster.transport.client import KairosClient
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import default_compiled

from tests.support.local_backend import LocalBackend, LocalShard

T0 = 1_795_629_600.0
CUSTOMERS = [f"c{i}" for i in range(40)]
EVENTS = 3


@pytest.fixture(autouse=True)
def no_grace(monkeypatch):
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)


class Crashing(LocalBackend):
    """A LocalBackend whose shards can fail a step (`fail`) or hang once at one (`hang_at`,
    setting `reached`), and that say they are started, as a ShardActor's health does."""

    def __init__(self):
        super().__init__()
        self.fail: dict[tuple[str, str], int] = {}  # (shard, step) -> failures to inject
        self.hang_at: tuple[str, str] | None = None  # (step, "before" | "after")
        self.reached = asyncio.Event()

    def shard(self, name: str) -> "Hooked":
        return Hooked(self, name)


class Hooked(LocalShard):
    async def _step(self, step: str, *args):
        backend = self._backend
        if backend.fail.get((self.name, step), 0):
            backend.fail[(self.name, step)] -= 1
            raise Unavailable(f"{self.name}: {step} failed")
        await self._hang(step, "before")
        value = await getattr(LocalShard, step)(self, *args)
        await self._hang(step, "after")
        return value

    async def _hang(self, step: str, when: str) -> None:
        if self._backend.hang_at == (step, when):
            self._backend.hang_at = None
            self._backend.reached.set()
            await asyncio.Future()  # until the test cancels the controller

    async def health(self):
        return {**await super().health(), "started": True}

    async def freeze(self, partitions, version):
        return await self._step("freeze", partitions, version)

    async def adopt(self, payload, version):
        return await self._step("adopt", payload, version)

    async def release(self, partitions, version):
        return await self._step("release", partitions, version)

    async def thaw(self, partitions, version):
        return await self._step("thaw", partitions, version)

    async def prepare(self, catalog_text):
        return await self._step("prepare", catalog_text)

    async def commit(self, version):
        return await self._step("commit", version)


async def started(store: str, n_shards: int) -> tuple[Crashing, Controller]:
    backend = Crashing()
    # as Ray constructs it: unconfirmed until the controller tells it the catalog
    backend.local_learner = Learner(default_compiled(), default_catalog_text(), unconfirmed=True)
    return backend, await restarted(backend, store, n_shards)


async def restarted(backend: Crashing, store: str, n_shards: int) -> Controller:
    """A controller on `store`: a new one, or one taking up what a crashed one saved."""
    controller = backend.local_controller = Controller(backend, n_partitions=64,
                                                       store_url=store)
    await controller.start(n_shards)
    return controller


async def crash_during(backend: Crashing, work) -> None:
    task = asyncio.ensure_future(work)
    async with asyncio.timeout(10):
        await backend.reached.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def ingest_all(backend: Crashing, wave: int) -> list[int]:
    client = await KairosClient(backend).connect()
    try:
        return await asyncio.gather(*(client.ingest(c, "page_view", T0 + wave,
                                                    {"category": "home"})
                                      for c in CUSTOMERS))
    finally:
        await client.close()


def assert_one_owner_each(backend: Crashing, controller: Controller) -> None:
    for p, owner in enumerate(controller.map.owners):
        holders = [name for name, shard in backend.shards.items()
                   if shard is not None and p in shard.owned]
        assert holders == [owner], f"partition {p}: map says {owner}, held by {holders}"
        assert p not in backend.shards[owner].leaving, f"partition {p} answers MOVED"


@pytest.mark.parametrize("step", [("freeze", "before"), ("freeze", "after"),
                                  ("adopt", "after"), ("release", "before"),
                                  ("release", "after")])
def test_a_move_interrupted_by_a_controller_crash_is_settled_on_resume(tmp_path, step):
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        for wave in range(EVENTS):
            await ingest_all(backend, wave)
        backend.hang_at = step
        await crash_during(backend, controller.scale(3))
        controller = await restarted(backend, str(tmp_path), 3)
        assert_one_owner_each(backend, controller)
        assert not controller.moving
        await controller.scale(3)  # the interrupted scaling, asked again, goes through
        assert_one_owner_each(backend, controller)
        assert len(set(controller.map.owners)) == 3
        assert await ingest_all(backend, EVENTS) == [EVENTS + 1] * len(CUSTOMERS)
    asyncio.run(main())


def test_a_move_whose_undo_fails_is_settled_by_the_control_loop(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 1)
        await ingest_all(backend, 0)
        source = controller.shards[0]
        backend.fail.update({("kairos-shard-0001", "adopt"): 1, (source, "thaw"): 1})
        with pytest.raises(RuntimeError, match="kairos-shard-0001: adopt failed"):
            await controller.scale(2)
        assert controller.moving  # the source did not answer the thaw: still frozen
        await controller.reconcile()
        assert not controller.moving
        assert_one_owner_each(backend, controller)
        assert await ingest_all(backend, 1) == [2] * len(CUSTOMERS)
    asyncio.run(main())


def catalog_v2(controller: Controller) -> str:
    return controller.catalog_text.replace("version: ", "version: v2-", 1)


def versions(backend: Crashing) -> set[str]:
    return {shard.catalog_version for shard in backend.shards.values()}


def test_a_shard_that_fails_its_commit_is_switched_by_the_control_loop(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 3)
        backend.fail[(controller.shards[1], "commit")] = 1
        version = await controller.put_catalog(catalog_v2(controller))
        assert len(versions(backend)) == 2  # one shard is behind, for now
        await controller.reconcile()
        assert versions(backend) == {version}
    asyncio.run(main())


def test_a_catalog_switch_interrupted_by_a_controller_crash_is_finished_on_resume(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 3)
        seen = controller.routing()  # what the gateways hold
        text = catalog_v2(controller)
        backend.hang_at = ("commit", "before")
        await crash_during(backend, controller.put_catalog(text))
        controller = await restarted(backend, str(tmp_path), 3)
        assert controller.catalog_text == text
        assert versions(backend) == {controller.catalog_version}
        # their long polls learn of it (a map version that names it)
        assert (await controller.get_map(seen["version"], 0.1))["catalog_version"] == \
            controller.catalog_version
    asyncio.run(main())


def test_the_steps_settling_repeats_are_idempotent_and_thaw_refuses_what_is_not_held(
        compiled):
    shard = Shard("kairos-shard-0000", compiled, [0, 1], 8, granted=1)
    shard.freeze([0], 2)
    shard.thaw([0], 2)
    shard.thaw([0], 2)
    assert shard.owned[0] == 2 and 0 not in shard.leaving
    shard.release([1], 2)
    shard.release([1], 2)
    assert 1 not in shard.owned
    with pytest.raises(ValueError, match="not held"):  # it would serve an empty partition
        shard.thaw([1], 3)
    assert 1 not in shard.owned
