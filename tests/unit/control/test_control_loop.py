"""The control loop's rounds when a step fails, without Ray (LocalBackend): a replacement that
could not be created or started is finished later with the dead shard's journal, a drain that
cannot finish holds up no restart, a move a round could not settle is settled later, a learner
Ray restarted is told the running catalog, and a watch added while a shard starts reaches it."""
from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from kairos.cluster.control import controller as controller_module
from kairos.cluster.control.learner import Learner
from kairos.cluster.storage.decision_logs import DirectoryLog
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.store import JournalFenced, StoreUnavailable
from kairos.cluster.transport.backend import Unavailable
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import default_compiled

from tests.unit.control.actors import (ActorLearner, Actors, ActorShard, controller_on,
                                      customers_of, ingest)

CUSTOMERS = [f"c{i}" for i in range(40)]


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)
    monkeypatch.setattr(controller_module, "DRAIN_UNREADY_S", 0.0)


async def rounds(controller, n: int = 1) -> None:
    """`n` control rounds, as the actor's loop runs them (it logs a round's failure)."""
    for _ in range(n):
        with contextlib.suppress(Exception):
            await controller.reconcile()


def test_a_replacement_that_could_not_be_created_is_made_by_a_later_round(tmp_path):
    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path))
        dead = controller.shards[1]
        backend.node_names.remove(backend.node_of(dead))
        backend.fail[("kairos-shard-0003", "create")] = 1
        await rounds(controller, 2)
        assert dead not in controller.shards and dead not in controller.map.owners
        assert dead not in controller.routing()["shards"] and len(controller.shards) == 3
    asyncio.run(main())


@pytest.mark.parametrize("then", ["a control round", "a controller restart"])
def test_a_replacement_whose_start_failed_recovers_the_dead_shard_s_events(tmp_path, then):
    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path))
        dead = controller.shards[1]
        mine = customers_of(controller, dead)
        for wave in range(3):
            await ingest(backend, mine, wave)
        backend.node_names.remove(backend.node_of(dead))
        backend.fail[("kairos-shard-0003", "start")] = 2  # the round's two tries
        await rounds(controller)
        if then == "a control round":
            await rounds(controller)
        else:
            controller = await controller_on(backend, str(tmp_path))
        routing = controller.routing()
        assert routing["version"] == controller.map.version and dead not in routing["shards"]
        async with asyncio.timeout(10):
            assert await ingest(backend, mine, 3) == [4] * len(mine)  # none lost
        await rounds(controller)
        assert not controller.replacing  # it serves: the dead shard's journal is not needed
    asyncio.run(main())


def test_a_drain_that_cannot_finish_does_not_keep_the_loop_from_restarting_shards(tmp_path):
    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path), home_node="node-a")
        on = {backend.node_of(s): s for s in controller.shards}
        backend.crash.add((on["node-c"], "adopt"))  # Ray restarts it amid the drain
        with pytest.raises(RuntimeError):
            await controller.drain_node("node-b")
        await rounds(controller, 2)
        assert backend.shards[on["node-c"]] is not None  # started again
        assert not controller.moving and "node-b" not in controller.placement.values()
        assert set(controller.map.owners) == {on["node-a"], on["node-c"]}
    asyncio.run(main())


def test_a_move_a_round_left_unsettled_is_settled_later_not_forgotten(tmp_path):
    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path), 2)
        await ingest(backend, CUSTOMERS, 0)
        source = controller.shards[0]
        backend.fail[(source, "release")] = 1  # one round's release does not answer
        await controller.scale(3)
        await rounds(controller)
        held = [p for p in backend.shards[source].owned if controller.map.owners[p] != source]
        assert not held and not controller.moving
        assert await ingest(backend, CUSTOMERS, 1) == [2] * len(CUSTOMERS)
    asyncio.run(main())


def test_a_learner_ray_restarted_is_told_the_running_catalog(tmp_path):
    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path), 2)
        text = controller.catalog_text.replace("version: ", "version: v2-", 1)
        version = await controller.put_catalog(text)
        # back on the boot catalog, not told the running one
        backend.local_learner = Learner(default_compiled(), default_catalog_text(),
                                        unconfirmed=True)
        await rounds(controller)
        assert backend.local_learner.compiled.version == version
    asyncio.run(main())


class HeldStart(Actors):
    """Actors whose next new shard's start waits for `go`."""

    def __init__(self):
        super().__init__()
        self.held: set[str] = set()  # shards whose start has been held already, or need not
        self.in_start, self.go = asyncio.Event(), asyncio.Event()

    def shard(self, name: str) -> "HeldShard":
        return HeldShard(self, name)


class HeldShard(ActorShard):
    async def start(self, *args, **kwargs) -> str:
        if self.name not in self._backend.held:
            self._backend.held.add(self.name)
            self._backend.in_start.set()
            await self._backend.go.wait()
        return await super().start(*args, **kwargs)


