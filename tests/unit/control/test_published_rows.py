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
import yaml

from kairos.cluster.control.learner import Learner
from kairos.cluster.control.posterior import PublishedRows, restore_models, save_models
from kairos.cluster.shard.modelsync import ModelSync
from kairos.cluster.transport.backend import Published
from kairos.core import reference
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text
from kairos.core.models import COUNTS, DeltaOrigin, ModelDelta, ModelTable


def catalog_text(posterior: str) -> str:
    doc = yaml.safe_load(default_catalog_text())
    doc.setdefault("models", {})["posterior"] = posterior
    return yaml.safe_dump(doc, sort_keys=False)


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
        wire = pickle.loads(pickle.dumps(delta))  # as Ray carries it
        published = learner.sync(self.compiled.version, wire, self.models.version)
        self.outbox = delta if answer_lost else None
        if not answer_lost:
            self.adopted(published)

    def watched(self, learner: Learner) -> None:
        self.adopted(learner.published(self.models.version, takes_rows=not self.whole))

    def adopted(self, published: Published | None) -> None:
        if published is not None:
            self.sync.adopt(self.engine(), pickle.loads(pickle.dumps(published)))
            self.by_rows += getattr(published, "rows", None) is not None


def scenario(seed: int, compiled, n_models: int, d: int) -> list[tuple]:
    """A sequence of outcomes learnt, syncs (some whose answer is lost, so the delta goes
    again), watches, shard restarts and learner restarts across three shards."""
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(80):
        kind = rng.choice(["learn", "learn", "sync", "lost", "watch", "restart", "learner"],
                          p=[0.3, 0.2, 0.25, 0.08, 0.1, 0.04, 0.03])
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


def played(compiled, text: str, steps, whole: bool) -> tuple[Learner, list[Shard]]:
    learner = Learner(compiled, text)
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
        else:  # the learner restarts on its saved posterior
            blob = save_models(learner)
            learner = Learner(compiled, text)
            assert restore_models(learner, blob)
    for shard in shards + shards:  # an unsent delta, then what was learnt since, goes
        shard.synced(learner, answer_lost=False)
    for shard in shards:  # and every shard adopts the latest
        shard.watched(learner)
    return learner, shards


@pytest.mark.parametrize("posterior", ["full", "diagonal"])
@pytest.mark.parametrize("seed", range(12))
def test_rows_give_the_models_the_whole_table_gave(posterior, seed):
    text = catalog_text(posterior)
    compiled = compiled_from_text(text)
    n_models = len(compiled.action_ids) * len(compiled.channel_names)
    steps = scenario(seed, compiled, n_models, compiled.n_predictors)
    by_rows, shards = played(compiled, text, steps, whole=False)
    whole, whole_shards = played(compiled, text, steps, whole=True)
    assert sum(s.by_rows for s in shards) > 0 == sum(s.by_rows for s in whole_shards)
    for name in COUNTS:  # sums of whole outcomes: exactly
        np.testing.assert_array_equal(getattr(by_rows.models, name),
                                      getattr(whole.models, name))
    for a, b in [(by_rows.models, whole.models)] + [(s.models, w.models)
                                                     for s, w in zip(shards, whole_shards)]:
        # the shard keeps a model it learnt in as it learnt it, where the whole table had it
        # solved again from the natural parameters: a difference of rounding only
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.precision, b.precision, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.inputs, b.inputs, rtol=1e-12)
    for shard in shards:  # every shard ends on the learner's models, by rows
        np.testing.assert_array_equal(shard.models.mean, by_rows.models.mean)
        np.testing.assert_array_equal(shard.models.precision, by_rows.models.precision)


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
    delta.origin = DeltaOrigin("a", "one", 1)
    published = learner.sync(compiled.version, delta, a.models.version)
    assert isinstance(published, PublishedRows) and published.rows.tolist() == [4]
    assert published.mean.shape == (1, compiled.n_predictors)
    a.sync.adopt(a.engine(), published)
    watched = learner.published(b.models.version, takes_rows=True)
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
    assert learner.published(first + 1, takes_rows=True).rows.tolist() == [1, 2]
    assert learner.published(0, takes_rows=True).rows is None  # never published: all of it
    assert learner.published(first + 1, takes_rows=False).__class__ is Published
    learner.switch(catalog_text("full"))  # another table: what changed is not known
    assert learner.published(learner.version - 1, takes_rows=True).rows is None


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
