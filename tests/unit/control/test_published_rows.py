"""Model sync by rows: a shard's delta carries the models it learnt in, the learner answers a
shard at a recent version with the models changed since, and adopting them replaces only
those; the same learning gives the same models as the whole-table exchange it replaced."""
from __future__ import annotations

import asyncio
import pickle
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
from bench.workload import yaml_doc, yaml_text
from kairos.cluster.control.learner import Learner
from kairos.cluster.control.posterior import PublishedRows, save_models
from kairos.cluster.shard import modelsync
from kairos.cluster.shard.modelsync import ModelSync
from kairos.cluster.transport.backend import Published
from kairos.core import reference
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text
from kairos.core.models import COUNTS, DeltaOrigin, ModelDelta, ModelTable

from tests.support.restored import restore_models



def catalog_text(posterior: str) -> str:
    # libyaml's loader and dumper where PyYAML has them: its own took a fifth of these tests'
    # time
    doc = yaml_doc(default_catalog_text())
    doc.setdefault("models", {})["posterior"] = posterior
    return yaml_text(doc)


def learn(table: ModelTable, examples) -> None:
    """Outcomes learnt as the kernel learns them (its twin), counted in their models."""
    mv = reference.ModelView(*table.kernel_arrays())
    learn_one = reference._learn_diagonal if mv.covariance is None else reference._learn_full
    for m, x, y, value in examples:
        assert learn_one(mv, m, x, y)
        table.positives[m] += y
        table.negatives[m] += 1.0 - y
        if value:
            table.value_count[m] += 1.0
            table.value_sum[m] += value
        table.inputs_added[:, 1] += (1.0, x[1], x[1] * x[1])


class Shard:
    """A shard's models and its side of model sync, by rows or (`whole`) as before: a dense
    delta whose sender takes no rows, answered with every model."""

    def __init__(self, name: str, compiled, whole: bool):
        self.name, self.compiled, self.whole = name, compiled, whole
        self.sync = ModelSync(name)
        self.by_rows = 0  # versions adopted as rows
        self.restart()

    def restart(self) -> None:
        """A rebuilt shard: the priors, a new incarnation, its unsent learning gone."""
        self.models = ModelTable(self.compiled)
        self.incarnation, self.sequence, self.outbox = uuid.uuid4().hex, 0, None

    def engine(self):
        return SimpleNamespace(compiled=self.compiled, models=self.models,
                               adopt_models=self.models.adopt)

    def take(self) -> ModelDelta | None:
        if self.outbox is not None:
            return self.outbox
        if self.whole:
            delta = self.models.take_delta()
            delta.takes_rows = False
        else:
            delta = self.models.take_synced(every_model=False)
        if not delta.learned():
            return None
        self.sequence += 1
        delta.origin = DeltaOrigin(self.name, self.incarnation, self.sequence)
        return delta

    def synced(self, learner: Learner, answer_lost: bool) -> None:
        delta = self.take()
        if delta is None:
            return self.watched(learner)
        delta.based_on = self.models.published_by  # as ModelSync sends it
        wire = pickle.loads(pickle.dumps(delta))  # as Ray carries it
        published = learner.sync(self.compiled.version, wire, self.models.version)
        self.outbox = delta if answer_lost else None
        if not answer_lost:
            self.adopted(published)

    def watched(self, learner: Learner) -> None:
        self.adopted(learner.published(self.models.version, not self.whole,
                                       self.models.published_by))

    def adopted(self, published: Published | None) -> None:
        if published is not None:
            self.sync.adopt(self.engine(), pickle.loads(pickle.dumps(published)))
            self.by_rows += getattr(published, "rows", None) is not None


def scenario(seed: int, compiled, n_models: int, d: int) -> list[tuple]:
    """A sequence of outcomes learnt, syncs (some whose answer is lost, so the delta goes
    again), watches, shard restarts, the learner's saves and restarts across three shards."""
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(80):
        kind = rng.choice(["learn", "learn", "sync", "lost", "watch", "restart", "save",
                           "learner"], p=[0.3, 0.2, 0.22, 0.08, 0.1, 0.04, 0.03, 0.03])
        shard = int(rng.integers(3))
        if kind == "learn":
            examples = []
            for _ in range(int(rng.integers(1, 4))):
                x = np.concatenate([[1.0], rng.normal(size=d - 1)])
                value = float(rng.integers(1, 50)) if rng.random() < 0.3 else 0.0
                examples.append((int(rng.integers(min(n_models, 6))), x,
                                 float(rng.random() < 0.4), value))
            steps.append((kind, shard, examples))
        else:
            steps.append((kind, shard, None))
    return steps


