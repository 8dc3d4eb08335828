"""A catalog switch's remap of the models (control/switching.py `remapped`, mostly inverting
precisions: 0.6-1.9 s at 4,500 models) runs on a thread: the learner's event loop goes on
answering every shard's watch and `status` meanwhile, syncs wait for the switch as they wait
for its save, and the learner takes up the same tables its synchronous `switch` makes."""
from __future__ import annotations

import asyncio
import copy
import threading
import time

import numpy as np
import pytest

from bench.workload import yaml_text
from kairos.cluster.control import learner as learner_module
from kairos.cluster.control.learner import RAN_KEPT, REMAPS_KEPT, STATE_KEY, Learner, save_models
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.store import StoreUnavailable
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text, default_compiled
from kairos.core.models import COUNTS, DELTA_STATS, ModelRemap

from .test_learner import (Actor, catalog, catalog_doc, learned, sent, told,
                           without_first_action)
from .test_learner_saves import began
from .test_learner_switch_saves import Held, held, held_switch  # noqa: F401 (a fixture)

pytestmark = pytest.mark.unit

# how long a held remap waits to be let go: one made on the event loop holds the loop, so the
# test cannot let it go, and it ends when this passes (a failure, not a hang)
HELD_S = 2.0


class SlowRemap:
    """ModelRemap.table that, once `holding`, waits until the test lets it go (`go`) before it
    answers, noting whether it was let go or HELD_S passed first."""

    def __init__(self) -> None:
        self.holding = False
        self.started, self.go = threading.Event(), threading.Event()
        self.let_go: list[bool] = []


def held_remaps(monkeypatch) -> SlowRemap:
    """ModelRemap.table held once `holding`, until the test lets it go (or HELD_S passes)."""
    slow, table = SlowRemap(), ModelRemap.table

    def held_table(remap, old):
        new = table(remap, old)  # then held: what the loop does meanwhile, it did after this
        if slow.holding:
            slow.holding = False
            slow.started.set()
            slow.let_go.append(slow.go.wait(HELD_S))
        return new
    monkeypatch.setattr(ModelRemap, "table", held_table)
    return slow


@pytest.fixture
def slow(tmp_path, monkeypatch) -> SlowRemap:
    store = open_store(str(tmp_path))
    told(store)
    monkeypatch.setattr(learner_module, "open_store", lambda url: store)
    monkeypatch.setattr(learner_module, "LEARNER_SAVE_S", 60.0)  # no periodic save meanwhile
    slow = held_remaps(monkeypatch)
    for version in ("B", "C"):
        compiled_from_text(catalog(version))  # kept: the switches compile nothing
    return slow


def test_the_loop_answers_status_and_watches_while_a_switch_remaps(slow):
    c = default_compiled()
    actor = Actor(default_catalog_text(), "x")

    async def main():
        loop = asyncio.get_running_loop()
        before = actor.learner.version
        slow.holding = True
        switching = loop.create_task(actor.switch(catalog("B")))
        await began(slow.started)
        status = await actor.status()
        behind = await actor.watch(c.version, -1, timeout_s=5)  # answered at once
        current = await actor.watch(c.version, before, timeout_s=0.01)  # waits, times out
        # a shard ahead (a learner restarted with its clock behind): versions go on past it
        ahead = await actor.watch(c.version, before + 100, timeout_s=5)
        syncing = loop.create_task(actor.sync(c.version, learned(c, 3, 1), -1))
        await asyncio.sleep(0.05)
        synced_early = syncing.done()
        slow.go.set()
        return before, status, behind, current, ahead, synced_early, await switching, \
            await syncing
    before, status, behind, current, ahead, synced_early, switched, synced = asyncio.run(main())
    assert slow.let_go == [True]  # all of that was answered while the remap waited
    # answered with the catalog and models switched from: the switch is not taken up yet
    assert (status["catalog_version"], status["model_version"]) == (c.version, before)
    assert (behind.catalog_version, behind.version, current) == (c.version, before, None)
    assert (ahead.catalog_version, ahead.version) == (c.version, before + 101)
    assert switched == before + 102  # above the version a watch moved on meanwhile
    # the sync waited for the switch (its remap read the tables it would merge into), then
    # merged into the switched tables
    assert not synced_early
    assert (synced.catalog_version, synced.version, synced.positives[3]) == \
        ("B", switched + 1, 1)
    assert actor.learner.models.positives[3] == 1


