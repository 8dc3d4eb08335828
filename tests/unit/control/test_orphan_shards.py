"""A controller that crashes while it creates shards (a scale, a first start) leaves shard
actors no saved state names: the controller that resumes stops them, and creates none under
a name taken (Ray refuses it), and `kairos down` stops them too. Ray-free (LocalBackend)."""
from __future__ import annotations

import asyncio

from kairos.cluster.control import runtime
from kairos.cluster.control.controller import shard_name
from kairos.cluster.control.learner import Learner
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import default_compiled

from tests.support.local_backend import LocalShard
from tests.unit.control.test_interrupted import (CUSTOMERS, Crashing, Hooked, crash_during,
                                                 ingest_all, restarted)


class RayNames(Crashing):
    """As Ray: a shard actor keeps its name until killed, and a second one of that name is
    refused; `hang_start`: the shard whose start hangs once (the controller crashes there)."""
    hang_start: str | None = None

    def __init__(self):
        super().__init__()
        self.local_learner = Learner(default_compiled(), default_catalog_text(),
                                     unconfirmed=True)

    async def create_shard(self, name, *args, **kwargs) -> None:
        if name in self.shards:
            raise ValueError(f"the actor name {name} is already taken")
        await super().create_shard(name, *args, **kwargs)

    def shard(self, name: str) -> "HangStart":
        return HangStart(self, name)


class HangStart(Hooked):
    async def start(self, *args, **kwargs):
        if self._backend.hang_start == self.name:
            self._backend.hang_start = None
            self._backend.reached.set()
            await asyncio.Future()  # until the test cancels the controller
        return await LocalShard.start(self, *args, **kwargs)


def test_the_shards_a_crashed_scale_created_are_stopped_on_resume_and_no_name_is_reused(
        tmp_path):
    async def main():
        backend = RayNames()
        controller = await restarted(backend, str(tmp_path), 2)
        await ingest_all(backend, 0)
        backend.hang_start = shard_name(4)  # the third new one: two created and started
        await crash_during(backend, controller.scale(6))
        controller = await restarted(backend, str(tmp_path), 2)
        assert sorted(backend.shards) == sorted(controller.shards)  # no actor unknown to it
        assert controller._next_index == 5  # past every name handed out
        await controller.scale(6)  # names nobody holds
        assert sorted(backend.shards) == sorted(controller.shards)
        assert len(controller.shards) == 6
        assert await ingest_all(backend, 1) == [2] * len(CUSTOMERS)
    asyncio.run(main())


def test_a_first_start_that_crashed_leaves_no_name_taken_for_the_next(tmp_path):
    async def main():
        backend = RayNames()
        backend.hang_start = shard_name(1)  # nothing saved yet: the map comes after
        await crash_during(backend, restarted(backend, str(tmp_path), 2))
        assert set(backend.shards) == {shard_name(0), shard_name(1)}
        controller = await restarted(backend, str(tmp_path), 2)
        assert sorted(backend.shards) == sorted(controller.shards) == \
            [shard_name(0), shard_name(1)]
        assert await ingest_all(backend, 0) == [1] * len(CUSTOMERS)
    asyncio.run(main())


def test_kairos_down_stops_the_shards_named_so_that_the_controller_does_not_list(monkeypatch):
    class Listing:
        class status:
            @staticmethod
            def remote():
                return {"shards": [{"shard": shard_name(0)}]}

    monkeypatch.setattr(runtime, "controller", Listing)
    monkeypatch.setattr(runtime.ray, "get", lambda ref, timeout=None: ref)
    monkeypatch.setattr(runtime.ray.util, "list_named_actors", lambda all_namespaces: [
        {"namespace": runtime.NAMESPACE, "name": name}
        for name in (shard_name(0), shard_name(2), "kairos-controller")])
    assert runtime._shards() == [shard_name(0), shard_name(2)]