def played(compiled, text: str, steps, whole: bool, behind: bool
           ) -> tuple[Learner, list[Shard]]:
    """`behind`: a restarted learner's clock is behind the versions it published before, so
    it publishes again numbers it published with the merges since its last save (lost)."""
    learner = Learner(compiled, text)
    blob = save_models(learner)
    shards = [Shard(f"s{i}", compiled, whole) for i in range(3)]
    for kind, i, examples in steps:
        shard = shards[i]
        if kind == "learn":
            learn(shard.models, examples)
        elif kind in ("sync", "lost"):
            shard.synced(learner, answer_lost=kind == "lost")
        elif kind == "watch":
            shard.watched(learner)
        elif kind == "restart":
            shard.restart()
        elif kind == "save":
            blob = save_models(learner)
        else:  # the learner restarts on its last save, its clock behind or ahead
            restarted = Learner(compiled, text)
            restarted.models.version = learner.version + (-1000 if behind else 1000)
            assert restore_models(restarted, blob)
            learner = restarted
    for shard in shards + shards:  # an unsent delta, then what was learnt since, goes
        shard.synced(learner, answer_lost=False)
    for shard in shards:  # and every shard adopts the latest
        shard.watched(learner)
    return learner, shards


@pytest.mark.parametrize("behind", [False, True])
@pytest.mark.parametrize("posterior", ["full", "diagonal"])
@pytest.mark.parametrize("seed", range(12))
def test_rows_give_the_models_the_whole_table_gave(posterior, seed, behind):
    text = catalog_text(posterior)
    compiled = compiled_from_text(text)
    n_models = len(compiled.action_ids) * len(compiled.channel_names)
    steps = scenario(seed, compiled, n_models, compiled.n_predictors)
    by_rows, shards = played(compiled, text, steps, False, behind)
    whole, whole_shards = played(compiled, text, steps, True, behind)
    assert sum(s.by_rows for s in shards) > 0 == sum(s.by_rows for s in whole_shards)
    for name in COUNTS:  # sums of whole outcomes: exactly
        np.testing.assert_array_equal(getattr(by_rows.models, name),
                                      getattr(whole.models, name))
    # a restart behind republishes numbers: the whole table does not replace a version of
    # the same number, rows of another process do, so shards learn on other models meanwhile
    pairs = [] if behind else [(by_rows.models, whole.models)] + \
        [(s.models, w.models) for s, w in zip(shards, whole_shards)]
    for a, b in pairs:
        # the shard keeps a model it learnt in as it learnt it, where the whole table had it
        # solved again from the natural parameters: a difference of rounding only
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.precision, b.precision, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.inputs, b.inputs, rtol=1e-12)
    for shard in shards:  # every shard ends on the learner's models, by rows
        for name in ("mean", "precision", *COUNTS):
            np.testing.assert_array_equal(getattr(shard.models, name),
                                          getattr(by_rows.models, name))


def test_a_sync_carries_and_publishes_only_the_models_learnt_in():
    text = catalog_text("full")
    compiled = compiled_from_text(text)
    learner = Learner(compiled, text)
    a, b = Shard("a", compiled, False), Shard("b", compiled, False)
    a.watched(learner), b.watched(learner)  # both at the learner's version
    assert a.models.version == b.models.version == learner.version
    x = np.ones(compiled.n_predictors)
    learn(a.models, [(4, x, 1.0, 0.0)])
    delta = a.models.take_synced(every_model=False)
    dense = ModelTable(compiled).take_delta()
    assert delta.rows.tolist() == [4] and delta.positives.tolist() == [1.0]
    assert len(pickle.dumps(delta)) * 10 < len(pickle.dumps(dense))
    delta.origin, delta.based_on = DeltaOrigin("a", "one", 1), a.models.published_by
    published = learner.sync(compiled.version, delta, a.models.version)
    assert isinstance(published, PublishedRows) and published.rows.tolist() == [4]
    assert published.mean.shape == (1, compiled.n_predictors)
    a.sync.adopt(a.engine(), published)
    watched = learner.published(b.models.version, True, b.models.published_by)
    assert watched.rows.tolist() == [4]
    b.sync.adopt(b.engine(), watched)
    for shard in (a, b):
        assert shard.models.version == learner.version
        np.testing.assert_array_equal(shard.models.mean, learner.models.mean)
        np.testing.assert_allclose(shard.models.covariance[4],
                                      np.linalg.inv(learner.models.precision[4]))
    # a shard that moved meanwhile (rebuilt at the priors) does not take rows of another base
    b.restart()
    b.sync.adopt(b.engine(), watched)
    assert b.models.version == 0