def test_a_watch_added_while_a_shard_starts_reaches_it(tmp_path):
    async def main():
        backend = HeldStart()
        backend.held.update(f"kairos-shard-000{i}" for i in range(2))
        controller = await controller_on(backend, str(tmp_path), 2)
        scaling = asyncio.ensure_future(controller.scale(3))
        await backend.in_start.wait()  # the new shard's start call is under way
        await controller.watch_channel("kairos-gateway-0", "web", None)
        backend.go.set()
        await scaling
        await rounds(controller)
        for name, shard in backend.shards.items():
            assert [(w.sink, w.channel) for w in shard.watches.channel] == \
                [("kairos-gateway-0", "web")], name
    asyncio.run(main())


EARLIER = ("kairos-gateway-0", "web", None, True)
LATER = ("kairos-gateway-0", "app", None, True)


class MissingMeanwhile(ActorShard):
    async def watch_channel(self, *change) -> None:
        lagging = self._backend.local_controller.lagging
        lagging.watches.setdefault(self.name, []).append(LATER)  # a broadcast it missed too
        raise Unavailable(f"{self.name}: no answer within 600 s")


def test_watch_changes_a_shard_misses_while_it_is_caught_up_are_kept_in_order(tmp_path):
    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path), 1)
        name = controller.shards[0]
        controller.lagging.watches[name] = [EARLIER]
        backend.shard = lambda shard: MissingMeanwhile(backend, shard)
        await controller.lagging.replay_watches([name])
        assert controller.lagging.watches[name] == [EARLIER, LATER]
    asyncio.run(main())


def test_a_catalog_put_while_the_learner_cannot_read_its_posterior_is_unavailable(
        tmp_path, monkeypatch):
    """UNAVAILABLE at the gateway, which callers retry, not UNKNOWN."""
    from kairos.cluster.storage.store import StoreUnavailable

    async def unread(self, catalog_text):
        raise StoreUnavailable("the learner has not read its saved posterior: redis is down")

    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path), 2)
        monkeypatch.setattr(ActorLearner, "switch", unread)
        with pytest.raises(Unavailable, match="redis is down"):
            await controller.put_catalog(default_catalog_text().replace(
                "version: ", "version: next-", 1))
    asyncio.run(main())


def test_a_new_cluster_tells_the_learner_its_catalog(tmp_path):
    """A learner started on a store an earlier cluster used follows the catalog saved with its
    posterior: a new cluster on another catalog must not leave it there (the shards' deltas
    would wait, refused, until a control round noticed)."""
    from kairos.core.compiler import compiled_from_text
    from kairos.cluster.control.controller import Controller
    other = default_catalog_text().replace("version: ", "version: earlier-", 1)

    async def main():
        backend = Actors()
        backend.local_learner = Learner(compiled_from_text(other), other, unconfirmed=True)
        controller = backend.local_controller = Controller(backend, n_partitions=64,
                                                           store_url=str(tmp_path))
        await controller.start(2)
        assert backend.local_learner.status()["catalog_version"] == controller.catalog_version
    asyncio.run(main())


class StartedThenHeld(ActorShard):
    """A new shard's start that has set its watches, then waits for `go` to answer."""

    async def start(self, *args, **kwargs) -> str:
        incarnation = await super().start(*args, **kwargs)
        if self.name not in self._backend.held:
            self._backend.held.add(self.name)
            self._backend.in_start.set()
            await self._backend.go.wait()
        return incarnation


class HeldAfterStart(HeldStart):
    def shard(self, name: str) -> StartedThenHeld:
        return StartedThenHeld(self, name)


def test_a_watch_removed_and_added_again_while_a_shard_starts_stays_on_it(tmp_path):
    """The removal reached the started shard, the addition did not: the watches as they
    were when the start began are the watches as they are now, and yet the shard lacks one."""
    async def main():
        backend = HeldAfterStart()
        backend.held.update(f"kairos-shard-000{i}" for i in range(2))
        controller = await controller_on(backend, str(tmp_path), 2)
        await controller.watch_channel("kairos-gateway-0", "web", None)
        scaling = asyncio.ensure_future(controller.scale(3))
        await backend.in_start.wait()
        await controller.watch_channel("kairos-gateway-0", "web", None, active=False)
        backend.fail[("kairos-shard-0002", "watch_channel")] = 1
        await controller.watch_channel("kairos-gateway-0", "web", None)
        backend.go.set()
        await scaling
        for name, shard in backend.shards.items():
            assert [(w.sink, w.channel) for w in shard.watches.channel] == \
                [("kairos-gateway-0", "web")], name
    asyncio.run(main())


WEB = ("kairos-gateway-0", "web", None)
APP = ("kairos-gateway-0", "app", None)


