"""A stop's last save of the posterior (control/learner.py `flush`, runtime.stop's before the
kill) that the store does not take: the merges it leaves unsaved were said in the learner's own
log only. Now the flush raises it to its caller (runtime.stop warns of it), the learner's status
(which the controller's carries) shows the merges not saved and the failed writes, and the
failure is counted in kairos_learner_saves_failed_total; a write that lands clears them. The
same status and counter tell of the periodic saves the store refuses; a switch's refused save
counts in the counter only (its caller hears it, and nothing is left unsaved by it)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from kairos.cluster.control import learner as learner_module
from kairos.cluster.control import posterior
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.store import StoreUnavailable
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import default_compiled

from tests.support.metrics import Recorder

from .test_learner import Actor, Flaky, catalog, learned, told

pytestmark = pytest.mark.unit

SAVES = ("unsaved", "saves_failed", "saves_failing_s")


@pytest.fixture
def flaky(tmp_path, monkeypatch) -> Flaky:
    """The learner's store, answering, its posterior told; only a sync's first merge saves."""
    flaky = Flaky(open_store(str(tmp_path)))
    flaky.down = False
    told(flaky.store)
    monkeypatch.setattr(learner_module, "open_store", lambda url: flaky)
    monkeypatch.setattr(learner_module, "LEARNER_SAVE_S", 60.0)
    return flaky


async def merged_3(c) -> Actor:
    """A learner that merged 3 deltas: the first saved, the next two wait for LEARNER_SAVE_S."""
    actor = Actor(default_catalog_text(), "x")
    actor.metrics.saves_failed = Recorder()
    for _ in range(3):
        await actor.sync(c.version, learned(c, 3, 1), -1)
    return actor


def test_a_last_save_the_store_refuses_is_raised_shown_in_status_and_counted(
        flaky, monkeypatch):
    c = default_compiled()
    now = [100.0]  # the saves' clock: how long the writes failed is told exactly
    monkeypatch.setattr(posterior, "time", SimpleNamespace(monotonic=lambda: now[0]))

    async def run():
        actor = await merged_3(c)
        before = await actor.status()
        flaky.down = True
        with pytest.raises(StoreUnavailable, match="the 2 merges since the last save"):
            await actor.flush()
        now[0] += 12.34
        refused = await actor.status()
        with pytest.raises(StoreUnavailable):  # failing since the first
            await actor.flush()
        now[0] += 30.0
        again = await actor.status()
        flaky.down = False
        await actor.flush()
        return before, refused, again, await actor.status(), actor.metrics.saves_failed.calls
    before, refused, again, landed, counted = asyncio.run(run())
    assert [before[k] for k in SAVES] == [2, 0, 0.0]
    assert [refused[k] for k in SAVES] == [2, 1, 12.3]
    assert [again[k] for k in SAVES] == [2, 2, 42.3]
    assert counted == [(1, None), (1, None)]  # each refused flush, once
    assert [landed[k] for k in SAVES] == [0, 0, 0.0]
    assert "flush_unsaved" not in landed  # nobody reads it: the kill follows the flush


def test_a_save_the_store_refuses_reaches_the_counter_at_the_periodic_saves_tick(
        flaky, monkeypatch):
    """A sync reports before its save: one the store refuses, which the sync does not wait
    out, is counted at the periodic save's next tick (`_save_unsaved`), with no further call
    to report it."""
    c = default_compiled()
    monkeypatch.setattr(learner_module, "LEARNER_SAVE_S", 0.0)  # each sync saves; ticks 0.1 s

    async def run():
        actor = await merged_3(c)
        flaky.down = True
        await actor.sync(c.version, learned(c, 3, 1), -1)  # its save refused, then waited for
        reported = actor.metrics.saves_failed.calls[:]
        for _ in range(100):  # the next tick, bounded: without its report this never comes
            if actor.metrics.saves_failed.calls:
                break
            await asyncio.sleep(0.05)
        return reported, await actor.status(), actor.metrics.saves_failed.calls
    reported, status, counted = asyncio.run(run())
    assert reported == [] and counted == [(1, None)]
    assert [status[k] for k in SAVES[:2]] == [1, 1]


def test_a_switch_the_store_refuses_counts_in_the_counter_not_as_a_loss(flaky):
    """A switch's failed save counts in kairos_learner_saves_failed_total. Not in `status`'
    saves_failed: the learner stays on its catalog, whose merges are saved, and on an idle
    cluster no merge's save would land to clear it: `kairos status` said LEARNER NOT SAVING,
    with nothing unsaved, for good."""
    c = default_compiled()

    async def run():
        actor = await merged_3(c)
        flaky.down = True
        with pytest.raises(StoreUnavailable):
            await actor.switch(catalog("B"))
        actor._report()
        return await actor.status(), actor.saves.failed_total, actor.metrics.saves_failed.calls
    status, total, counted = asyncio.run(run())
    assert (status["saves_failed"], status["saves_failing_s"], total, counted) == \
        (0, 0.0, 1, [(1, None)])
