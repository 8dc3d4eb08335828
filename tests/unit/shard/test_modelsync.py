"""A shard's side of model sync, against a learner in process: it syncs only what it learned,
otherwise waits in one long poll, and never adopts a version behind its own learning."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import yaml

from kairos.cluster.control.learner import Learner
from kairos.cluster.shard import modelsync
from kairos.cluster.shard.modelsync import ModelSync
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.store import StoreUnavailable
from kairos.cluster.transport.backend import Unavailable
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text

from tests.support.local_backend import LocalBackend

from .test_shard import N_PARTITIONS, T0
from .test_shard_host import app_open


class CountedLearner:
    """The local backend's learner, counting calls; `down` makes them Unavailable."""

    def __init__(self, backend: LocalBackend):
        self.local = backend.learner()
        self.calls: list[str] = []
        self.down = False
        self.unread = False  # a learner whose store has not given its saved posterior yet
        self.answers_lost = 0  # syncs that run at the learner but time out at the shard

    async def sync(self, *args):
        self.calls.append("sync")
        if self.down:
            raise Unavailable("learner restarting")
        if self.unread:
            raise StoreUnavailable("the learner has not read its saved posterior yet")
        answer = await self.local.sync(*args)
        if self.answers_lost:
            self.answers_lost -= 1
            raise Unavailable("kairos-learner: no answer within 30 s")
        return answer

    async def watch(self, catalog_version: str, known_version: int, **rows):
        self.calls.append("watch")
        if self.down:
            raise Unavailable("learner restarting")
        if self.unread:
            raise StoreUnavailable("the learner has not read its saved posterior yet")
        return await self.local.watch(catalog_version, known_version, 5.0, **rows)


def shard_that_learned(compiled, customer: str = "ana") -> Shard:
    s = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS)
    s.process([app_open(customer)])
    s.engine.record_outcomes([(customer, "service_menu", "web", "accept", T0, None)])
    return s


def setting(compiled) -> tuple[Learner, CountedLearner, ModelSync]:
    backend = LocalBackend()
    backend.local_learner = Learner(compiled)
    return backend.local_learner, CountedLearner(backend), ModelSync("s0")


async def settled() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def left_watching(compiled, sync: ModelSync, counted: CountedLearner) -> list:
    """A shard's engine in a list (a test replaces it there, as a rebuild does) after two
    intervals with nothing learnt: the second leaves a watch waiting past the latest version."""
    engines = [Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS).engine]
    for _ in range(2):
        await sync.step(lambda: engines[0], lambda: counted)
        await settled()
    return engines


def test_with_nothing_learned_one_watch_waits_and_adopts_another_shards_publish(compiled):
    learner, counted, sync = setting(compiled)
    s = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS)
    other = shard_that_learned(compiled, "bo")

    async def main():
        await sync.step(lambda: s.engine, lambda: counted)  # version 0: answered at once
        await settled()
        first = learner.version
        assert s.engine.models.version == first
        for _ in range(3):  # nothing new: one watch waits, none piles up, no sync
            await sync.step(lambda: s.engine, lambda: counted)
            await settled()
        assert counted.calls == ["watch", "watch"]
        # another shard's delta: the waiting watch answers with it
        learner.sync(compiled.version, other.engine.models.take_delta(), first)
        await settled()
        assert s.engine.models.version == first + 1
        assert s.engine.models.positives.sum() == 1
    asyncio.run(main())


def test_a_rebuilt_shard_stops_waiting_on_its_old_version_and_catches_up_at_once(compiled):
    learner, counted, sync = setting(compiled)

    async def main():
        engines = await left_watching(compiled, sync, counted)
        engines[0] = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS).engine
        assert engines[0].models.version == 0  # rebuilt from the store: the priors
        await sync.step(lambda: engines[0], lambda: counted)
        await settled()
        assert engines[0].models.version == learner.version  # this interval, not the next
    asyncio.run(main())


