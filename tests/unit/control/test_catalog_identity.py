"""A catalog is its text, not its version string (control/catalog_identity.py): another text
under a version run before is refused by the controller, remembered across its restarts; and
where a learner decides which layout its models are in (a saved posterior taken up, a switch,
the control loop's check of a learner Ray restarted) another text under the same version is
another catalog, so no model lands in another action's rows."""
from __future__ import annotations

import asyncio
from collections import deque

import msgpack
import pytest
import yaml

from kairos.cluster.control.catalog_identity import VERSIONS_KEPT, VersionsRun
from kairos.cluster.control import learner as learner_module
from kairos.cluster.control.learner import Learner, LearnerActor, save_models
from kairos.cluster.control.saved import STATE_KEY
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.store import StoreUnavailable
from kairos.cluster.transport.backend import Unavailable
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text
from kairos.core.models import ModelTable

from tests.support.restored import restore_models
from tests.unit.control.actors import Actors, controller_on
from tests.unit.control.test_control_loop import rounds
from tests.unit.control.test_interrupted import restarted, started
from tests.unit.control.test_learner import Flaky

Actor = LearnerActor.__ray_metadata__.modified_class.__ray_actor_class__
BOOT = default_catalog_text()


def reordered(text: str) -> str:
    """`text`'s catalog, same version, its actions in the reverse order."""
    doc = yaml.safe_load(text)
    doc["actions"].reverse()
    return yaml.safe_dump(doc, sort_keys=False)


def versioned(text: str, version: str) -> str:
    doc = yaml.safe_load(text)
    doc["version"] = version
    return yaml.safe_dump(doc, sort_keys=False)


def row(compiled, action: str) -> int:
    """The model row of `action` on the first channel."""
    return compiled.action_index[action] * len(compiled.channel_names)


def accepted(compiled, action: str, n: float):
    """A shard's delta: `n` positives on `action`'s row."""
    table = ModelTable(compiled)
    table.positives[row(compiled, action)] += n
    return table.take_delta()


def positives_by_action(learner: Learner) -> dict[str, float]:
    c = learner.compiled
    return {a: float(learner.models.positives[row(c, a)]) for a in c.action_ids
            if learner.models.positives[row(c, a)]}


AP = reordered(BOOT)
FIRST = compiled_from_text(BOOT).action_ids[0]  # another action's row under AP
assert compiled_from_text(AP).version == compiled_from_text(BOOT).version
assert compiled_from_text(AP).action_ids[0] != FIRST


def test_a_posterior_saved_under_another_text_of_the_same_version_comes_back_in_its_layout():
    saving = Learner(compiled_from_text(BOOT), BOOT)
    saving.sync(saving.compiled.version, accepted(saving.compiled, FIRST, 50), -1)
    blob = save_models(saving)
    assert not restore_models(Learner(compiled_from_text(AP), AP), blob)  # not followed
    restarted_on_ap = Learner(compiled_from_text(AP), AP)
    assert restore_models(restarted_on_ap, blob, follow_catalog=True)
    assert restarted_on_ap.catalog_text == BOOT
    assert positives_by_action(restarted_on_ap) == {FIRST: 50}


def test_a_switch_to_another_text_under_the_running_version_moves_the_models():
    learner = Learner(compiled_from_text(BOOT), BOOT)
    learner.sync(learner.compiled.version, accepted(learner.compiled, FIRST, 50), -1)
    before = learner.version
    assert learner.switch(AP) > before
    assert learner.catalog_text == AP and learner.compiled.action_ids[0] != FIRST
    assert positives_by_action(learner) == {FIRST: 50}
    assert learner.switch(AP) == learner.version  # the same text again: nothing to do


def test_a_learner_ray_restarts_after_a_version_was_reused_runs_the_saved_text(tmp_path):
    """A(v) -> B -> C -> A'(v again, other text; put_catalog refuses this now, a store saved
    before did not): Ray constructs the learner with A's text again."""
    async def run():
        first = Actor(BOOT, str(tmp_path))
        for text in (versioned(BOOT, "B"), versioned(BOOT, "C"), AP):
            await first.switch(text)
        c = first.learner.compiled
        await first.sync(c.version, accepted(c, FIRST, 50), 0)
        await first.flush()
        again = Actor(BOOT, str(tmp_path))
        assert again.learner.catalog_text == AP
        assert positives_by_action(again.learner) == {FIRST: 50}
    asyncio.run(run())


