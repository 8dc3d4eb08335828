"""A learner Ray constructs is unconfirmed until it learns that the cluster runs its text
(control/learner.py): the ways it learns so besides a control round, and the alarms raised
while it does not."""
from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

from kairos.cluster import throttled
from kairos.cluster.control import learner as learner_module
from kairos.cluster.control import merging
from kairos.cluster.control.learner import Learner
from kairos.cluster.shard.modelsync import ModelSync
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.store import StoreUnavailable
from kairos.cluster.transport.backend import Unavailable
from kairos.core.compiler import compiled_from_text

from tests.support.local_backend import LocalBackend
from tests.unit.control.actors import Actors, controller_on
from tests.unit.control.test_catalog_identity import (AP, BOOT, FIRST, Actor, OlderRelease,
                                                      accepted, positives_by_action)
from tests.unit.control.test_control_loop import rounds
from tests.unit.control.test_interrupted import restarted, started
from tests.unit.control.test_learner import Flaky
from tests.unit.shard.test_modelsync import shard_that_learned

SHARDS = compiled_from_text(BOOT)


def restarted_learner(where: str, text: str) -> Actor:
    """A LearnerActor as Ray restarts it on `text`, its saved posterior unreadable."""
    open_store(where).put_meta(learner_module.STATE_KEY, b"\x92\x01")
    return Actor(text, where)


class Silent:
    """A controller that tells the learner nothing: of an older release, or its loop stopped;
    it still answers get_catalog."""

    def __init__(self, text: str):
        self.text, self.asked = text, 0

    async def get_catalog(self) -> dict:
        self.asked += 1
        return {"version": compiled_from_text(self.text).version, "text": self.text}


class Down:
    """A controller that does not answer (dead, restarting)."""

    async def get_catalog(self) -> dict:
        raise Unavailable("kairos-controller: ActorUnavailableError")


def test_an_unconfirmed_learner_confirms_itself_when_the_controller_runs_its_text(tmp_path):
    """No control round tells it (the controller is older, restarting, or its loop stopped):
    it asks the controller's catalog, and runs again once that is its own text, waking the
    watch it held."""
    async def main():
        controller = Silent(BOOT)
        actor = restarted_learner(str(tmp_path), BOOT)
        actor.controller = lambda: controller
        watch = asyncio.create_task(actor.watch(SHARDS.version, -1, timeout_s=30))
        assert (await watch).catalog_version == SHARDS.version
        assert controller.asked == 1 and not (await actor.status())["unconfirmed"]
        await actor.sync(SHARDS.version, accepted(SHARDS, FIRST, 3), -1)
        assert positives_by_action(actor.learner) == {FIRST: 3}
    asyncio.run(main())


def test_a_learner_on_another_text_than_the_controllers_stays_unconfirmed(tmp_path):
    """Same version, other text (AP), or a controller that does not answer: it never
    switches on its own, and merges nothing."""
    async def main():
        for n, (text, controller) in enumerate(((AP, Silent(BOOT)), (BOOT, Down()))):
            actor = restarted_learner(str(tmp_path / str(n)), text)
            actor.controller = lambda: controller
            with pytest.raises(Unavailable):
                await actor.sync(SHARDS.version, accepted(SHARDS, FIRST, 3), -1)
            await actor._asking
            assert (await actor.status())["unconfirmed"]
            assert actor.learner.catalog_text == text
            assert actor.learner.merged == 0
    asyncio.run(main())


def test_syncs_refused_unconfirmed_are_counted_and_logged_throttled(caplog, monkeypatch):
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(throttled, "time", SimpleNamespace(monotonic=lambda: clock.now))
    learner = Learner(SHARDS, BOOT, unconfirmed=True)

    def refused(n: int) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="kairos.learner"):
            for _ in range(n):
                with pytest.raises(Unavailable):
                    learner.sync(SHARDS.version, accepted(SHARDS, FIRST, 1), -1)
        return [r.getMessage() for r in caplog.records]

    first = refused(3)
    assert len(first) == 1 and "syncs refused (1 so far)" in first[0]
    clock.now += merging.REFUSED_LOG_S
    later = refused(2)
    assert len(later) == 1 and "syncs refused (4 so far)" in later[0]
    assert "2 more since the last" in later[0]
    assert learner.status()["refused_unconfirmed"] == 5


def test_the_learner_actor_reports_refused_syncs_to_its_metrics(tmp_path):
    async def main():
        actor = restarted_learner(str(tmp_path), AP)
        actor.controller = lambda: Silent(BOOT)
        for _ in range(2):
            with pytest.raises(Unavailable):
                await actor.sync(SHARDS.version, accepted(SHARDS, FIRST, 1), -1)
        assert actor.metrics._sent["unconfirmed"] == 2
    asyncio.run(main())


def test_a_shard_whose_delta_the_learner_refuses_says_so_throttled(caplog):
    async def main():
        backend = LocalBackend()
        backend.local_learner = Learner(SHARDS, BOOT, unconfirmed=True)
        shard, sync = shard_that_learned(SHARDS), ModelSync("s0")
        with caplog.at_level(logging.WARNING, logger="kairos.shard"):
            for _ in range(3):
                await sync.step(lambda: shard.engine, backend.learner, 0.01)
        refused = [r for r in caplog.records if "did not take this shard's delta" in
                   r.getMessage()]
        assert len(refused) == 1 and "not been told" in refused[0].getMessage()
        assert sync._outbox is not None  # it goes again
    asyncio.run(main())



def test_a_fresh_start_and_a_resume_confirm_the_learner_without_a_control_round(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        assert not backend.local_learner.unconfirmed
        # Ray restarts the learner along with the controller, on the first catalog
        backend.local_learner = Learner(SHARDS, BOOT, unconfirmed=True)
        await restarted(backend, str(tmp_path), 2)
        assert not backend.local_learner.unconfirmed
    asyncio.run(main())


def test_a_learner_checked_by_version_is_logged_once(tmp_path, caplog):
    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path), 2)
        backend.local_learner = OlderRelease(SHARDS, BOOT)
        with caplog.at_level(logging.INFO, logger="kairos.controller"):
            await rounds(controller, 3)
        by_version = [r for r in caplog.records if "checked by catalog version" in
                      r.getMessage()]
        assert len(by_version) == 1 and by_version[0].levelno == logging.INFO
    asyncio.run(main())


def test_a_tell_its_store_did_not_save_leaves_the_learner_unconfirmed(tmp_path, monkeypatch):
    """A tell comes before the controller decides (a PutCatalog's switch): one whose save
    failed may name a text the cluster does not run, even the learner's own, so it confirms
    nothing (a revert of 2d2e498, whose review confirmed a learner on a switch never made)."""
    flaky = Flaky(open_store(str(tmp_path)))
    flaky.down = False
    monkeypatch.setattr(learner_module, "open_store", lambda url: flaky)

    async def main():
        actor = Actor(BOOT, "x")  # nothing saved
        actor.controller = Down
        flaky.down = True
        with pytest.raises(StoreUnavailable):
            await actor.switch(BOOT)
        assert (await actor.status())["unconfirmed"]
        with pytest.raises(Unavailable):
            await actor.sync(SHARDS.version, accepted(SHARDS, FIRST, 2), -1)
    asyncio.run(main())
