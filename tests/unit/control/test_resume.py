"""A controller that Ray restarts takes up the saved cluster whole, or not at all, without Ray
(LocalBackend): every shard it finds, started or not, the catalog switched to since the cluster
started, and, after a failed attempt, another attempt at the next call or control round."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from kairos.cluster.control import actor as actor_module
from kairos.cluster.control.actor import ControllerActor
from kairos.cluster.control.controller import Controller
from kairos.cluster.control.learner import Learner
from kairos.cluster.transport.backend import Unavailable
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text, default_compiled

from tests.support.waiting import until
from tests.unit.control.actors import LEARNER, Actors, ActorShard, controller_on

BOOT = default_catalog_text().replace("version: ", "version: boot-", 1)
PUSHED = default_catalog_text().replace("version: ", "version: pushed-", 1)


def versions(backend: Actors) -> set[str]:
    return {shard.catalog_version for shard in backend.shards.values()}


def test_a_shard_that_answers_but_is_not_started_is_kept_by_a_resume(tmp_path):
    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path))
        victim = controller.shards[1]
        backend.restart(victim)  # Ray restarted it too: it answers, not started
        controller = Controller(backend, n_partitions=64, store_url=str(tmp_path))
        assert await controller.resume()
        assert victim in controller.shards and backend.shards[victim] is not None
        version = await controller.put_catalog(PUSHED)
        assert versions(backend) == {version}  # the switch did not skip it
        backend.node_names.remove(backend.node_of(victim))
        await controller.reconcile()
        assert victim not in controller.map.owners and victim not in controller.shards
        assert len(controller.shards) == 3
    asyncio.run(main())


def test_a_restarted_controller_keeps_the_catalog_put_since_the_cluster_started(tmp_path):
    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path), 2, catalog_text=BOOT)
        pushed = await controller.put_catalog(PUSHED)
        # Ray runs the constructor again with the arguments the cluster was started with
        controller = Controller(backend, BOOT, n_partitions=64, store_url=str(tmp_path))
        assert await controller.resume()
        assert controller.catalog_version == pushed and versions(backend) == {pushed}
        assert backend.local_learner.compiled.version == pushed
        # started again on the same store with --catalog: that one is asked for now
        controller = await controller_on(backend, str(tmp_path), 2, catalog_text=BOOT)
        boot = compiled_from_text(BOOT).version
        assert controller.catalog_version == boot and versions(backend) == {boot}
    asyncio.run(main())


@pytest.fixture
def actor_on(monkeypatch):
    """ControllerActor's own class (not Ray's) on a LocalBackend, its loop every 10 ms (the
    loops end with the test's event loop)."""
    monkeypatch.setattr(actor_module, "CONTROL_LOOP_S", 0.01)
    monkeypatch.setattr(actor_module.ray, "get_runtime_context",
                        lambda: SimpleNamespace(get_node_id=lambda: "node-a"))

    def make(backend: Actors, store: str):
        monkeypatch.setattr(actor_module, "RayBackend", lambda *classes: backend)
        return ControllerActor.__ray_metadata__.modified_class(None, 64, store, owner="ours")

    return make


def half_way(backend: Actors, shard: str) -> str:
    """Have the next resume fail half-way: `shard`, restarted by Ray too, does not answer
    its start, once."""
    backend.restart(shard)
    backend.fail[(shard, "start")] = 1
    return shard


async def restarted_half_way(actor_on, store: str) -> tuple:
    """A cluster started, then its controller restarted by Ray, with the next resume to fail
    half-way; (the first controller, the restarted one, the shard that fails its start)."""
    backend = Actors()
    first = actor_on(backend, store)
    await first.start(2)
    first._loop_task.cancel()
    stuck = half_way(backend, first.controller.shards[1])
    return first, actor_on(backend, store), stuck


def test_a_resume_that_failed_half_way_is_done_again_by_the_next_call(tmp_path, actor_on):
    async def main():
        first, again, stuck = await restarted_half_way(actor_on, str(tmp_path))
        with pytest.raises(Unavailable, match=stuck):
            await again.get_map(0, 0.1)
        routing = await again.get_map(0, 1.0)
        assert routing is not None and routing["shards"] == sorted(first.controller.shards)
        assert again._loop_task is not None and not again._loop_task.done()
    asyncio.run(main())


def test_a_resume_that_failed_is_done_again_by_the_control_loop(tmp_path, actor_on):
    async def main():
        first, again, _ = await restarted_half_way(actor_on, str(tmp_path))
        with pytest.raises(Unavailable):
            await again.status()
        # no call comes: the loop takes the cluster up, and clients can route again
        routing = await until(lambda: again.controller._routable, 5, "the map published")
        assert routing.version == first.controller.map.version
    asyncio.run(main())


def test_a_learner_that_does_not_answer_a_resume_is_told_the_catalog_by_the_loop(tmp_path):
    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path), 2)
        pushed = await controller.put_catalog(PUSHED)
        # restarting with the controller, on the boot catalog and not told the running one
        backend.local_learner = Learner(default_compiled(), default_catalog_text(),
                                        unconfirmed=True)
        backend.fail[(LEARNER, "switch")] = 1
        controller = Controller(backend, n_partitions=64, store_url=str(tmp_path))
        assert await controller.resume()  # clients route meanwhile
        assert controller.routing()["version"] == controller.map.version
        await controller.reconcile()
        assert backend.local_learner.compiled.version == pushed
    asyncio.run(main())