def test_a_caller_too_far_behind_or_new_gets_every_model():
    compiled = compiled_from_text(catalog_text("diagonal"))
    learner = Learner(compiled)
    first = learner.version
    x = np.ones(compiled.n_predictors)
    for i in range(3):
        table = ModelTable(compiled)
        learn(table, [(i, x, 1.0, 0.0)])
        learner.sync(compiled.version, table.take_delta(every_model=False), -1)
    ours = learner.incarnation
    assert learner.published(first + 1, True, ours).rows.tolist() == [1, 2]
    assert learner.published(0, True, ours).rows is None  # never published: all of it
    assert learner.published(first + 1, takes_rows=False).__class__ is Published
    # a version of another learner process (one before a restart): all of it, also at the
    # same number
    assert learner.published(first + 1, True, "another").rows is None
    assert learner.published(learner.version, True, "another").rows is None
    assert learner.published(learner.version, True, ours) is None
    learner.switch(catalog_text("full"))  # another table: what changed is not known
    assert learner.published(learner.version - 1, True, ours).rows is None


def test_a_delta_of_rows_is_refused_by_an_older_learner_and_goes_again_dense():
    """An older learner reads a delta's per-model arrays under their names: a delta of rows
    keeps them under another, so that learner raises instead of adding them to the first
    models, and the shard sends it again with a row per model, as that learner takes it."""
    compiled = compiled_from_text(catalog_text("diagonal"))
    table = ModelTable(compiled)
    learn(table, [(3, np.ones(compiled.n_predictors), 1.0, 0.0)])
    delta = table.take_synced(every_model=False)
    state = pickle.loads(pickle.dumps(delta)).__getstate__()
    assert "positives" not in state and "precision_mean" not in state
    old = ModelDelta.__new__(ModelDelta)  # an older shard's dense delta, as it unpickles here
    old.__setstate__({name: getattr(delta.dense(), name) for name in
                      ("precision_mean", "precision", *COUNTS, "inputs", "origin")})
    assert old.rows is None and not old.takes_rows and old.positives[3] == 1
    learner = Learner(compiled)
    assert learner.sync(compiled.version, old, -1).__class__ is Published  # it cannot take rows

    class Older:
        def __init__(self):
            self.sent = []

        async def sync(self, catalog_version, sent, known):
            self.sent.append(sent)
            if sent.rows is not None:
                raise AttributeError("'ModelDelta' object has no attribute 'positives'")
            return learner.sync(catalog_version, sent, known)

    older, sync = Older(), ModelSync("s0")
    engine = SimpleNamespace(compiled=compiled, models=table, adopt_models=table.adopt)
    learn(table, [(5, np.ones(compiled.n_predictors), 0.0, 0.0)])

    async def main():
        await sync.step(lambda: engine, lambda: older, 0.01)
        await sync.step(lambda: engine, lambda: older, 0.01)

    asyncio.run(main())
    assert [s.rows is None for s in older.sent] == [False, True]
    assert older.sent[1].origin == older.sent[0].origin and older.sent[1].takes_rows
    assert learner.models.negatives[5] == 1 and table.version == learner.version