class SlowOn(HeldShard):
    """Its watch_channel(WEB, on) takes a while, once asked to."""

    async def watch_channel(self, sink, channel, placement, active=True):
        if self._backend.slow_on and active and (sink, channel, placement) == WEB:
            self._backend.slow_on = False
            self._backend.replaying.set()
            await asyncio.sleep(0.2)
        await super().watch_channel(sink, channel, placement, active)


class SlowOnBackend(HeldStart):
    def __init__(self):
        super().__init__()
        self.slow_on = False
        self.replaying = asyncio.Event()

    def shard(self, name: str) -> SlowOn:
        return SlowOn(self, name)


def test_a_watch_removed_while_a_started_shard_is_caught_up_is_off_there_too(tmp_path):
    """The catch-up sends every watch on again: a removal broadcast meanwhile must not be
    overtaken by it, or the shard keeps pushing to a sink nobody watches."""
    async def main():
        backend = SlowOnBackend()
        backend.held.update(f"kairos-shard-000{i}" for i in range(2))
        controller = await controller_on(backend, str(tmp_path), 2)
        await controller.watch_channel(*WEB)
        scaling = asyncio.ensure_future(controller.scale(3))
        await backend.in_start.wait()
        await controller.watch_channel(*APP)  # a change while the start runs
        backend.slow_on = True
        backend.go.set()
        await backend.replaying.wait()  # the catch-up sends WEB on again, while ...
        await controller.watch_channel(*WEB, active=False)  # ... the operator removes it
        await scaling
        for name, shard in backend.shards.items():
            assert [(w.sink, w.channel) for w in shard.watches.channel] == \
                [("kairos-gateway-0", "app")], name
    asyncio.run(main())


def test_a_replacement_that_served_and_left_too_is_fenced_as_well(tmp_path):
    """B replaced A and served, and its node left before a round saw it serve: C recovers
    A's sources and B's snapshots, which name B's journal; B, should it still run, must
    acknowledge nothing more."""
    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path))
        first = controller.shards[1]
        mine = customers_of(controller, first)
        await ingest(backend, mine, 0)
        backend.node_names.remove(backend.node_of(first))
        await controller._replace_departed(backend.nodes())
        heir = next(s for s in controller.replacing)
        await ingest(backend, customers_of(controller, heir), 1)  # acknowledged by B
        backend.node_names.remove(backend.node_of(heir))
        await controller._replace_departed(backend.nodes())
        for name in (first, heir):
            with pytest.raises(JournalFenced):
                DirectoryStore(tmp_path).journal(name)
        async with asyncio.timeout(10):
            assert await ingest(backend, mine, 2) == [3] * len(mine)  # none lost
    asyncio.run(main())


def test_the_decision_logs_of_shards_gone_are_held_to_the_retention_and_removed_empty(
        tmp_path, monkeypatch):
    """Nothing writes the log of a shard scaled away any more, and no shard trims it: the
    control loop does, and leaves the logs of the shards it knows to their own writers."""
    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path))
        store = controller.store
        now = time.time()
        days = [now - d * 86_400 for d in (6, 5, 1)]  # retention: 3 days
        for name in ("kairos-shard-0090", "kairos-shard-0091", controller.shards[0]):
            for when in days if name != "kairos-shard-0091" else days[:2]:
                store.decision_log(name).append([(when, "ana", b"a record")])
        await rounds(controller)
        kept = {name: [t for t, _, _ in store.decision_log(name).read(0, now)]
                for name in store.decision_logs()}
        assert "kairos-shard-0091" not in kept  # emptied, and removed
        assert kept["kairos-shard-0090"] == days[2:]
        assert kept[controller.shards[0]] == days  # its own writer's to trim
        store.decision_log("kairos-shard-0090").append([(days[0], "bob", b"late")])
        await rounds(controller)  # not before DECISION_LOG_TRIM_S has passed
        assert len(list(store.decision_log("kairos-shard-0090").read(0, now))) == 2
    asyncio.run(main())


def test_a_gone_shards_log_that_cannot_be_trimmed_spares_none_of_those_after_it(
        tmp_path, monkeypatch, caplog):
    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path))
        store = controller.store
        long_ago = time.time() - 7 * 86_400  # past the retention
        for name in ("kairos-shard-0090", "kairos-shard-0091", "kairos-shard-0092"):
            store.decision_log(name).append([(long_ago, "ana", b"a record")])
        trim = DirectoryLog.trim

        def failing_first(log, *args):
            if log.dir.name == "kairos-shard-0090":
                raise StoreUnavailable("trimming decision log kairos-shard-0090: EIO")
            return trim(log, *args)
        monkeypatch.setattr(DirectoryLog, "trim", failing_first)
        await rounds(controller)
        assert {"kairos-shard-0091", "kairos-shard-0092"}.isdisjoint(store.decision_logs())
        assert "kairos-shard-0090" in store.decision_logs()
        assert "decision log of kairos-shard-0090 (a shard gone) failed" in caplog.text
    asyncio.run(main())