def test_a_watch_answered_after_the_engine_was_replaced_goes_to_the_engine_in_use(compiled):
    learner, counted, sync = setting(compiled)

    async def main():
        engines = await left_watching(compiled, sync, counted)
        old = engines[0]
        replaced = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS).engine
        # the same wait would go on: the same version, of the same learner process
        replaced.models.version = old.models.version
        replaced.models.published_by = old.models.published_by
        engines[0] = replaced
        other = shard_that_learned(compiled, "bo")
        learner.sync(compiled.version, other.engine.models.take_delta(), 0)
        await settled()
        assert replaced.models.version == learner.version
        assert replaced.models.positives.sum() == 1
        assert old.models.version < learner.version  # dropped: nothing goes to it
    asyncio.run(main())


def test_a_sync_replaces_the_watch_and_its_answer_keeps_the_shards_learning(compiled):
    learner, counted, sync = setting(compiled)
    s = shard_that_learned(compiled)

    async def main():
        # nothing stirs this shard: it learnt before the loop began
        watching = sync.run(lambda: s.engine, lambda: counted, asyncio.Event,
                            interval_s=0.01)
        task = asyncio.get_running_loop().create_task(watching)
        await asyncio.sleep(0.1)
        assert counted.calls[0] == "sync" and "watch" in counted.calls
        assert s.engine.models.version == learner.version
        assert learner.models.positives.sum() == 1  # merged once
        assert s.engine.models.positives.sum() == 1  # and kept: nothing undid it
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert sync._watch is None  # no long poll outlives the loop
    asyncio.run(main())


def test_a_loop_cancelled_as_the_sync_it_waits_for_ends_stops(compiled, monkeypatch):
    """The host stops the loop (cancels it) in the same turn of the event loop as the journal
    sync that `step` waits for ends: the loop ends, it does not take the sync and go on."""
    learner, counted, sync = setting(compiled)
    s = shard_that_learned(compiled)
    waiting: list = []
    monkeypatch.setattr(s.engine.models, "when_synced", waiting.append)

    async def main():
        task = asyncio.get_running_loop().create_task(
            sync.run(lambda: s.engine, lambda: counted, asyncio.Event, interval_s=0.01))
        for _ in range(100):
            if waiting:
                break
            await asyncio.sleep(0.01)
        waiting[0]()  # the sync ended
        task.cancel()  # the host stops
        await asyncio.wait([task], timeout=1.0)
        stopped = task.cancelled()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert stopped and counted.calls == []
    asyncio.run(main())


def test_a_sync_the_learner_missed_goes_with_the_next_one(compiled):
    learner, counted, sync = setting(compiled)
    s = shard_that_learned(compiled)

    async def main():
        counted.down = True
        await sync.step(lambda: s.engine, lambda: counted)
        assert learner.merged == 0
        counted.down = False
        await sync.step(lambda: s.engine, lambda: counted)
        assert learner.merged == 1 and learner.models.positives.sum() == 1
    asyncio.run(main())


def test_a_learner_that_has_not_read_its_saved_posterior_yet_is_waited_for(compiled, caplog):
    """Until its store gives it its saved posterior, the learner merges nothing and answers
    no watch: the shard keeps its delta, and neither call is logged as a failure."""
    learner, counted, sync = setting(compiled)
    s = shard_that_learned(compiled)
    idle = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS)

    async def main():
        counted.unread = True
        await sync.step(lambda: s.engine, lambda: counted)
        await ModelSync("s1").step(lambda: idle.engine, lambda: counted)
        await settled()
        counted.unread = False
        await sync.step(lambda: s.engine, lambda: counted)
        assert learner.merged == 1 and learner.models.positives.sum() == 1
    with caplog.at_level("ERROR", logger="kairos.shard"):
        asyncio.run(main())
    assert counted.calls == ["sync", "watch", "sync"] and not caplog.records