def switched_state(learner) -> dict:
    """What a switch sets, but the time of its publish."""
    m = learner.models
    return {"version": learner.version, "catalog": learner.compiled.version,
            "text": learner.catalog_text, "unconfirmed": learner.unconfirmed,
            "ran": list(learner.ran), "earlier": list(learner._earlier),
            "earlier.compiled": [(old.version, list(old.action_index), list(old.channel_index))
                                 for old in learner._earlier.values()],
            "sequences": dict(learner.sequences), "merged": learner.merged,
            "changed": changed_state(learner),
            "publishes": [v for v, _ in learner.publishes], "refused": m.refused,
            **{name: getattr(m, name) for name in ("mean", "precision", "covariance",
                                                   "inputs", "inputs_added", "input_clips",
                                                   *COUNTS)},
            **{f"taken.{name}": getattr(m._taken, name) for name in DELTA_STATS},
            **{f"remap.{old}": (r.rows, r.cols, r.new.version, r.new_actions)
               for old, r in learner._remaps.items()},
            "taken_out": (learner._taken_out.switches,
                          {key: (n, saved.predictors, saved.mean, saved.spread, saved.counts)
                           for key, (n, saved) in learner._taken_out._models.items()})}


def changed_state(learner) -> tuple:
    """What the learner's ChangedRows holds, and whether of the running tables."""
    changed = learner.changed
    return (changed._table is learner.models, changed._from, changed._to, changed.held,
            [(version, rows.tolist()) for version, rows in changed._merges])


def differing(learner, expected) -> list[str]:
    """What of a switch's state (`switched_state`) differs between two learners."""
    state, wanted = switched_state(learner), switched_state(expected)
    assert list(state) == list(wanted)
    return [key for key in state if not same(state[key], wanted[key])]


def same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def reference_switch(self, catalog_text: str) -> int:
    """da64c8d's Learner.switch, the last made on the loop, as it was but for `self`: what the
    switches remapped on a thread must leave."""
    if catalog_text == self.catalog_text:
        self.confirm()
        return self.models.version
    new = compiled_from_text(catalog_text)
    self._earlier.pop(new.version, None)
    if new.version != self.compiled.version:
        self._earlier[self.compiled.version] = self.compiled
    while len(self._earlier) > REMAPS_KEPT:
        del self._earlier[next(iter(self._earlier))]
    self._remaps = {old: ModelRemap(compiled, new) for old, compiled in self._earlier.items()}
    version = self.models.version
    remap = self._remaps.get(self.compiled.version) or ModelRemap(self.compiled, new)
    self._taken_out = self._taken_out.switched(self.models, self.compiled, remap)
    self.models = remap.table(self.models)
    self._taken_out.bring_back(self.models, new, remap)
    self.models.version = version + 1
    self.compiled, self.catalog_text, self.unconfirmed = new, catalog_text, False
    self.ran.pop(new.version, None)
    self.ran[new.version] = None
    while len(self.ran) > RAN_KEPT:
        del self.ran[next(iter(self.ran))]
    self.publishes.append((self.models.version, time.time()))
    self.announce()
    return self.models.version


def copied(learner: Learner) -> Learner:
    """A deep copy of `learner` that shares its compiled catalogs: nothing changes them after
    compilation but a string table that no switch touches (core/compiler.py), and copied they
    took half the time of a test that copies the learner at each switch."""
    catalogs = [learner.compiled, *learner._earlier.values(),
                *(remap.new for remap in learner._remaps.values())]
    return copy.deepcopy(learner, {id(c): c for c in catalogs})


def retexted(version: str) -> str:
    """The default catalog's text under `version`, named otherwise: another text, same
    version."""
    doc = catalog_doc(version)
    doc["name"] = f"{doc['name']} retexted"
    return yaml_text(doc)


def test_switches_remapped_on_a_thread_leave_the_learner_as_the_loop_did(slow):
    """Each switch against the last one made on the loop, from the same learner, with learning
    on each catalog: an action taken out and brought back, a text retexted under its version,
    a catalog run again (A, B, A), more than REMAPS_KEPT earlier catalogs; and what it saved."""
    c = default_compiled()
    actor = Actor(default_catalog_text(), "x")
    text_b, removed = without_first_action("B")
    texts = [text_b, catalog("C"), catalog("D"), retexted("D"), text_b, catalog("E"),
             catalog("F"), catalog("G"), default_catalog_text(), catalog("C")]
    for text in texts:
        compiled_from_text(text)  # kept: the switches compile nothing
    web = c.channel_index["web"]
    row = c.model_index(c.action_index[removed], web)

    async def main():
        await actor.sync(c.version, sent(learned(c, row, 7), "a", 1), -1)
        for sequence, text in enumerate(texts, 2):
            on_loop = copied(actor.learner)
            reference_switch(on_loop, text)
            await actor.switch(text)
            assert differing(actor.learner, on_loop) == [], text
            assert actor.store.get_meta(STATE_KEY) == save_models(on_loop)
            now = actor.learner.compiled
            await actor.sync(now.version, sent(learned(now, now.model_index(1, web), 1), "a",
                                               sequence), -1)
        return actor.learner.compiled
    back = asyncio.run(main())
    assert slow.let_go == []  # nothing held here
    # the action came back with what it learned, over all those switches
    assert actor.learner.models.positives[back.model_index(back.action_index[removed], web)] \
        == 7


