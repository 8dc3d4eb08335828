"""The learner's saves of its posterior: packed and written on a thread while its event loop
answers the shards, one at a time, of a copy taken when the save began; a switch's (on the
loop) and a stand-down wait for the one in flight, so an older save never lands after them."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from kairos.cluster.control import learner as learner_module
from kairos.cluster.control import posterior
from kairos.cluster.control.learner import Learner, save_models
from kairos.cluster.control.posterior import PER_MODEL, Saves
from kairos.cluster.storage import blocks
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.store import StoreInUse
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text, default_compiled

from bench.costs import loop_waits

from .test_learner import Actor, catalog, learned, told

WRITE_S = 1.0


class Slow:
    """A store whose first write takes `first_s` (on the thread that makes it), noting each
    blob written, in the order they land, and the most writes at once; the writes numbered
    in `failing` (from 0) raise StoreInUse (another cluster claimed the store) once their time
    is up."""

    def __init__(self, store, first_s: float, failing: tuple[int, ...] = ()):
        self.store, self.first_s, self.failing, self.tries = store, first_s, failing, 0
        self.blobs, self.writing, self.most = [], 0, 0
        self.started = threading.Event()  # the first write began
        self._lock = threading.Lock()

    def get_meta(self, key: str):
        return self.store.get_meta(key)

    def put_meta(self, key: str, blob: bytes) -> None:
        with self._lock:
            first = not self.started.is_set()
            self.started.set()
            self.writing += 1
            self.most = max(self.most, self.writing)
        time.sleep(self.first_s if first else 0.0)
        with self._lock:
            self.writing, self.tries = self.writing - 1, self.tries + 1
            if self.tries - 1 in self.failing:
                raise StoreInUse("another cluster's store")
            self.store.put_meta(key, blob)
            self.blobs.append(blocks.unpack(blob))


def slow_actor(tmp_path, monkeypatch, first_s: float = WRITE_S,
               failing: tuple[int, ...] = ()) -> tuple[Slow, object]:
    slow = Slow(open_store(str(tmp_path)), first_s, failing)
    told(slow.store)
    monkeypatch.setattr(learner_module, "open_store", lambda url: slow)
    return slow, Actor(default_catalog_text(), "x")


async def began(event: threading.Event) -> None:
    while not event.is_set():
        await asyncio.sleep(0.005)


def test_a_save_is_written_while_the_loop_answers_other_shards(tmp_path, monkeypatch):
    c = default_compiled()
    slow, actor = slow_actor(tmp_path, monkeypatch)

    async def main():
        saving = asyncio.get_running_loop().create_task(
            loop_waits(actor.sync(c.version, learned(c, 3, 1), -1)))  # saves: the first
        await began(slow.started)
        answer = await actor.sync(c.version, learned(c, 4, 1), -1)  # not held by the save
        assert answer.positives[4] == 1 and not slow.blobs
        took, longest = await saving
        assert took >= WRITE_S and longest < WRITE_S / 2
        await actor.saves.idle()
    asyncio.run(main())
    assert slow.blobs[0]["positives"][3] == 1 and slow.blobs[0]["positives"][4] == 0


async def a_save_being_written(actor, slow, c) -> asyncio.Task:
    """A sync's merge whose save is being written: its task."""
    saving = asyncio.get_running_loop().create_task(actor.sync(c.version, learned(c, 3, 1), -1))
    await began(slow.started)
    return saving


async def merged_while_a_save_is_written(actor, slow, c) -> asyncio.Task:
    """`a_save_being_written`, and another merge meanwhile, whose save is asked for while
    that write is in flight."""
    saving = await a_save_being_written(actor, slow, c)
    await actor.sync(c.version, learned(c, 4, 1), -1)
    return saving


def test_a_save_asked_for_while_one_is_written_is_written_right_after_it(tmp_path,
                                                                         monkeypatch):
    """Not at the next tick (LEARNER_SAVE_S later): a merge is saved within the write in
    flight and its own."""
    monkeypatch.setattr(learner_module, "LEARNER_SAVE_S", 60.0)
    c = default_compiled()
    slow, actor = slow_actor(tmp_path, monkeypatch)

    async def main():
        await (await merged_while_a_save_is_written(actor, slow, c))
        await asyncio.wait_for(actor.saves.idle(), WRITE_S)
    asyncio.run(main())
    assert [blob["positives"][4] for blob in slow.blobs] == [0, 1] and slow.most == 1


def test_a_save_asked_for_is_not_started_once_the_write_in_flight_is_cancelled(monkeypatch):
    """The loop shutting down cancels the write in flight: the save asked for meanwhile is
    not taken up (it would outlive the loop)."""
    learner, started, taken = Learner(default_compiled(), default_catalog_text()), \
        threading.Event(), []
    saved_parts = posterior.saved_parts
    monkeypatch.setattr(posterior, "saved_parts", lambda of: taken.append(of) or saved_parts(of))

    class Held:
        def put_meta(self, key: str, blob: bytes) -> None:
            started.set()
            time.sleep(WRITE_S / 4)

    saves = Saves(Held(), "k")

    async def main():
        asyncio.get_running_loop().create_task(saves.save(learner))
        await began(started)
        learner.sync(learner.compiled.version, learned(learner.compiled, 3, 1), -1)
        await saves.save(learner)  # asked for; the loop ends with the write in flight
    asyncio.run(main())
    assert len(taken) == 1


