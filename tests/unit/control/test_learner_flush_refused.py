"""A stop's last save of the posterior (control/learner.py `flush`, runtime.stop's before the
kill) that the store does not take: the merges it leaves unsaved were said in the learner's own
log only. Now the flush raises it to its caller (runtime.stop warns of it), the learner's status
(which the controller's carries) shows the merges not saved and the failed writes, and the
failure is counted in kairos_learner_saves_failed_total; a write that lands clears them."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.control import learner as learner_module
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.store import StoreUnavailable
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import default_compiled

from tests.support.metrics import Recorder

from .test_learner import Actor, Flaky, learned, told

pytestmark = pytest.mark.unit

SAVES = ("unsaved", "saves_failed", "flush_unsaved")


def test_a_last_save_the_store_refuses_is_raised_shown_in_status_and_counted(
        tmp_path, monkeypatch):
    c = default_compiled()
    flaky = Flaky(open_store(str(tmp_path)))
    flaky.down = False
    told(flaky.store)
    monkeypatch.setattr(learner_module, "open_store", lambda url: flaky)
    monkeypatch.setattr(learner_module, "LEARNER_SAVE_S", 60.0)  # only the first sync saves

    async def run():
        actor = Actor(default_catalog_text(), "x")
        actor.metrics.saves_failed = Recorder()
        for _ in range(3):  # the first is saved, the next two wait for LEARNER_SAVE_S
            await actor.sync(c.version, learned(c, 3, 1), -1)
        before = await actor.status()
        flaky.down = True
        with pytest.raises(StoreUnavailable, match="the 2 merges since the last save"):
            await actor.flush()
        refused = await actor.status()
        flaky.down = False
        await actor.flush()
        return before, refused, await actor.status(), actor.metrics.saves_failed.calls
    before, refused, landed, counted = asyncio.run(run())
    assert [before[k] for k in SAVES] == [2, 0, 0]
    assert [refused[k] for k in SAVES] == [2, 1, 2]
    assert counted == [(1, None)]  # the refused flush, once
    assert [landed[k] for k in SAVES] == [0, 0, 0]