def test_a_failed_switch_puts_back_what_its_remap_read(slow, held):  # noqa: F811
    """The learner is kept for a put_back after the remap (a confirm() may come meanwhile):
    what the remap changed in place would stay so."""
    c = default_compiled()
    actor = Actor(default_catalog_text(), "x")

    async def main():
        await actor.sync(c.version, sent(learned(c, 3, 1), "a", 1), -1)
        await actor.switch(catalog("B"))  # the default catalog is an earlier one now
        before = copy.deepcopy(actor.learner)
        held.fails = StoreUnavailable("connection refused")
        switching = await held_switch(actor, held, "C")
        held.go.set()
        with pytest.raises(StoreUnavailable):
            await switching
        return before
    before = asyncio.run(main())
    assert held.let_go == [True]
    assert differing(actor.learner, before) == []


def test_a_learner_confirmed_during_a_remap_stays_so_when_the_switch_is_put_back(
        tmp_path, monkeypatch, slow, held):  # noqa: F811 (the fixture)
    """The controller said its text while the switch remapped (`_ask_controller`): that holds
    whether the switch is saved or not."""
    fresh = Held(open_store(str(tmp_path / "fresh")))  # no posterior saved with its text
    monkeypatch.setattr(learner_module, "open_store", lambda url: fresh)
    actor = Actor(default_catalog_text(), "x")
    assert actor.learner.unconfirmed

    async def main():
        slow.holding = True
        fresh.holding, fresh.fails = True, StoreUnavailable("connection refused")
        switching = asyncio.get_running_loop().create_task(actor.switch(catalog("B")))
        await began(slow.started)
        actor.learner.confirm()
        slow.go.set()
        await began(fresh.started)
        fresh.go.set()
        with pytest.raises(StoreUnavailable):
            await switching
    asyncio.run(main())
    assert slow.let_go == [True] and fresh.let_go == [True]
    assert actor.learner.compiled.version == default_compiled().version
    assert not actor.learner.unconfirmed


@pytest.mark.parametrize("made_of", ["other tables", "tables merged into", "another text"])
def test_a_remap_is_taken_up_only_by_the_tables_and_for_the_text_it_was_made_of(made_of):
    """Nothing changes the tables while they are remapped on a thread (learner.py
    `LearnerActor._switched`); should something replace them or merge into them, or the text
    differ, the switch raises rather than lose it."""
    c = default_compiled()
    learner = Learner(c, default_catalog_text())
    moved = learner.remapped(catalog("B"))
    if made_of == "other tables":
        learner.models = copy.deepcopy(learner.models)
    elif made_of == "tables merged into":  # in place: the same table object
        learner.sync(c.version, learned(c, 3, 1), -1)
    before = switched_state(learner)
    with pytest.raises(RuntimeError):
        learner.switch(catalog("C") if made_of == "another text" else catalog("B"), moved)
    state = switched_state(learner)
    assert [key for key in state if not same(state[key], before[key])] == []


def test_a_merge_during_the_remap_fails_the_switch_rather_than_be_lost(slow):
    """A merge changes the tables in place, so they are still the object remapped: taken up,
    the switch dropped the merge. The actor's syncs wait for the switch (`Switches.passed`) and
    cannot reach the tables meanwhile, so the merge here calls the Learner's own sync, as a
    path that skipped that wait would."""
    c = default_compiled()
    actor = Actor(default_catalog_text(), "x")

    async def main():
        slow.holding = True
        switching = asyncio.get_running_loop().create_task(actor.switch(catalog("B")))
        await began(slow.started)
        actor.learner.sync(c.version, learned(c, 3, 1), -1)
        merged = copy.deepcopy(actor.learner)
        slow.go.set()
        with pytest.raises(RuntimeError):
            await switching
        return merged
    merged = asyncio.run(main())
    assert slow.let_go == [True]
    assert differing(actor.learner, merged) == []
    assert (actor.learner.compiled.version, actor.learner.models.positives[3]) == (c.version, 1)
    assert Actor(default_catalog_text(), "x").learner.compiled.version == c.version  # unsaved


def test_a_switch_whose_caller_gave_up_during_its_remap_is_still_taken_up_and_saved(slow):
    """Its remap goes on on the thread: the switch is taken up and saved, and the syncs that
    waited merge into it."""
    c = default_compiled()
    actor = Actor(default_catalog_text(), "x")

    async def main():
        loop = asyncio.get_running_loop()
        slow.holding = True
        switching = loop.create_task(actor.switch(catalog("B")))
        await began(slow.started)
        switching.cancel()
        syncing = loop.create_task(actor.sync(c.version, learned(c, 3, 1), -1))
        await asyncio.sleep(0.05)
        slow.go.set()
        with pytest.raises(asyncio.CancelledError):
            await switching
        return await syncing
    answer = asyncio.run(main())
    assert slow.let_go == [True]
    assert (answer.catalog_version, answer.positives[3]) == ("B", 1)
    assert Actor(default_catalog_text(), "x").learner.compiled.version == "B"  # saved