def test_a_version_run_before_the_previous_one_is_refused_with_other_text(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        version = controller.catalog_version
        for v in ("B", "C"):
            await controller.put_catalog(versioned(BOOT, v))
        with pytest.raises(ValueError, match=f"catalog {version!r} ran before with other text"):
            await controller.put_catalog(AP)
        again = await restarted(backend, str(tmp_path), 2)  # remembered with the state
        with pytest.raises(ValueError, match=f"catalog {version!r} ran before with other text"):
            await again.put_catalog(AP)
        assert again.catalog_version == "C"
        assert await again.put_catalog(BOOT) == version  # its own text: fine
    asyncio.run(main())


def test_a_state_saved_before_versions_were_kept_still_refuses_the_previous_version(tmp_path):
    async def main():
        backend, controller = await started(str(tmp_path), 2)
        await controller.put_catalog(versioned(BOOT, "B"))
        store = open_store(str(tmp_path))
        state = msgpack.unpackb(store.get_meta(STATE_KEY), raw=False)
        del state["versions_run"]
        store.put_meta(STATE_KEY, msgpack.packb(state, use_bin_type=True))
        again = await restarted(backend, str(tmp_path), 2)
        with pytest.raises(ValueError, match="ran before with other text"):
            await again.put_catalog(AP)
        # and after the next switch, which makes B the previous one: the first is kept too
        await again.put_catalog(versioned(BOOT, "C"))
        with pytest.raises(ValueError, match="ran before with other text"):
            await again.put_catalog(AP)
        assert again.catalog_version == "C"
    asyncio.run(main())


def test_the_versions_kept_are_bounded_and_the_latest_run_stays():
    ran = VersionsRun()
    for n in range(VERSIONS_KEPT + 1):
        ran = ran.with_run(f"v{n}", f"text {n}")
    ran.check("v0", "other text")  # forgotten: the oldest
    with pytest.raises(ValueError, match="'v1' ran before"):
        ran.check("v1", "other text")
    ran = ran.with_run("v1", "text 1")  # ran again: now the most recent
    ran = ran.with_run("new", "text")
    with pytest.raises(ValueError, match="'v1' ran before"):
        ran.check("v1", "other text")
    assert len(ran.to_state()) == VERSIONS_KEPT


def test_a_learner_not_told_the_running_catalog_merges_nothing_until_the_control_loop_tells_it(
        tmp_path):
    """Ray restarted it, its saved posterior unreadable, on AP (another text under the running
    version) or on BOOT itself: the shards' deltas, laid out by BOOT, are refused (they keep
    them) and their watches wait, until a control round tells it; then they merge in BOOT's
    rows."""
    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path), 2)
        shards = compiled_from_text(BOOT)
        learner = backend.learner()  # as the shards call it
        for text in (AP, BOOT):
            backend.local_learner = Learner(compiled_from_text(text), text, unconfirmed=True)
            delta = accepted(shards, FIRST, 5)
            with pytest.raises(Unavailable):
                await learner.sync(shards.version, delta, -1)
            assert await learner.watch(shards.version, -1, timeout_s=0.05) is None
            assert (await learner.status())["unconfirmed"]
            await rounds(controller)
            assert backend.local_learner.catalog_text == BOOT
            assert not (await learner.status())["unconfirmed"]
            published = await learner.sync(shards.version, delta, -1)  # sent again
            assert positives_by_action(backend.local_learner) == {FIRST: 5}
            assert published.positives[row(shards, FIRST)] == 5
    asyncio.run(main())


def test_a_learner_ray_restarts_with_an_unreadable_posterior_waits_to_be_told(tmp_path):
    """The shards run BOOT; Ray constructs the learner on AP (same version), its saved
    posterior unreadable: a delta merged then would sit in another action's row once told."""
    async def main():
        shards = compiled_from_text(BOOT)
        for n, text in enumerate((AP, BOOT)):
            where = str(tmp_path / str(n))
            open_store(where).put_meta(STATE_KEY, b"\x92\x01")  # damaged
            actor = Actor(text, where)
            with pytest.raises(Unavailable):
                await actor.sync(shards.version, accepted(shards, FIRST, 7), -1)
            watch = asyncio.create_task(actor.watch(shards.version, -1, timeout_s=30))
            await asyncio.sleep(0)
            assert (await actor.status())["unconfirmed"] and not watch.done()
            await actor.switch(BOOT)  # the control loop's tell
            assert (await watch).catalog_version == shards.version  # woken, answered
            await actor.sync(shards.version, accepted(shards, FIRST, 7), -1)
            assert positives_by_action(actor.learner) == {FIRST: 7}
            again = Actor(AP, where)  # took up a posterior saved with its text
            assert not (await again.status())["unconfirmed"]
            assert again.learner.catalog_text == BOOT
    asyncio.run(main())


class OlderRelease(Learner):
    """A learner whose status gives no catalog digest, as an older release's did."""

    def status(self):
        return {k: v for k, v in super().status().items() if k != "catalog_digest"}


def test_a_learner_that_gives_no_digest_of_the_running_version_is_not_switched_each_round(
        tmp_path, caplog):
    async def main():
        backend = Actors()
        controller = await controller_on(backend, str(tmp_path), 2)
        c = compiled_from_text(controller.catalog_text)
        for learner in (Learner(c), OlderRelease(c, BOOT)):  # made without its text
            backend.local_learner = learner
            version = learner.version
            with caplog.at_level("WARNING", logger="kairos.controller"):
                await rounds(controller, 2)
            assert learner.version == version and learner.publishes == deque()
            assert not [r for r in caplog.records if "switching it" in r.getMessage()]
    asyncio.run(main())


def test_a_tell_the_store_does_not_save_leaves_the_learner_unconfirmed(tmp_path, monkeypatch):
    """The tell is undone (restarted, the learner would come back on its old text): so is
    what it confirmed, or the learner would merge the shards' deltas into the old text's rows."""
    flaky = Flaky(open_store(str(tmp_path)))
    flaky.down = False
    monkeypatch.setattr(learner_module, "open_store", lambda url: flaky)
    shards = compiled_from_text(BOOT)

    async def main():
        actor = Actor(AP, "x")  # nothing saved: it may not run the cluster's catalog
        flaky.down = True
        with pytest.raises(StoreUnavailable):
            await actor.switch(BOOT)
        assert actor.learner.catalog_text == AP and (await actor.status())["unconfirmed"]
        with pytest.raises(Unavailable):
            await actor.sync(shards.version, accepted(shards, FIRST, 5), -1)
    asyncio.run(main())
