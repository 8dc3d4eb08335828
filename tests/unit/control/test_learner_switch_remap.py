"""A catalog switch's remap of the models (control/switching.py `remapped`, mostly inverting
precisions: 0.6-1.9 s at 4,500 models) runs on a thread: the learner's event loop goes on
answering every shard's watch and `status` meanwhile, syncs wait for the switch as they wait
for its save, and the learner takes up the same tables its synchronous `switch` makes."""
from __future__ import annotations

import asyncio
import copy
import threading

import numpy as np
import pytest
from kairos.cluster.control import learner as learner_module
from kairos.cluster.storage.providers import open_store
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text, default_compiled
from kairos.core.models import COUNTS, DELTA_STATS, ModelRemap

from .test_learner import Actor, catalog, learned, sent, told, without_first_action
from .test_learner_saves import began

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


@pytest.fixture
def slow(tmp_path, monkeypatch) -> SlowRemap:
    store = open_store(str(tmp_path))
    told(store)
    monkeypatch.setattr(learner_module, "open_store", lambda url: store)
    monkeypatch.setattr(learner_module, "LEARNER_SAVE_S", 60.0)  # no periodic save meanwhile
    slow, table = SlowRemap(), ModelRemap.table

    def held_table(remap, old):
        new = table(remap, old)  # then held: what the loop does meanwhile, it did after this
        if slow.holding:
            slow.holding = False
            slow.started.set()
            slow.let_go.append(slow.go.wait(HELD_S))
        return new
    monkeypatch.setattr(ModelRemap, "table", held_table)
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


def same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def test_a_switch_remapped_on_a_thread_takes_up_the_tables_the_loop_made(slow):
    """The learner as Learner.switch leaves it, the same input switched on the loop: through
    earlier catalogs kept, an action that comes back, and learning on each catalog."""
    c = default_compiled()
    actor = Actor(default_catalog_text(), "x")
    text_b, removed = without_first_action("B")
    web = c.channel_index["web"]
    row = c.model_index(c.action_index[removed], web)

    async def main():
        await actor.sync(c.version, sent(learned(c, row, 7) + learned(c, row + 1, 2), "a", 1),
                         -1)
        await actor.switch(text_b)  # takes the action out
        b = actor.learner.compiled
        await actor.sync(b.version, sent(learned(b, b.model_index(0, web), 1), "a", 2), -1)
        on_loop = copy.deepcopy(actor.learner)
        on_loop.switch(catalog("C"))  # the action comes back
        await actor.switch(catalog("C"))
        return on_loop
    on_loop = asyncio.run(main())
    assert slow.let_go == []  # nothing held here
    back = actor.learner.compiled
    assert actor.learner.models.positives[back.model_index(back.action_index[removed], web)] \
        == 7
    state, expected = switched_state(actor.learner), switched_state(on_loop)
    assert list(state) == list(expected)
    assert [key for key in state if not same(state[key], expected[key])] == []


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