def test_a_delta_the_learner_fails_on_is_kept_and_sent_again_as_itself(compiled, caplog):
    """An error the learner raised (a bug) is logged; one of a catalog it does not run yet
    (its switch is on the way) is not; either way the delta goes again, not lost."""
    learner, counted, sync = setting(compiled)
    s = shard_that_learned(compiled)
    merge = learner.models.merge

    def broken(delta):
        raise FloatingPointError("a bug half-way")

    async def main():
        learner.models.merge = broken
        with caplog.at_level("ERROR", logger="kairos.shard"):
            await sync.step(lambda: s.engine, lambda: counted)
        assert any("goes again" in r.getMessage() for r in caplog.records)
        learner.models.merge = merge
        await sync.step(lambda: s.engine, lambda: counted)
        assert learner.merged == 1 and learner.models.positives.sum() == 1
    asyncio.run(main())


def catalog(version: str) -> str:
    doc = yaml.safe_load(default_catalog_text())
    doc["version"] = version
    return yaml.safe_dump(doc, sort_keys=False)


def test_a_delta_of_a_catalog_the_learner_does_not_run_yet_waits_for_its_switch(caplog):
    switched = compiled_from_text(catalog("B"))
    learner, counted, sync = setting(compiled_from_text(default_catalog_text()))
    s = shard_that_learned(switched)

    async def main():
        with caplog.at_level("WARNING", logger="kairos.shard"):
            await sync.step(lambda: s.engine, lambda: counted)
        assert learner.merged == 0 and not caplog.records
        assert learner.status()["not_running"] == {"B": 1}  # seen, though not logged
        learner.switch(catalog("B"))  # the control loop tells it
        await sync.step(lambda: s.engine, lambda: counted)
        assert learner.merged == 1 and learner.models.positives.sum() == 1
        assert learner.status()["dropped"] == {}
    asyncio.run(main())


def test_a_sync_whose_answer_was_lost_is_sent_again_as_itself_and_merged_once(compiled):
    learner, counted, sync = setting(compiled)
    s = shard_that_learned(compiled)

    async def main():
        counted.answers_lost = 1
        await sync.step(lambda: s.engine, lambda: counted)  # merged; the answer lost
        assert learner.merged == 1
        s.engine.record_outcomes([("ana", "service_menu", "web", "accept", T0 + 1, None)])
        await sync.step(lambda: s.engine, lambda: counted)  # the same delta, not the sum
        assert learner.merged == 1 and learner.models.positives.sum() == 1
        assert s.engine.models.version == learner.version
        assert s.engine.models.positives.sum() == 2  # its newer learning kept
        await sync.step(lambda: s.engine, lambda: counted)  # which goes as the next delta
        assert learner.merged == 2 and learner.models.positives.sum() == 2
        assert counted.calls == ["sync", "sync", "sync"]
    asyncio.run(main())


def test_a_shard_behind_a_catalog_switch_waits_and_takes_the_new_models_once_it_switched(
        compiled):
    learner, counted, sync = setting(compiled)
    s = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS)
    doc = yaml.safe_load(default_catalog_text())
    doc["version"] = "v2"
    text = yaml.safe_dump(doc, sort_keys=False)

    async def main():
        engines = [s.engine]
        await sync.step(lambda: engines[0], lambda: counted)
        await settled()
        learner.switch(text)  # the learner first; the shard still runs the old catalog
        for _ in range(3):
            await sync.step(lambda: engines[0], lambda: counted)
            await settled()
        assert counted.calls == ["watch", "watch"]  # waiting, not answered every interval
        assert s.engine.models.version < learner.version
        engines[0] = Shard("s0", compiled_from_text(text), range(N_PARTITIONS),
                           N_PARTITIONS).engine  # committed
        await sync.step(lambda: engines[0], lambda: counted)
        await settled()
        assert engines[0].models.version == learner.version
    asyncio.run(main())


def test_a_shard_ahead_of_a_restarted_learner_takes_its_models_once(compiled):
    learner, counted, sync = setting(compiled)
    s = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS)
    s.engine.models.version = learner.version + 60_000  # adopted before a restart set it back

    async def main():
        for _ in range(3):
            await sync.step(lambda: s.engine, lambda: counted)
            await settled()
        assert s.engine.models.version == learner.version  # its models, not the shard's
        assert counted.calls == ["watch", "watch"]  # then waiting, not answered every interval
    asyncio.run(main())