def test_a_save_that_fails_raises_to_its_caller_not_to_a_switch_waiting_for_it(
        tmp_path, monkeypatch):
    """A sync's save and a flush's raise what the store raised (runtime.stop warns that the
    learner did not save its last merges); a switch that waited for a failed save is saved."""
    c = default_compiled()
    slow, actor = slow_actor(tmp_path, monkeypatch, failing=(0, 2))
    compiled_from_text(catalog("B"))  # kept: the switch compiles nothing

    async def main():
        saving = await a_save_being_written(actor, slow, c)
        await actor.switch(catalog("B"))
        with pytest.raises(StoreInUse):
            await saving
        actor.learner.sync("B", learned(actor.learner.compiled, 3, 1), -1)
        with pytest.raises(StoreInUse):
            await actor.flush()
    asyncio.run(main())
    assert [blob["catalog"] for blob in slow.blobs] == ["B"]


def test_a_save_holds_what_was_merged_when_it_began_and_a_flush_the_rest(tmp_path, monkeypatch):
    """Merges write the models in place: a merge while a save is on its thread is not in it
    (nor half in it); no two saves overlap; a flush waits for the one in flight and saves the
    rest."""
    c = default_compiled()
    slow, actor = slow_actor(tmp_path, monkeypatch, first_s=0.0)
    to_thread, started = asyncio.to_thread, threading.Event()

    async def late(work):  # the thread starts its work WRITE_S late
        def then():
            started.set()
            time.sleep(WRITE_S)
            return work()
        return await to_thread(then)
    monkeypatch.setattr(asyncio, "to_thread", late)

    async def main():
        saving = asyncio.get_running_loop().create_task(
            actor.sync(c.version, learned(c, 3, 1), -1))
        await began(started)
        await actor.sync(c.version, learned(c, 3, 2), -1)  # one in flight: no second
        await actor.flush()
        await saving
    asyncio.run(main())
    assert [blob["positives"][3] for blob in slow.blobs] == [1, 3] and slow.most == 1
    assert Actor(default_catalog_text(), "x").learner.models.positives[3] == 3


def test_a_saved_posterior_is_what_blocks_pack_makes_of_it():
    """Packed in parts for a thread to join, byte for byte what blocks.pack made (and
    blocks.unpack reads), whatever the arrays' sizes (msgpack's three bin headers) and
    wherever NumPy values are (in lists, on their own)."""
    learner = Learner(default_compiled(), default_catalog_text())
    learner.sync(learner.compiled.version, learned(learner.compiled, 3, 2), -1)
    assert save_models(learner) == blocks.pack(posterior_block(learner))
    rng = np.random.default_rng(0)
    block = {"text": "x", "none": None, "list": [["a", "b", 1, 2.5]], "empty": np.zeros(0),
             **{f"a{n}": rng.random(n) for n in (1, 31, 32, 8191, 8192, 9000)},
             "matrices": rng.random((3, 4, 4)), "counts": np.arange(5, dtype=np.int64),
             "scalar": np.int64(7), "nested": [np.int64(3), np.float32(0.5), [np.arange(3)]]}
    assert b"".join(blocks.pack_parts(block)) == blocks.pack(block)


def posterior_block(learner) -> dict:
    m = learner.models
    return {"catalog": learner.compiled.version, "catalog_text": learner.catalog_text,
            "version": m.version, "ran": list(learner.ran),
            "sequences": [[*key, *last] for key, last in learner.sequences.items()],
            **{name: getattr(m, name) for name in (*PER_MODEL, "inputs")}}


def test_a_switch_is_saved_after_the_save_in_flight_not_under_it(tmp_path, monkeypatch):
    """The save in flight is slow to write: the switch's, written at once, would land first
    and be overwritten by it."""
    c = default_compiled()
    slow, actor = slow_actor(tmp_path, monkeypatch, first_s=2 * WRITE_S)
    compiled_from_text(catalog("B"))  # kept: the switch compiles nothing

    async def main():
        saving = await a_save_being_written(actor, slow, c)
        await actor.switch(catalog("B"))
        await saving
    asyncio.run(main())
    assert [blob["catalog"] for blob in slow.blobs] == [c.version, "B"] and slow.most == 1
    again = Actor(default_catalog_text(), "x")  # Ray restarted it: the switch's posterior
    assert again.learner.compiled.version == "B" and again.learner.models.positives[3] == 1


def test_a_learner_stood_down_answers_once_the_save_in_flight_is_written(tmp_path,
                                                                      monkeypatch):
    c = default_compiled()
    slow, actor = slow_actor(tmp_path, monkeypatch)

    async def main():
        saving = await merged_while_a_save_is_written(actor, slow, c)  # its save: never taken
        await actor.stand_down()
        assert len(slow.blobs) == 1  # nothing is written after it answers
        await actor.sync(c.version, learned(c, 3, 1), -1)
        await actor.flush()
        await saving
    asyncio.run(main())
    assert len(slow.blobs) == 1
