"""Property: no learning real outcomes make is refused as unsound (core/models.py
`sound_rows`: counts or a precision's diagonal taken back, a merged precision matrix not
positive definite).

Shards on the NumPy twin (the reference kernel) decide and learn from outcomes (labels and
conversions' values, with a decision or from the profile, loyalty balances out to their
field's bounds), hand their learning over at journal sync points (`take_synced`: the
boundaries it subtracts) and send it to a Learner, later or sooner; the learner merges it
(ModelTable.merge) and each shard adopts the answer, merging back what it had not sent. The
catalog switches meanwhile between a full and a diagonal posterior, each with predictors the
other lacks, so deltas in flight are remapped. At the end every label and value the kernels
learnt is the learner's: no row was refused, at the learner or in an adopt.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.workload import T0, random_context, random_event
from kairos.cluster.control.learner import Learner
from kairos.cluster.shard.modelsync import ModelSync
from kairos.core import kernel
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text
from kairos.core.engine import DecisionEngine
from kairos.core.models import COUNTS, DeltaOrigin, ModelRemap, sound_rows


def variant(version: str, posterior: str, dropped: str) -> str:
    doc = yaml.safe_load(default_catalog_text())
    doc["version"] = version
    doc["models"]["posterior"] = posterior
    doc["models"]["predictors"] = [p for p in doc["models"]["predictors"]
                                   if p["name"] != dropped]
    return yaml.safe_dump(doc, sort_keys=False)


# switched to in turn: full, diagonal, full again, each a predictor short of another
TEXTS = [variant("full-1", "full", "views_7d"), variant("diagonal", "diagonal", "orders"),
         variant("full-2", "full", "complaints_30d")]
COMPILED = [compiled_from_text(text) for text in TEXTS]
SHARDS, CUSTOMERS = 2, 4
OUTCOMES = ["accept", "reject", "convert", "impression"]
BALANCES = st.one_of(st.integers(0, 5000), st.sampled_from([-10**12, -10**9, 10**9, 10**12]))

shard = st.integers(0, SHARDS - 1)
customer = st.integers(0, CUSTOMERS - 1)
learning = [
    st.tuples(st.just("decided"), shard, customer, st.integers(0, 2**32),
              st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=3), st.floats(0.0, 1e4)),
    st.tuples(st.just("offline"), shard, customer, st.integers(0, 2**32), st.integers(1, 8)),
    st.tuples(st.just("take"), shard, st.booleans(), st.booleans(), st.booleans()),
]
steps = st.lists(st.one_of(
    *learning, *learning,  # twice as likely as the rest
    st.tuples(st.just("event"), shard, customer, st.integers(0, 2**32)),
    st.tuples(st.just("balance"), shard, customer, BALANCES),
    st.tuples(st.just("journal"), shard, st.booleans()),
    st.tuples(st.just("send"), shard),
    st.tuples(st.just("switch"), st.integers(0, 3)),  # one in four switches
), min_size=20, max_size=80)


class Shard:
    """A shard's engine and the learning it took and has not sent yet."""

    def __init__(self, compiled, index: int):
        self.name, self.index = f"kairos-shard-{index:04d}", index
        self.engine = DecisionEngine(compiled, seed=index)
        self.outbox: list[tuple[str, object, int]] = []
        self.sequence = 0
        self.taught = np.zeros(len(COUNTS))  # what its kernel learnt, summed
        self.refused_in_adopt = 0

    def record(self, outcomes: list[tuple]) -> None:
        before = self.counts()
        self.engine.record_outcomes(outcomes)
        self.taught += self.counts() - before
        self.engine.models.written()

    def counts(self) -> np.ndarray:
        return np.array([getattr(self.engine.models, name).sum() for name in COUNTS])

    def take(self, journaled: bool, idle: bool) -> None:
        """ModelSync's take: it waits for a journal sync (if one comes), then takes what the
        syncs covered."""
        models = self.engine.models
        models.when_synced(lambda: None)  # someone waits: the next sync notes a boundary
        if journaled:
            models.sync_started()
            models.sync_finished(True, idle)
        delta = models.take_synced(every_model=False)
        if delta is not None and delta.learned():
            self.sequence += 1
            delta.origin = DeltaOrigin(self.name, "incarnation", self.sequence)
            delta.based_on = models.published_by
            self.outbox.append((self.engine.compiled.version, delta, models.version))

    def send(self, learner: Learner) -> None:
        if not self.outbox:
            return
        published = learner.sync(*self.outbox.pop(0))
        if published is not None and ModelSync._wanted(self.engine, published):
            refused = self.engine.models.refused
            self.engine.adopt_models(published)
            self.refused_in_adopt += self.engine.models.refused - refused

    def switch(self, compiled) -> None:
        old = self.engine
        self.engine = DecisionEngine(compiled, seed=self.index)
        self.engine.use_models(ModelRemap(old.compiled, compiled).table(old.models))