def test_a_learner_restarted_behind_its_versions_sends_no_rows_onto_its_former_ones():
    """Restarted on its last save with its clock behind, the learner publishes again numbers
    it published with the merges it lost: a shard at one of them gets every model, not the
    rows changed since the number (which would leave the lost merges in it for good)."""
    text = catalog_text("diagonal")
    compiled = compiled_from_text(text)
    x = np.ones(compiled.n_predictors)
    before = Learner(compiled, text)
    a, b = Shard("a", compiled, False), Shard("b", compiled, False)
    a.watched(before), b.watched(before)
    blob = save_models(before)
    learn(b.models, [(1, x, 1.0, 0.0)])
    b.synced(before, False)
    learn(a.models, [(2, x, 1.0, 0.0)])
    a.synced(before, False)  # both merges lost with the process
    learner = Learner(compiled, text)
    learner.models.version = before.version - 1000
    assert restore_models(learner, blob) and learner.incarnation != before.incarnation
    learn(b.models, [(3, x, 0.0, 0.0)])
    b.synced(learner, False)
    assert learner.version == a.models.version  # the number a holds, with other models
    a.watched(learner)
    learn(b.models, [(4, x, 1.0, 0.0)])
    b.synced(learner, False)
    a.watched(learner), b.watched(learner)
    for shard in (a, b):
        assert shard.models.published_by == learner.incarnation
        np.testing.assert_array_equal(shard.models.mean, learner.models.mean)
        np.testing.assert_array_equal(shard.models.positives, learner.models.positives)


def test_the_changes_kept_are_the_models_merged_at_most_a_row_per_model_in_all():
    """An older shard's dense delta of one outcome is recorded as its one model; dense deltas
    of every model (a resend after an error, deltas carried over a switch) leave none, so a
    caller before them gets the whole table at once, and what is kept stays a table's rows."""
    compiled = compiled_from_text(catalog_text("diagonal"))
    n_models = len(compiled.action_ids) * len(compiled.channel_names)
    learner, x = Learner(compiled), np.ones(compiled.n_predictors)
    first = learner.version
    table = ModelTable(compiled)
    learn(table, [(3, x, 1.0, 0.0)])
    learner.sync(compiled.version, table.take_delta(), -1)  # dense: a row per model
    assert learner.published(first, True, learner.incarnation).rows.tolist() == [3]
    assert learner.changed.held == 1
    for _ in range(40):
        table = ModelTable(compiled)
        learn(table, [(m, x, 1.0, 0.0) for m in range(n_models)])
        learner.sync(compiled.version, table.take_delta(), -1)
        assert learner.changed.held <= n_models
    assert learner.published(first, True, learner.incarnation).rows is None
    assert learner.published(learner.version - 1, True, learner.incarnation).rows.size == \
        n_models


def test_a_shard_that_drops_a_delta_takes_the_whole_table_at_its_next_answer():
    """The learning of a delta given up on does not stay in the shard's models: its next
    watch is answered at once with every model, also at the version it has."""
    compiled = compiled_from_text(catalog_text("diagonal"))
    learner, table = Learner(compiled), ModelTable(compiled)
    engine = SimpleNamespace(compiled=compiled, models=table, adopt_models=table.adopt)

    class Failing:
        async def sync(self, catalog_version, sent, known):
            raise RuntimeError("a learner bug")

        async def watch(self, catalog_version, known, timeout_s=0.05, **rows):
            return await learner.watch(catalog_version, known, 0.05, **rows)

    sync, failing = ModelSync("s0"), Failing()

    async def step():
        await sync.step(lambda: engine, lambda: failing, 0.01)
        await asyncio.sleep(0.1)  # the watch answers, or waits out its 0.05 s

    async def main():
        await step()  # nothing learnt: watched, the learner's version adopted
        assert table.version == learner.version and table.published_by == learner.incarnation
        learn(table, [(3, np.ones(compiled.n_predictors), 1.0, 0.0)])
        for _ in range(modelsync.DELTA_TRIES):
            await step()
        assert sync.dropped == 1 and table.positives[3] == 1
        await step()  # watched again: every model, at the version it has
        assert table.version == learner.version and table.positives[3] == 0
        np.testing.assert_array_equal(table.mean, learner.models.mean)

    asyncio.run(main())


def test_a_watch_answers_rows_only_to_a_caller_that_takes_them():
    """An older shard's watch (no rows arguments) gets a Published, which it can unpickle."""
    compiled = compiled_from_text(catalog_text("diagonal"))
    learner = Learner(compiled)
    older = asyncio.run(learner.watch(compiled.version, -1, 0.05))
    newer = asyncio.run(learner.watch(compiled.version, -1, 0.05, True, None))
    assert older.__class__ is Published and isinstance(newer, PublishedRows)
    assert newer.rows is None and newer.incarnation == learner.incarnation