def test_shards_a_start_or_a_resume_starts_get_the_map_meanwhile(tmp_path, actor_on,
                                                                 monkeypatch):
    """A shard being started serves its own endpoint with a client that asks the controller
    for the map: had that call waited for the start (or the resume) to end, each waited for
    the other until the call's deadline."""
    asked: list = []

    async def start(self, *args, **kwargs):
        actor = self._backend.actor  # what a shard's own endpoint asks as it starts
        asked.append(await asyncio.wait_for(asyncio.gather(
            actor.get_map(-1, 0.0), actor.get_catalog()), 5))
        with pytest.raises(Unavailable):  # at once: a gateway keeps the endpoints it knew
            await asyncio.wait_for(actor.shard_endpoints(), 5)
        return await ActorShard.start(self, *args, **kwargs)

    async def main():
        monkeypatch.setattr(AskingShard, "start", start)
        backend = Asking()
        backend.actor = first = actor_on(backend, str(tmp_path))
        await asyncio.wait_for(first.start(2), 20)
        first._loop_task.cancel()
        backend.restart(first.controller.shards[1])  # the resume starts it again
        backend.actor = again = actor_on(backend, str(tmp_path))
        routing = await asyncio.wait_for(again.get_map(0, 5.0), 20)
        assert routing is not None and len(asked) == 3
    asyncio.run(main())


class AskingShard(ActorShard):
    pass


class Asking(Actors):
    def shard(self, name: str) -> AskingShard:
        return AskingShard(self, name)


class Together(Actors):
    """Shards whose starts wait until every one of `expected` is starting."""

    def __init__(self):
        super().__init__()
        self.expected = 0
        self.starting: set[str] = set()
        self.all_in = asyncio.Event()

    def shard(self, name: str) -> "TogetherShard":
        return TogetherShard(self, name)


class TogetherShard(ActorShard):
    async def start(self, *args, **kwargs):
        backend = self._backend
        if backend.expected:
            backend.starting.add(self.name)
            if len(backend.starting) == backend.expected:
                backend.all_in.set()
            await asyncio.wait_for(backend.all_in.wait(), 5)
        return await super().start(*args, **kwargs)


def test_a_resume_starts_the_shards_ray_restarted_all_at_once(tmp_path):
    """Each may take KAIROS_SHARD_START_S to recover: one after another, a cluster of a few
    shards outlasted the head pod's startup probe and was restarted in a loop."""
    async def main():
        backend = Together()
        first = await controller_on(backend, str(tmp_path), 3)
        for name in first.shards:
            backend.restart(name)
        backend.expected = 3
        controller = Controller(backend, n_partitions=64, store_url=str(tmp_path))
        assert await controller.resume()
        assert backend.starting == set(first.shards)
    asyncio.run(main())


class Held(Actors):
    """A shard's start, once restarted, waits for `go`; starts are counted."""

    def __init__(self):
        super().__init__()
        self.starts: dict[str, int] = {}
        self.in_start, self.go = asyncio.Event(), asyncio.Event()
        self.holding = False

    def shard(self, name: str) -> "HeldShard":
        return HeldShard(self, name)


class HeldShard(ActorShard):
    async def start(self, *args, **kwargs):
        backend = self._backend
        backend.starts[self.name] = backend.starts.get(self.name, 0) + 1
        if backend.holding:
            backend.in_start.set()
            await backend.go.wait()
        return await super().start(*args, **kwargs)


def test_a_caller_that_gives_up_does_not_cancel_the_resume_it_set_off(tmp_path, actor_on):
    """The first call after a restart is often a long poll for the map, cancelled when its
    caller gives up: the take-up it set off goes on, and no shard is started twice."""
    async def main():
        backend = Held()
        first = actor_on(backend, str(tmp_path))
        await first.start(2)
        first._loop_task.cancel()
        name = first.controller.shards[1]
        backend.restart(name)
        backend.holding, backend.starts = True, {}
        again = actor_on(backend, str(tmp_path))
        poll = asyncio.ensure_future(again.get_map(0, 30.0))
        await asyncio.wait_for(backend.in_start.wait(), 5)
        catalog = await asyncio.wait_for(again.get_catalog(), 5)  # answered meanwhile
        assert catalog["version"] == first.controller.catalog_version
        poll.cancel()
        await asyncio.sleep(0.05)
        backend.go.set()
        await until(lambda: again.controller.ready, 5, "the take-up to end")
        assert backend.starts == {name: 1}
    asyncio.run(main())


def test_a_controller_whose_loop_is_stopped_starts_nothing_again(tmp_path, actor_on):
    """runtime.stop stops the loop first: the gateways and shards it stops next, the loop's
    rounds would start again (here: a shard whose node left, replaced)."""
    async def main():
        backend = Actors()
        actor = actor_on(backend, str(tmp_path))
        await actor.start(2)
        await actor.stop_loop()
        shards = set(backend.shards)
        backend.node_names.remove(backend.node_of(actor.controller.shards[0]))
        await asyncio.sleep(0.1)  # rounds of the loop, had it gone on
        assert actor._loop_task.done() and set(backend.shards) == shards
    asyncio.run(main())
