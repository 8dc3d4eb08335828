"""A learner's saved posterior read at a call (control/learner.py `_ready`: the store did not
answer as it started) whose read or take-up fails while calls wait for it, and one of another
catalog that does not hold together: nothing merges into the priors to be saved over the
posterior, the calls waiting hear the failure, and the next call reads it again."""
from __future__ import annotations

import asyncio
import threading

import pytest

from kairos.cluster.control import learner as learner_module
from kairos.cluster.control.learner import DAMAGED_KEY, STATE_KEY, Learner, save_models
from kairos.cluster.storage import blocks
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.store import StoreUnavailable
from kairos.cluster.transport.backend import Unavailable
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import default_compiled

from .test_learner import Actor, Flaky, catalog, learned, told
from .test_learner_saves import began

pytestmark = pytest.mark.unit


class Held(Flaky):
    """A Flaky store whose next read, once `holding`, waits until the test lets it go, then
    fails if `fails` (the store down again): calls come meanwhile."""

    def __init__(self, store):
        super().__init__(store)
        self.holding = self.fails = False
        self.started, self.go = threading.Event(), threading.Event()
        self.puts = 0

    def get_meta(self, key: str):
        if self.holding:
            self.holding = False
            self.started.set()
            self.go.wait(10)
            if self.fails:
                raise StoreUnavailable("down again")
        return super().get_meta(key)

    def put_meta(self, key: str, blob: bytes) -> None:
        super().put_meta(key, blob)
        self.puts += 1


def saved_at_4(tmp_path, monkeypatch) -> Held:
    """A posterior saved with 4 positives at model 3; the store down as the learner starts."""
    c = default_compiled()
    told(open_store(str(tmp_path)))
    first = Actor(default_catalog_text(), str(tmp_path))
    asyncio.run(first.sync(c.version, learned(c, 3, 4), -1))  # saved: the first merge
    held = Held(open_store(str(tmp_path)))
    monkeypatch.setattr(learner_module, "open_store", lambda url: held)
    monkeypatch.setattr(learner_module, "RESTORE_RETRY_S", 0.0)
    return held


def saved_positives(held: Held) -> float:
    return blocks.unpack(held.store.get_meta(STATE_KEY))["positives"][3]


def test_a_take_up_that_raises_leaves_the_posterior_unread_and_the_next_call_reads_it_again(
        tmp_path, monkeypatch):
    """It was marked read before it was taken up: the calls after passed `_ready` on the
    priors, and their merges were saved over the posterior. The calls waiting hear
    StoreUnavailable, which a shard tries again quietly (a RuntimeError is a bug's traceback
    in every waiting shard's log, and counts towards dropping its delta)."""
    c = default_compiled()
    held = saved_at_4(tmp_path, monkeypatch)
    actor = Actor(default_catalog_text(), "x")
    take_up, raised = learner_module.take_up, []

    def fails_once(learner, ready):
        if not raised:
            raised.append(True)
            raise RuntimeError("the learner's tables changed while its saved posterior was read")
        take_up(learner, ready)
    monkeypatch.setattr(learner_module, "take_up", fails_once)

    async def main():
        loop = asyncio.get_running_loop()
        held.down, held.holding = False, True
        waiting = [loop.create_task(actor.sync(c.version, learned(c, 3, 1), -1)),
                   loop.create_task(actor.watch(c.version, -1, timeout_s=5))]
        await began(held.started)
        held.go.set()
        heard = await asyncio.gather(*waiting, return_exceptions=True)
        await actor.flush()  # nothing merged: nothing written over the posterior
        puts = held.puts
        synced = await actor.sync(c.version, learned(c, 3, 1), -1)
        await actor.flush()
        return heard, puts, synced
    heard, puts, synced = asyncio.run(main())
    assert [type(e) for e in heard] == [StoreUnavailable, StoreUnavailable]
    assert puts == 0
    assert synced.positives[3] == 5  # merged onto the saved posterior, not the priors (1)
    assert saved_positives(held) == 5


def test_a_read_that_fails_while_a_sync_and_a_watch_wait_fails_both_and_is_read_again(
        tmp_path, monkeypatch):
    c = default_compiled()
    held = saved_at_4(tmp_path, monkeypatch)
    actor = Actor(default_catalog_text(), "x")

    async def main():
        loop = asyncio.get_running_loop()
        held.down, held.holding, held.fails = False, True, True
        waiting = [loop.create_task(actor.sync(c.version, learned(c, 3, 1), -1)),
                   loop.create_task(actor.watch(c.version, -1, timeout_s=5))]
        await began(held.started)
        held.go.set()
        heard = await asyncio.gather(*waiting, return_exceptions=True)
        return heard, await actor.sync(c.version, learned(c, 3, 1), -1)
    heard, synced = asyncio.run(main())
    assert [type(e) for e in heard] == [StoreUnavailable, StoreUnavailable]
    assert synced.positives[3] == 5 and actor._reading is None


def test_a_flush_while_the_posterior_is_read_writes_nothing(tmp_path, monkeypatch):
    """A flush does not wait for the read (runtime.stop's, before the kill): with nothing
    merged it writes nothing, so not the priors over the posterior."""
    c = default_compiled()
    held = saved_at_4(tmp_path, monkeypatch)
    actor = Actor(default_catalog_text(), "x")

    async def main():
        held.down, held.holding = False, True
        syncing = asyncio.get_running_loop().create_task(
            actor.sync(c.version, learned(c, 3, 1), -1))
        await began(held.started)
        await actor.flush()
        flushed = held.puts, (await actor.status())["unsaved"]
        held.go.set()
        return flushed, await syncing
    (puts, unsaved), synced = asyncio.run(main())
    assert (puts, unsaved) == (0, 0)
    assert synced.positives[3] == 5


def test_a_saved_posterior_of_another_catalog_that_does_not_fit_leaves_it_unconfirmed(
        tmp_path):
    """Before the remap on a thread (7ab080d), the learner switched to the saved text before
    the adopt failed, and stayed there, confirmed, on priors. Now it stays on its own catalog
    and merges nothing until told the cluster's."""
    switched = Learner(default_compiled(), default_catalog_text())
    switched.switch(catalog("B"))
    switched.models.positives = switched.models.positives[:-1]  # a posterior of other shapes
    blob = save_models(switched)
    store = open_store(str(tmp_path))
    store.put_meta(STATE_KEY, blob)
    actor = Actor(default_catalog_text(), str(tmp_path))  # Ray restarted it on its first catalog
    c = default_compiled()

    async def main():
        status = await actor.status()
        with pytest.raises(Unavailable):
            await actor.sync(c.version, learned(c, 3, 1), -1)
        await actor.switch(catalog("B"))  # told: the controller runs B
        return status
    status = asyncio.run(main())
    assert (status["catalog_version"], status["unconfirmed"]) == (c.version, True)
    assert store.get_meta(DAMAGED_KEY) == blob
    assert actor.learner.compiled.version == "B" and not actor.learner.unconfirmed