def offered(compiled, rng: random.Random) -> tuple[str, str]:
    a, ch = rng.choice(list(zip(*np.nonzero(compiled.offered))))
    return compiled.action_ids[a], compiled.channel_names[ch]


def run(learner: Learner, shards: list[Shard], step: tuple, at: list[int]) -> None:
    kind, *args = step
    if kind == "switch":
        if args[0] == 0 and at[0] + 1 < len(TEXTS):
            at[0] += 1
            learner.switch(TEXTS[at[0]])
            for s in shards:
                s.switch(COMPILED[at[0]])
    elif kind == "journal":  # a journal sync: `idle`, nothing written since it started
        shards[args[0]].engine.models.sync_started()
        shards[args[0]].engine.models.sync_finished(True, args[1])
    elif kind == "take":  # and send it at once, or later with the outbox
        shards[args[0]].take(args[1], args[2])
        if args[3]:
            shards[args[0]].send(learner)
    elif kind == "send":
        shards[args[0]].send(learner)
    else:
        customer_step(shards[args[0]], kind, f"c{args[1]}", *args[2:])


def customer_step(s: Shard, kind: str, who: str, *args) -> None:
    engine, compiled = s.engine, s.engine.compiled
    if kind == "event":
        etype, attributes = random_event(compiled.catalog, random.Random(args[0]), T0)
        engine.apply([engine.encode_event(who, etype, T0 - 60, attributes)])
    elif kind == "balance":
        engine.apply([engine.encode_event(who, "loyalty_points_changed", T0 - 60,
                                          {"balance": args[0]})])
    elif kind == "decided":
        rng = random.Random(args[0])
        channel = rng.choice(compiled.channel_names)
        decision = engine.decide(who, channel, None, random_context(compiled.catalog, rng, T0),
                                 now=T0)
        for action in decision.actions:
            s.record([(who, action.action_id, channel, outcome, T0 + 1, decision.decision_id,
                       args[2] if outcome == "convert" else None) for outcome in args[1]])
    else:  # offline: outcomes of no decision, learnt from the profile
        rng = random.Random(args[0])
        s.record([(who, *offered(compiled, rng), rng.choice(OUTCOMES), T0 + 1, None)
                  for _ in range(args[1])])


@pytest.fixture
def twin(monkeypatch) -> None:
    monkeypatch.setenv(kernel.PURE_ENV, "1")
    assert kernel.load().IMPLEMENTATION == "reference"


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=steps)
def test_no_real_learning_is_refused(twin, steps):
    learner = Learner(COMPILED[0], TEXTS[0])
    shards = [Shard(COMPILED[0], i) for i in range(SHARDS)]
    at = [0]
    for step in steps:
        run(learner, shards, step, at)
    for s in shards:  # the rest: a sync covers all of it, it is taken and sent
        s.take(True, True)
        while s.outbox:
            s.send(learner)
    m = learner.models
    assert learner.refused == 0 and [s.refused_in_adopt for s in shards] == [0] * SHARDS
    assert sound_rows(m.mean, m.precision, *(getattr(m, name) for name in COUNTS)).all()
    taught = sum(s.taught for s in shards)
    np.testing.assert_allclose([getattr(m, name).sum() for name in COUNTS], taught,
                               rtol=1e-12)
