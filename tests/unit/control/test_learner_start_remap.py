"""A learner that starts while the store does not answer reads its saved posterior at a later
call (control/learner.py `_ready`); one saved under another catalog is remapped then (1.9-2.6 s
for 4,500 models of 32 coefficients): on a thread, so the event loop goes on answering `status`
meanwhile, while syncs and watches wait until the posterior is in place, and none merges into
the priors."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.control import learner as learner_module
from kairos.cluster.control.learner import STATE_KEY, Learner, save_models
from kairos.cluster.storage.providers import open_store
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text, default_compiled

from .test_learner import Actor, Flaky, catalog, learned
from .test_learner_saves import began
from .test_learner_switch_remap import SlowRemap, held_remaps

pytestmark = pytest.mark.unit


@pytest.fixture
def slow(monkeypatch) -> SlowRemap:
    return held_remaps(monkeypatch)


def test_the_loop_answers_status_while_a_posterior_of_another_catalog_is_read_at_a_call(
        tmp_path, monkeypatch, slow):
    b = compiled_from_text(catalog("B"))  # compiled here: the remap's own time is held
    switched = Learner(default_compiled(), default_catalog_text())
    switched.switch(catalog("B"))
    switched.sync("B", learned(b, 3, 7), 0)
    flaky = Flaky(open_store(str(tmp_path)))
    flaky.store.put_meta(STATE_KEY, save_models(switched))
    monkeypatch.setattr(learner_module, "open_store", lambda url: flaky)
    monkeypatch.setattr(learner_module, "RESTORE_RETRY_S", 0.0)
    actor = Actor(default_catalog_text(), "x")  # Ray restarted it on its first catalog

    async def main():
        loop = asyncio.get_running_loop()
        flaky.down = False
        slow.holding = True
        syncing = loop.create_task(actor.sync("B", learned(b, 3, 5), -1))
        await began(slow.started)
        status = await actor.status()
        watching = loop.create_task(actor.watch("B", -1, timeout_s=5))
        await asyncio.sleep(0.05)
        answered_early = syncing.done() or watching.done()
        slow.go.set()
        return status, answered_early, await syncing, await watching
    status, answered_early, synced, watched = asyncio.run(main())
    assert slow.let_go == [True]  # `status` was answered while the remap waited
    # answered as the learner started: the saved posterior is not taken up yet
    assert (status["catalog_version"], status["unconfirmed"], status["merged"]) == \
        (default_compiled().version, True, 0)
    # the sync and the watch waited for the posterior, and the delta merged onto it
    assert not answered_early
    assert (synced.catalog_version, synced.positives[3]) == ("B", 12)
    assert (watched.catalog_version, watched.version) == ("B", synced.version)
    assert actor.learner.version > switched.version
