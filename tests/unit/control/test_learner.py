"""The learner: deltas add up, versions move on, catalog switches carry learning over."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import numpy as np
import pytest
import ray
import yaml

from bench.workload import yaml_doc, yaml_text
from kairos.cluster.control import learner as learner_module
from kairos.cluster.control import merging
from kairos.cluster.control.learner import (DAMAGED_KEY, STATE_KEY, Learner, LearnerActor,
                                            save_models)
from kairos.cluster.storage import blocks
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.store import StoreInUse, StoreUnavailable
from kairos.cluster.transport.backend import Unavailable
from kairos.core.catalog import default_catalog_text, load_catalog
from kairos.core.compiler import compile_catalog, compiled_from_text, default_compiled
from kairos.core.models import DeltaOrigin, ModelRemap, ModelTable, diagonal


# the class under Ray's ActorClass: its methods run here, as Ray would run them in the actor
Actor = LearnerActor.__ray_metadata__.modified_class.__ray_actor_class__


def told(store) -> None:
    """Save the posterior a learner leaves once the controller told it its catalog (the start
    does): a LearnerActor made on `store` takes it up, and so merges and answers at once."""
    store.put_meta(STATE_KEY, save_models(Learner(default_compiled(), default_catalog_text())))


def catalog_doc(version: str) -> dict:
    """The default catalog as YAML data, under another version. libyaml's loader and dumper
    (bench.workload's yaml_doc, yaml_text) read and write as safe_load and safe_dump do:
    those took most of the time of the tests that switch catalogs."""
    doc = yaml_doc(default_catalog_text())
    doc["version"] = version
    return doc


def catalog(version: str) -> str:
    """The default catalog's text under another version."""
    return yaml_text(catalog_doc(version))


def learned(compiled, row: int, positives: float):
    table = ModelTable(compiled)
    table.positives[row] += positives
    table.precision[row] += 1.0
    table.mean[row] += 0.5
    return table.take_delta()


def test_deltas_from_every_shard_add_and_each_merge_publishes_a_version():
    c = default_compiled()
    learner = Learner(c)
    first = learner.sync(c.version, None, known_version=-1)
    assert first.version == learner.version
    assert learner.sync(c.version, None, known_version=first.version) is None
    a = learner.sync(c.version, learned(c, 3, 1), first.version)
    b = learner.sync(c.version, learned(c, 3, 2), a.version)
    assert b.version == first.version + 2
    assert b.positives[3] == 3 and diagonal(b.precision)[3, 0] == c.prior_precision[0, 0] + 2
    # each merge's publish is kept with its time, for `status` (adoption time is measured
    # from it)
    publishes = learner.status()["publishes"]
    assert [v for v, _ in publishes] == [a.version, b.version]
    assert publishes[0][1] <= publishes[1][1]


def test_a_delta_learned_under_the_previous_catalog_is_carried_over():
    c = default_compiled()
    learner = Learner(c)
    doc = yaml.safe_load(default_catalog_text())
    doc["version"] = "next"
    doc["actions"].insert(0, dict(doc["actions"][-1], id="inserted_first"))
    switched = learner.switch(yaml.safe_dump(doc, sort_keys=False))
    assert [v for v, _ in learner.publishes] == [switched]  # a switch publishes too
    n_ch = len(c.channel_names)
    old_row = c.action_index["service_menu"] * n_ch + 1
    published = learner.sync(c.version, learned(c, old_row, 1), 0)
    new = compile_catalog(load_catalog(yaml.safe_dump(doc, sort_keys=False)))
    new_row = new.action_index["service_menu"] * n_ch + 1
    assert published.catalog_version == "next"
    assert published.positives[new_row] == 1 and np.sum(published.positives) == 1


def test_a_saved_posterior_comes_back_with_a_higher_version_and_only_on_its_catalog():
    from kairos.cluster.control.learner import save_models
    from tests.support.restored import restore_models
    c = default_compiled()
    learner = Learner(c)
    published = learner.sync(c.version, learned(c, 5, 4), -1)
    blob = save_models(learner)
    again = Learner(c)  # a restarted learner
    assert restore_models(again, blob)
    assert again.version > published.version
    assert np.array_equal(again.models.mean, learner.models.mean)
    assert again.models.positives[5] == 4
    doc = yaml.safe_load(default_catalog_text())
    doc["version"] = "other"
    assert not restore_models(Learner(compile_catalog(load_catalog(yaml.safe_dump(doc)))), blob)


def test_a_posterior_saved_diagonal_comes_back_into_a_full_one():
    """An upgrade to full posteriors ("auto") keeps what the learner had saved."""
    from kairos.cluster.control.learner import save_models
    from tests.support.restored import restore_models
    diagonal_text = default_catalog_text().replace(
        "  prior: {base_rate: 0.04", "  posterior: diagonal\n  prior: {base_rate: 0.04")
    before = Learner(compile_catalog(load_catalog(diagonal_text)))
    before.sync(before.compiled.version, learned(before.compiled, 5, 4), -1)
    after = Learner(default_compiled())
    assert after.models.full and not before.models.full
    assert restore_models(after, save_models(before))
    np.testing.assert_array_equal(after.models.mean, before.models.mean)
    np.testing.assert_array_equal(diagonal(after.models.precision), before.models.precision)
    assert after.models.positives[5] == 4
    back = Learner(compile_catalog(load_catalog(diagonal_text)))
    assert restore_models(back, save_models(after))
    np.testing.assert_allclose(back.models.precision, before.models.precision)


def test_a_watch_answers_at_once_for_an_old_version_and_otherwise_at_the_next_publish():
    c = default_compiled()
    learner = Learner(c)
    current = learner.version

    async def run():
        assert (await learner.watch(c.version, current - 1, timeout_s=5)).version == current
        assert await learner.watch(c.version, current, timeout_s=0.05) is None  # nothing new
        merged = asyncio.create_task(learner.watch(c.version, current, timeout_s=5))
        await asyncio.sleep(0.01)
        assert not merged.done()  # waiting, not answered
        assert learner.status()["watching"] == 1
        learner.sync(c.version, learned(c, 3, 1), current)  # another shard's delta
        assert (await merged).version == current + 1
        assert learner.status()["watching"] == 0
        assert learner.status()["calls"] == {"sync": 1, "watch": 3}
        # a switch reaches the learner before the shards: a shard still on the old catalog
        # goes on waiting (the new models are of no use to it), one that switched gets them
        behind = asyncio.create_task(learner.watch(c.version, current + 1, timeout_s=30))
        await asyncio.sleep(0.01)
        doc = yaml.safe_load(default_catalog_text())
        doc["version"] = "v2"
        learner.switch(yaml.safe_dump(doc, sort_keys=False))  # a switch publishes too
        published = await learner.watch("v2", current + 1, timeout_s=5)
        assert (published.version, published.catalog_version) == (current + 2, "v2")
        learner.sync("v2", learned(learner.compiled, 3, 1), current + 2)  # and learns on
        await asyncio.sleep(0.01)
        assert not behind.done() and learner.status()["watching"] == 1
        behind.cancel()
        await asyncio.gather(behind, return_exceptions=True)
        assert learner.status()["watching"] == 0
        # a delta that merges nothing moves no version and wakes nobody
        idle = asyncio.create_task(learner.watch("v2", current + 3, timeout_s=0.05))
        learner.sync("v2", None, current + 3)
        assert await idle is None

    asyncio.run(run())


def test_a_learner_restarted_behind_a_shards_version_continues_above_it():
    """Versions start at the clock: one set back on a restart, the shards run versions the
    learner never published. Its next answer is above them, so they adopt it, once."""
    c = default_compiled()
    learner = Learner(c)
    ahead = learner.version + 60_000  # the version a shard adopted before the restart

    async def run():
        published = await learner.watch(c.version, ahead, timeout_s=5)
        assert published.version == ahead + 1 == learner.version
        assert await learner.watch(c.version, published.version, timeout_s=0.05) is None
        assert learner.sync(c.version, None, ahead + 5).version == ahead + 6

    asyncio.run(run())


def test_a_learner_ray_restarts_runs_the_catalog_it_last_switched_to(tmp_path):
    """Ray re-runs the constructor with the boot catalog: the saved posterior's catalog (the
    latest switched to) wins, so the shards' deltas merge, their watches are answered, and the
    next switch carries the learning over rather than saving priors over it."""
    boot, b = default_catalog_text(), compiled_from_text(catalog("B"))

    async def run():
        first = Actor(boot, str(tmp_path))
        await first.switch(catalog("B"))
        published = await first.sync("B", learned(b, 3, 7), 0)
        await first.flush()
        again = Actor(boot, str(tmp_path))  # Ray restarted it
        assert (await again.status())["catalog_version"] == "B"
        assert again.learner.models.positives[3] == 7
        answer = await again.sync("B", learned(b, 3, 5), published.version)
        assert (answer.catalog_version, answer.positives[3]) == ("B", 12)
        watched = await again.watch("B", published.version, timeout_s=1)
        assert watched.version == again.learner.version
        await again.switch(catalog("C"))  # the next put_catalog
        third = Actor(boot, str(tmp_path))
        assert third.learner.compiled.version == "C"
        assert third.learner.models.positives[3] == 12

    asyncio.run(run())


def test_a_delta_of_a_catalog_run_too_long_ago_is_counted_and_logged(caplog):
    c = default_compiled()
    learner = Learner(c)
    for n in range(learner_module.REMAPS_KEPT + 1):
        learner.switch(catalog(f"v{n}"))
    with caplog.at_level("WARNING", logger="kairos.learner"):
        for _ in range(3):
            assert learner.sync(c.version, learned(c, 3, 1), -1).catalog_version == "v4"
    assert learner.merged == 0 and learner.status()["dropped"] == {c.version: 3}
    warned = [r for r in caplog.records if f"catalog {c.version}" in r.getMessage()]
    assert len(warned) == 1  # once a catalog version, not once a delta


def test_a_delta_of_a_catalog_the_learner_never_ran_is_refused_and_merged_once_it_runs_it():
    """Its switch has not reached the learner yet: the shard keeps the delta (Unavailable is
    what it sends again quietly) and it merges once the learner runs that catalog."""
    c, b = default_compiled(), compiled_from_text(catalog("B"))
    learner = Learner(c)
    delta = sent(learned(b, 3, 1), "a", 1)
    with pytest.raises(merging.NotRunning) as refused:
        learner.sync("B", delta, -1)
    assert isinstance(refused.value, Unavailable)
    assert learner.status()["dropped"] == {} and not learner.sequences  # not taken
    learner.switch(catalog("B"))
    assert learner.sync("B", delta, -1).positives[3] == 1 and learner.merged == 1


def test_a_delta_whose_merge_fails_is_not_remembered_as_taken(monkeypatch):
    c = default_compiled()
    learner = Learner(c)
    delta = sent(learned(c, 3, 1), "a", 1)
    merge = ModelTable.merge

    def broken(self, delta):
        raise FloatingPointError("a bug half-way")
    monkeypatch.setattr(ModelTable, "merge", broken)
    with pytest.raises(FloatingPointError):
        learner.sync(c.version, delta, -1)
    monkeypatch.setattr(ModelTable, "merge", merge)
    assert learner.sync(c.version, delta, -1).positives[3] == 1  # sent again: merged
    assert learner.merged == 1 and learner.repeated == 0


def test_catalog_switches_keep_one_remap_for_each_of_the_last_few_versions():
    """Chained, the remaps of N switches grew as N^2 and held every compiled catalog. Three
    switches past REMAPS_KEPT show the bound as twenty did (each switch compiles a catalog)."""
    c = default_compiled()
    learner = Learner(c)
    versions = [c.version] + [f"v{n}" for n in range(1, learner_module.REMAPS_KEPT + 4)]
    for version in versions[1:]:
        learner.switch(catalog(version))
    kept = versions[-1 - learner_module.REMAPS_KEPT:-1]
    assert sorted(learner._remaps) == sorted(kept)
    assert all(type(r) is ModelRemap for r in learner._remaps.values())
    assert all(r.new is learner.compiled for r in learner._remaps.values())
    oldest = compiled_from_text(catalog(kept[0]))
    assert learner.sync(kept[0], learned(oldest, 3, 2), -1).positives[3] == 2


def test_a_switch_the_store_does_not_save_fails_and_leaves_the_learner_on_its_catalog(
        tmp_path, monkeypatch):
    """Else the controller switched the shards, and a learner Ray restarted before the next
    save came back on the old catalog and dropped every shard's delta of the new one."""
    c, b = default_compiled(), compiled_from_text(catalog("B"))
    flaky = Flaky(open_store(str(tmp_path)))
    flaky.down = False
    told(flaky.store)
    monkeypatch.setattr(learner_module, "open_store", lambda url: flaky)

    async def run():
        actor = Actor(default_catalog_text(), "x")
        merged = await actor.sync(c.version, learned(c, 3, 1), -1)
        flaky.down = True
        with pytest.raises(StoreUnavailable):
            await actor.switch(catalog("B"))
        status = await actor.status()
        assert (status["catalog_version"], status["model_version"]) == (c.version,
                                                                         merged.version)
        assert [v for v, _ in status["publishes"]] == [merged.version]
        assert (await actor.sync(c.version, learned(c, 3, 1), -1)).positives[3] == 2
        flaky.down = False
        assert await actor.switch(catalog("B")) == actor.learner.version
        restarted = Actor(default_catalog_text(), "x")
        assert (await restarted.status())["catalog_version"] == "B"
        assert (await restarted.sync("B", learned(b, 3, 1), -1)).positives[3] == 3

    asyncio.run(run())


def test_a_damaged_saved_posterior_is_kept_aside_and_the_learner_starts_from_its_priors(
        tmp_path, caplog):
    """Ray does not restart an actor whose constructor raised: a blob that does not unpack, or
    lacks what a posterior has, must not stop the learner for good."""
    store = open_store(str(tmp_path))
    c = default_compiled()
    for damaged in (b"\x92\x01", blocks.pack({"version": 3})):
        store.put_meta(STATE_KEY, damaged)
        with caplog.at_level("ERROR", logger="kairos.learner"):
            actor = Actor(default_catalog_text(), str(tmp_path))
        assert actor.learner.models.positives.sum() == 0
        assert store.get_meta(DAMAGED_KEY) == damaged
        assert any(STATE_KEY in r.getMessage() and DAMAGED_KEY in r.getMessage()
                   for r in caplog.records)
        asyncio.run(told_then_synced(actor, c))
        assert Actor(default_catalog_text(), str(tmp_path)).learner.models.positives[3] == 1


def test_a_saved_posterior_with_a_chunk_lost_starts_the_learner_from_its_priors(
        tmp_path, caplog, monkeypatch):
    """A chunked one (storage/redis_chunks.py) with a chunk gone is StoreCorrupt, which is a
    StoreUnavailable: the learner waited on it for good, refusing every sync and watch."""
    from kairos.cluster.storage.store import StoreCorrupt

    store = open_store(str(tmp_path))
    c = default_compiled()

    def lost(key: str) -> bytes:
        raise StoreCorrupt("meta 'learner': chunk 3 of the 5 of its saved value is missing")
    monkeypatch.setattr(type(store), "get_meta", lambda self, key: lost(key))
    with caplog.at_level("ERROR", logger="kairos.learner"):
        actor = Actor(default_catalog_text(), str(tmp_path))
    assert any("chunk 3" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    asyncio.run(told_then_synced(actor, c))
    assert Actor(default_catalog_text(), str(tmp_path)).learner.models.positives[3] == 1


async def told_then_synced(actor, c) -> None:
    """Its catalog may not be the cluster's: nothing merges until the controller tells it."""
    with pytest.raises(Unavailable):
        await actor.sync(c.version, learned(c, 3, 1), -1)
    assert (await actor.status())["unconfirmed"] and actor.learner.merged == 0
    await actor.switch(default_catalog_text())
    await actor.sync(c.version, learned(c, 3, 1), -1)
    await actor.flush()


def test_a_saved_posterior_that_does_not_fit_its_catalog_is_kept_aside(tmp_path):
    from kairos.cluster.control.learner import save_models
    store = open_store(str(tmp_path))
    c = default_compiled()
    learner = Learner(c, default_catalog_text())
    learner.sync(c.version, learned(c, 3, 1), -1)
    learner.models.positives = learner.models.positives[:-1]  # a posterior of other shapes
    blob = save_models(learner)
    store.put_meta(STATE_KEY, blob)
    actor = Actor(default_catalog_text(), str(tmp_path))
    assert actor.learner.models.positives.sum() == 0
    assert store.get_meta(DAMAGED_KEY) == blob


class Flaky:
    """A store that does not answer while `down`."""

    def __init__(self, store):
        self.store, self.down = store, True

    def get_meta(self, key: str):
        if self.down:
            raise StoreUnavailable("connection refused")
        return self.store.get_meta(key)

    def put_meta(self, key: str, blob: bytes) -> None:
        if self.down:
            raise StoreUnavailable("connection refused")
        self.store.put_meta(key, blob)


def test_a_store_that_does_not_answer_at_the_start_holds_merges_until_it_is_read(
        tmp_path, monkeypatch):
    """The learner starts; its saved posterior is read before the first merge, so no merge is
    saved over a posterior that was never read."""
    c = default_compiled()
    told(open_store(str(tmp_path)))
    before = Actor(default_catalog_text(), str(tmp_path))
    asyncio.run(before.sync(c.version, learned(c, 3, 4), -1))  # a first merge is saved
    flaky = Flaky(open_store(str(tmp_path)))
    monkeypatch.setattr(learner_module, "open_store", lambda url: flaky)
    monkeypatch.setattr(learner_module, "RESTORE_RETRY_S", 0.0)
    actor = Actor(default_catalog_text(), "redis://unreachable")

    async def run():
        with pytest.raises(StoreUnavailable):  # the shard keeps its delta, sends it again
            await actor.sync(c.version, learned(c, 3, 1), -1)
        with pytest.raises(StoreUnavailable):
            await actor.watch(c.version, -1, timeout_s=1)
        assert actor.learner.merged == 0
        flaky.down = False
        published = await actor.sync(c.version, learned(c, 3, 1), -1)
        assert published.positives[3] == 5

    asyncio.run(run())
    assert Actor(default_catalog_text(), str(tmp_path)).learner.models.positives[3] == 5


class Counting:
    """A store that counts the posteriors written to it."""

    def __init__(self, store):
        self.store, self.puts = store, 0

    def get_meta(self, key: str):
        return self.store.get_meta(key)

    def put_meta(self, key: str, blob: bytes) -> None:
        self.puts += 1
        self.store.put_meta(key, blob)


def test_merges_left_unsaved_when_traffic_stops_are_saved_and_an_idle_learner_writes_nothing(
        tmp_path, monkeypatch):
    c = default_compiled()
    counting = Counting(open_store(str(tmp_path)))
    told(counting.store)
    monkeypatch.setattr(learner_module, "open_store", lambda url: counting)
    monkeypatch.setattr(learner_module, "LEARNER_SAVE_S", 0.3)

    def saved() -> float:
        return Actor(default_catalog_text(), "x").learner.models.positives[3]

    async def run():
        actor = Actor(default_catalog_text(), "x")
        await actor.sync(c.version, learned(c, 3, 1), -1)  # saved: the first in 0.3 s
        await actor.sync(c.version, learned(c, 3, 1), -1)  # the last before traffic stops
        assert saved() == 1
        await asyncio.sleep(0.9)
        assert saved() == 2
        writes = counting.puts
        await asyncio.sleep(0.9)
        assert counting.puts == writes  # nothing new: nothing written

    asyncio.run(run())


def test_a_learner_stood_down_saves_nothing_more(tmp_path, monkeypatch):
    """Its cluster lost the store (another cluster's now): merges go on in memory, but neither
    the periodic save, nor a sync, nor a flush writes, and a switch, which must be saved,
    fails and leaves it on its catalog."""
    c = default_compiled()
    counting = Counting(open_store(str(tmp_path)))
    told(counting.store)
    monkeypatch.setattr(learner_module, "open_store", lambda url: counting)
    monkeypatch.setattr(learner_module, "LEARNER_SAVE_S", 0.1)

    async def run():
        actor = Actor(default_catalog_text(), "x")
        await actor.sync(c.version, learned(c, 3, 1), -1)
        assert counting.puts == 1
        await actor.stand_down()
        await actor.sync(c.version, learned(c, 3, 1), -1)  # left unsaved
        await asyncio.sleep(0.5)  # periodic saves, had they gone on
        await actor.flush()
        with pytest.raises(StoreInUse):
            await actor.switch(catalog("other"))
        assert counting.puts == 1 and actor.learner.models.positives[3] == 2
        assert actor.learner.compiled.version == c.version

    asyncio.run(run())


def test_a_flush_saves_the_merges_since_the_last_save_and_a_failed_one_is_logged(
        tmp_path, monkeypatch, caplog):
    c = default_compiled()
    flaky = Flaky(open_store(str(tmp_path)))
    flaky.down = False
    told(flaky.store)
    monkeypatch.setattr(learner_module, "open_store", lambda url: flaky)

    async def run():
        actor = Actor(default_catalog_text(), "x")
        await actor.sync(c.version, learned(c, 3, 1), -1)
        await actor.sync(c.version, learned(c, 3, 1), -1)
        await actor.flush()
        assert Actor(default_catalog_text(), "x").learner.models.positives[3] == 2
        await actor.sync(c.version, learned(c, 3, 1), -1)
        flaky.down = True
        with caplog.at_level("WARNING", logger="kairos.learner"), \
                pytest.raises(StoreUnavailable):  # and raised (test_learner_flush_refused.py)
            await actor.flush()
        assert any("could not save" in r.getMessage() for r in caplog.records)

    asyncio.run(run())


def test_stop_gives_the_store_up_once_every_writer_stopped_and_then_kills_the_controller(
        monkeypatch, caplog):
    """The controller's loop stops first (it would start gateways and shards again); the
    learner flushes after the shards are killed (they sync to it until then) and before it is
    killed; the store is given up after all of them, so that a start on it runs beside none of
    their writes, and before the controller is killed (its claim would wait to run out)."""
    from kairos.cluster.control import runtime
    from kairos.cluster.control.nodes import gateway_name
    from kairos.cluster.settings import CONTROLLER_NAME, LEARNER_NAME, NAMESPACE
    events: list[str] = []
    gateway = gateway_name(0)

    class Handle:
        def __init__(self, name: str):
            self.name = name

        def __getattr__(self, method: str):
            return SimpleNamespace(remote=lambda: (self.name, method))

    class FakeRay:
        exceptions = ray.exceptions
        def __init__(self):
            self.util = SimpleNamespace(list_named_actors=lambda all_namespaces: [
                {"name": name, "namespace": NAMESPACE} for name in self.alive])
            self.alive: set[str] = set()
            self.flush_fails = False
            self.lost = False  # the controller lost its claim on the store

        def get_actor(self, name: str, namespace: str) -> Handle:
            if name not in self.alive:
                raise ValueError(name)
            return Handle(name)

        def get(self, ref: tuple[str, str], timeout: float):
            if ref == (CONTROLLER_NAME, "status"):
                return {"shards": [{"shard": "kairos-shard-0000"}]}
            if ref in [(CONTROLLER_NAME, "stop_loop"), (CONTROLLER_NAME, "release_store"),
                       (gateway, "stop")]:
                events.append(" ".join(ref))
                return self.lost if ref[1] == "stop_loop" else None
            assert ref == (LEARNER_NAME, "flush") and timeout <= runtime.LEARNER_FLUSH_S
            events.append("flush")
            if self.flush_fails:
                raise ray.exceptions.GetTimeoutError("no answer")

        def kill(self, handle: Handle, no_restart: bool) -> None:
            events.append(f"kill {handle.name}")
            self.alive.discard(handle.name)

    fake = FakeRay()
    monkeypatch.setattr(runtime, "ray", fake)
    for flush_fails in (False, True):  # one that does not answer is killed all the same
        fake.alive.update({CONTROLLER_NAME, "kairos-shard-0000", gateway, LEARNER_NAME})
        fake.flush_fails = flush_fails
        events.clear()
        with caplog.at_level("WARNING", logger="kairos.runtime"):
            runtime.stop()
        assert events == [f"{CONTROLLER_NAME} stop_loop", f"{gateway} stop",
                          "kill kairos-shard-0000", f"kill {gateway}", "flush",
                          f"kill {LEARNER_NAME}", f"{CONTROLLER_NAME} release_store",
                          f"kill {CONTROLLER_NAME}"]
    assert [r.getMessage() for r in caplog.records] == [
        "stop: the learner did not save its last merges: GetTimeoutError: no answer"]
    # a controller that lost its store: the learner saves nothing there, as it is killed
    fake.alive.update({CONTROLLER_NAME, "kairos-shard-0000", LEARNER_NAME})
    fake.lost, fake.flush_fails = True, False
    events.clear()
    runtime.stop()
    assert "flush" not in events and f"kill {LEARNER_NAME}" in events


def sent(delta, incarnation: str, sequence: int):
    delta.origin = DeltaOrigin("s0", incarnation, sequence)
    return delta


def test_a_delta_sent_again_is_answered_without_being_merged_twice():
    """A sync that timed out may have merged (the call ran late, or the learner merged, saved
    and died before answering): the shard sends the delta again as itself."""
    from kairos.cluster.control.learner import save_models
    from tests.support.restored import restore_models
    c = default_compiled()
    learner = Learner(c)
    first = sent(learned(c, 3, 1), "a", 1)
    answer = learner.sync(c.version, first, -1)
    again = learner.sync(c.version, first, -1)  # its answer was lost
    assert (again.version, again.positives[3]) == (answer.version, 1)
    assert learner.merged == 1 and learner.status()["repeated"] == 1
    learner.sync(c.version, sent(learned(c, 3, 1), "a", 2), answer.version)  # the next one
    learner.sync(c.version, sent(learned(c, 3, 1), "b", 1), -1)  # a restarted shard's first
    assert learner.merged == 3
    restarted = Learner(c)  # what was merged is saved with the posterior it is in
    assert restore_models(restarted, save_models(learner))
    restarted.sync(c.version, sent(learned(c, 3, 1), "a", 2), -1)
    assert restarted.merged == 0 and restarted.models.positives[3] == 3


def test_the_shards_remembered_are_bounded(monkeypatch):
    c = default_compiled()
    learner = Learner(c)
    monkeypatch.setattr(merging, "SENDERS_KEPT", 2)
    for incarnation in "abc":  # past the cap: the least recently heard goes
        learner.sync(c.version, sent(learned(c, 3, 1), incarnation, 1), -1)
    assert set(learner.sequences) == {("s0", "b"), ("s0", "c")}
    # one not heard from in SENDERS_KEPT_S goes at the next new one (a process long gone)
    learner.sequences[("s0", "b")] = (1, time.time() - merging.SENDERS_KEPT_S - 1)
    learner.sync(c.version, sent(learned(c, 3, 1), "d", 1), -1)
    assert set(learner.sequences) == {("s0", "c"), ("s0", "d")}


def without_first_action(version: str) -> tuple[str, str]:
    """The default catalog under `version` without its first action; and that action's id."""
    doc = catalog_doc(version)
    removed = doc["actions"].pop(0)
    return yaml_text(doc), removed["id"]


@pytest.mark.parametrize("back_to", ["rollback", "a later version"])
def test_an_action_taken_out_and_put_back_goes_on_from_what_it_learnt(back_to):
    c = default_compiled()
    learner = Learner(c)
    text_b, removed = without_first_action("B")
    web = c.channel_index["web"]
    row = c.model_index(c.action_index[removed], web)
    kept_row = c.model_index(c.action_index[removed] + 1, web)
    delta = learned(c, row, 7) + learned(c, kept_row, 2)
    learner.sync(c.version, delta, -1)
    before = learner.models.mean[row].copy(), learner.models.precision[row].copy()
    learner.switch(text_b)
    b = learner.compiled
    learner.sync(b.version, learned(b, b.model_index(0, web), 1), -1)  # B learns on
    learner.switch(default_catalog_text() if back_to == "rollback" else catalog("C"))
    now = learner.compiled
    back = now.model_index(now.action_index[removed], web)
    assert learner.models.positives[back] == 7
    # through the covariance and back (a remap carries the posterior's marginal)
    assert np.allclose(learner.models.mean[back], before[0], rtol=1e-9, atol=1e-12)
    assert np.allclose(learner.models.precision[back], before[1], rtol=1e-9)
    # not pending: the learner's own table sends nothing, and the rows B kept are B's
    assert not learner.models.pending().positives.any()
    assert learner.models.positives[now.model_index(now.action_index[removed] + 1, web)] == 3
    published = learner.published(-1)
    assert published.positives[back] == 7  # what the shards adopt


def test_an_action_new_to_every_catalog_run_still_starts_from_its_group():
    c = default_compiled()
    learner = Learner(c)
    text_b, removed = without_first_action("B")
    learner.switch(text_b)  # learnt nothing for it: nothing to bring back
    learner.switch(catalog("C"))
    now = learner.compiled
    fresh = ModelRemap(compiled_from_text(text_b), now).table(ModelTable(
        compiled_from_text(text_b)))
    row = now.model_index(now.action_index[removed], now.channel_index["web"])
    assert learner.models.positives[row] == 0
    assert np.array_equal(learner.models.mean[row], fresh.mean[row])


def test_an_action_put_back_twice_goes_on_from_its_latest_learning():
    """Not from the catalog being returned to, which is the oldest: A (7) -> B (out) -> C
    (back, 3 more) -> D (out) -> A gives 10."""
    c = default_compiled()
    learner = Learner(c)
    without, removed = without_first_action("B")
    web = c.channel_index["web"]

    def row(compiled):
        return compiled.model_index(compiled.action_index[removed], web)
    learner.sync(c.version, learned(c, row(c), 7), -1)
    learner.switch(without)
    learner.switch(catalog("C"))
    now = learner.compiled
    learner.sync(now.version, learned(now, row(now), 3), -1)
    learner.switch(without_first_action("D")[0])
    learner.switch(default_catalog_text())
    assert learner.models.positives[row(learner.compiled)] == 10


def test_a_model_that_learnt_only_a_value_comes_back_with_it():
    c = default_compiled()
    learner = Learner(c)
    without, removed = without_first_action("B")
    m = c.model_index(c.action_index[removed], c.channel_index["web"])
    delta = ModelTable(c).take_delta()
    delta.value_count[m], delta.value_sum[m] = 3, 300.0
    learner.sync(c.version, delta, -1)
    learner.switch(without)
    learner.switch(default_catalog_text())
    assert (learner.models.value_count[m], learner.models.value_sum[m]) == (3, 300.0)


def test_switches_keep_only_the_models_they_took_out_and_only_for_a_few_switches():
    c = default_compiled()
    learner = Learner(c)
    without, removed = without_first_action("B")
    m = c.model_index(c.action_index[removed], c.channel_index["web"])
    learner.sync(c.version, learned(c, m, 1), -1)
    learner.switch(without)
    assert list(learner._taken_out._models) == [(removed, "web")]  # one model, not tables
    for n in range(learner_module.REMAPS_KEPT):
        learner.switch(without_first_action(f"B{n}")[0])
    learner.switch(default_catalog_text())  # taken out too long ago: from its group again
    assert learner.models.positives[m] == 0