def test_a_delta_the_learner_always_fails_on_is_dropped_and_later_learning_goes(compiled,
                                                                                caplog):
    """A delta that makes the learner raise every time must not keep every later delta of
    the shard waiting behind it."""
    learner, counted, sync = setting(compiled)
    s = shard_that_learned(compiled)
    merge = learner.models.merge
    taken = []

    def broken_on_the_first(delta):
        if not taken:
            raise FloatingPointError("a bug that this delta always meets")
        return merge(delta)

    async def main():
        learner.models.merge = broken_on_the_first
        with caplog.at_level("ERROR", logger="kairos.shard"):
            for _ in range(modelsync.DELTA_TRIES):
                await sync.step(lambda: s.engine, lambda: counted)
        assert sync.dropped == 1 and any("dropped" in r.getMessage() for r in caplog.records)
        taken.append(True)
        s.engine.record_outcomes([("ana", "service_menu", "web", "reject", T0 + 1, None)])
        await sync.step(lambda: s.engine, lambda: counted)
        # the later learning (a reject), not the dropped delta's accept
        assert learner.merged == 1 and learner.models.positives.sum() == 0
    asyncio.run(main())


def test_a_delta_unsent_at_a_catalog_switch_reaches_the_learner_in_the_new_layout(compiled):
    doc = yaml.safe_load(default_catalog_text())
    doc["version"], doc["actions"] = "reordered", doc["actions"][::-1]  # every row moves
    text = yaml.safe_dump(doc, sort_keys=False)
    learner, counted, sync = setting(compiled)
    s = shard_that_learned(compiled)

    async def main():
        counted.down = True
        await sync.step(lambda: s.engine, lambda: counted)  # the learner is restarting
        assert learner.merged == 0
        counted.down = False
        learner.switch(text)
        switched = Shard("s0", compiled_from_text(text), range(N_PARTITIONS), N_PARTITIONS)
        await sync.step(lambda: switched.engine, lambda: counted)
        new = learner.compiled
        row = new.model_index(new.action_index["service_menu"], new.channel_index["web"])
        assert learner.merged == 1 and learner.models.positives[row] == 1
        assert learner.models.positives.sum() == 1
        assert switched.engine.models.version == learner.version  # the answer adopted
    asyncio.run(main())


def test_a_delta_merged_before_a_switch_is_not_merged_again_after_it(compiled):
    learner, counted, sync = setting(compiled)
    s = shard_that_learned(compiled)

    async def main():
        counted.answers_lost = 1
        await sync.step(lambda: s.engine, lambda: counted)  # merged; the answer lost
        learner.switch(catalog("v2"))
        switched = Shard("s0", compiled_from_text(catalog("v2")), range(N_PARTITIONS),
                         N_PARTITIONS)
        await sync.step(lambda: switched.engine, lambda: counted)  # again, as itself
        assert learner.merged == 1 and learner.models.positives.sum() == 1
        assert learner.repeated == 1
    asyncio.run(main())


def test_a_delta_of_a_catalog_the_shard_left_and_the_learner_lost_does_not_hold_up_the_rest(
        compiled, caplog):
    """The learner restarted without its state and runs a newer catalog: it will never run
    the one the unsent delta was learnt under, so the shard drops it (as it would have at the
    switch) rather than send it for good while its later learning waits behind it."""
    learner, counted, sync = setting(compiled)
    s = shard_that_learned(compiled)

    async def main():
        counted.down = True
        await sync.step(lambda: s.engine, lambda: counted)  # unsent
        counted.down = False
        lost = Learner(compiled_from_text(catalog("W")))  # restarted: ran W only
        counted.local = SimpleNamespace(sync=lambda *a: asyncio.sleep(0, lost.sync(*a)))
        w = shard_that_learned(compiled_from_text(catalog("W")), "bob")
        with caplog.at_level("WARNING", logger="kairos.shard"):
            for _ in range(2):
                await sync.step(lambda: w.engine, lambda: counted)
        assert sync.dropped == 1 and "no longer knows catalog" in caplog.text
        assert lost.merged == 1 and lost.models.positives.sum() == 1  # bob's learning went
    asyncio.run(main())
