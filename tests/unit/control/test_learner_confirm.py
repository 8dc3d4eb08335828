"""A learner Ray constructs is unconfirmed until it learns that the cluster runs its text
(control/learner.py): the ways it learns so besides a control round, and the alarms raised
while it does not."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.control import learner as learner_module
from kairos.cluster.storage.providers import open_store
from kairos.cluster.transport.backend import Unavailable
from kairos.core.compiler import compiled_from_text

from tests.unit.control.test_catalog_identity import (AP, BOOT, FIRST, Actor, accepted,
                                                      positives_by_action)

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
