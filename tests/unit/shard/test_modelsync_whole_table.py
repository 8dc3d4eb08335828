"""A shard adopts a large whole table (a new shard's first sync, after a learner restart) off
its event loop: the copies and inversions run on a thread while it decides and learns on, and
the table is swapped in only if the engine's models did not move on meanwhile."""
from __future__ import annotations

import asyncio
import threading

from kairos.cluster.control.learner import Learner
from kairos.cluster.shard import modelsync
from kairos.cluster.shard.modelsync import ModelSync
from kairos.cluster.shard.shard import Shard
from kairos.core import models

from bench.costs import loop_waits

from .test_shard import N_PARTITIONS, T0
from .test_shard_host import app_open

PREPARE_S = 0.6


def shard(compiled, name: str = "s0") -> Shard:
    return Shard(name, compiled, range(N_PARTITIONS), N_PARTITIONS)


def taught(s: Shard, customer: str, at: float = T0) -> None:
    s.process([app_open(customer)])
    s.engine.record_outcomes([(customer, "service_menu", "web", "accept", at, None)])


def whole_table(compiled):
    """A learner that merged another shard's learning, and its every model (its answer to a
    shard it knows nothing of); the other shard."""
    learner, other = Learner(compiled), shard(compiled, "s1")
    taught(other, "bo")
    learner.sync(compiled.version, other.engine.models.take_delta(), -1)
    return learner, learner.sync(compiled.version, None, -1), other


def held(monkeypatch) -> threading.Event:
    """Every table goes to the thread, whose prepare waits for the event (PREPARE_S at most)."""
    monkeypatch.setattr(modelsync, "ADOPT_ON_LOOP_BYTES", 0)
    release, prepare = threading.Event(), models.Adopting.prepare

    def slow(whole):
        release.wait(PREPARE_S)
        prepare(whole)
    monkeypatch.setattr(models.Adopting, "prepare", slow)
    return release


def test_the_loop_turns_and_learns_while_a_whole_table_is_prepared(compiled, monkeypatch):
    held(monkeypatch)
    learner, published, _ = whole_table(compiled)
    s, sync = shard(compiled), ModelSync("s0")
    s.process([app_open("ana")])

    async def main():
        adopting = asyncio.get_running_loop().create_task(
            loop_waits(sync.adopt_answer(lambda: s.engine, published)))
        await asyncio.sleep(PREPARE_S / 4)
        # learnt while the table is prepared: kept, pending, on top of it
        s.engine.record_outcomes([("ana", "service_menu", "web", "accept", T0, None)])
        took, longest = await adopting
        assert took >= PREPARE_S and longest < PREPARE_S / 2
    asyncio.run(main())
    assert s.engine.models.version == learner.version
    assert [version for version, _ in sync.adoptions] == [learner.version]
    assert s.engine.models.positives.sum() == 2  # the other shard's, and this one's
    assert s.engine.models.pending().positives.sum() == 1


def test_a_table_prepared_while_the_models_moved_on_is_dropped(compiled, monkeypatch):
    """A newer version adopted meanwhile stays; an engine rebuilt meanwhile is left to its
    next sync; a watch cancelled meanwhile (a sync's delta went) takes nothing."""
    release = held(monkeypatch)
    learner, published, other = whole_table(compiled)
    engines = [shard(compiled).engine]
    sync = ModelSync("s0")

    def meanwhile(change) -> None:
        async def main():
            release.clear()
            adopting = asyncio.get_running_loop().create_task(
                sync.adopt_answer(lambda: engines[0], published))
            await asyncio.sleep(0.05)
            change(adopting)
            release.set()
            await asyncio.gather(adopting, return_exceptions=True)
        asyncio.run(main())

    def newer(_):
        release.set()  # this adopt prepares too (on the loop)
        taught(other, "cy", T0 + 1)
        learner.sync(compiled.version, other.engine.models.take_delta(), published.version)
        engines[0].adopt_models(learner.sync(compiled.version, None, -1))

    meanwhile(newer)
    assert engines[0].models.version == learner.version > published.version
    assert engines[0].models.positives.sum() == 2 and not sync.adoptions

    engines[0] = before = shard(compiled).engine
    meanwhile(lambda _: engines.__setitem__(0, shard(compiled).engine))  # rebuilt
    assert before.models.version == engines[0].models.version == 0 and not sync.adoptions

    meanwhile(lambda adopting: adopting.cancel())
    assert engines[0].models.version == 0 and not sync.adoptions


def test_a_sync_answered_while_a_cancelled_watchs_table_is_prepared_waits_for_it(
        compiled, monkeypatch):
    """A watch answered with a whole table prepares it; the shard learns, the next step's
    sync cancels the watch (its thread runs on) and is answered with a whole table too: it is
    prepared once the first thread ended, never beside it, and adopted."""
    monkeypatch.setattr(modelsync, "ADOPT_ON_LOOP_BYTES", 0)
    lock, running, most, prepared = threading.Lock(), [0], [0], []
    prepare = models.Adopting.prepare

    def slow(whole):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        threading.Event().wait(PREPARE_S / 2)
        prepare(whole)
        with lock:
            running[0] -= 1
            prepared.append(whole)
    monkeypatch.setattr(models.Adopting, "prepare", slow)
    learner, _, _ = whole_table(compiled)
    s, sync = shard(compiled), ModelSync("s0")
    s.process([app_open("ana")])

    class Learnt:  # every answer every model, as to a shard at a version it does not know
        async def watch(self, catalog_version, known, takes_rows=False, based_on=None):
            return learner.sync(compiled.version, None, -1)

        async def sync(self, catalog_version, delta, known):
            learner.sync(catalog_version, delta, -1)
            return learner.sync(compiled.version, None, -1)

    async def main():
        the_learner = Learnt()
        await sync.step(lambda: s.engine, lambda: the_learner, 0.01)  # a watch
        await asyncio.sleep(PREPARE_S / 8)  # answered: its table is being prepared
        s.engine.record_outcomes([("ana", "service_menu", "web", "accept", T0, None)])
        await sync.step(lambda: s.engine, lambda: the_learner, 0.01)  # the watch cancelled
    asyncio.run(main())
    assert most[0] == 1 and len(prepared) == 2
    assert [version for version, _ in sync.adoptions] == [learner.version]
    assert s.engine.models.version == learner.version
    assert s.engine.models.positives.sum() == 2  # the other shard's, and this one's
