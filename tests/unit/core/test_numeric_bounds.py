"""Numbers that cannot poison the models (hardening item 5), on both kernels.

One customer with an extreme value used to make a posterior inf or NaN: the update is
x*x*p(1-p), and the learner spreads whatever a shard sends to every shard and the store.
"""
from __future__ import annotations

import json
import math
from collections import Counter as Tally
from importlib import resources

import jsonschema
import numpy as np
import pytest
import yaml

from kairos.cluster.control.learner import Learner, save_models
from kairos.cluster.metrics import LearnerMetrics, ShardMetrics
from kairos.core.catalog import MAX_NUMBER, default_catalog_text, load_catalog
from kairos.core.compiler import (Outcome, PREDICTOR_LIMIT, Teach, compiled_from_text,
                                  default_compiled)
from kairos.core.engine import LATEST_TIME_S, DecisionEngine
from kairos.core.decision import Learned
from kairos.core.errors import CatalogError, InputError
from kairos.core.models import ModelTable, per_model

from tests.support.metrics import Recorder
from tests.support.restored import restore_models

SCHEMA = json.loads(resources.files("kairos.core").joinpath("catalog.schema.json").read_text())
T0 = 1_800_000_000.0


@pytest.fixture
def engine(impl) -> DecisionEngine:
    return DecisionEngine(default_compiled())


def finite(models: ModelTable) -> bool:
    return all(np.isfinite(getattr(models, k)).all()
               for k in ("mean", "precision", "positives", "negatives"))


@pytest.mark.parametrize("balance", [1e300, -1e300, MAX_NUMBER * 2, 10 ** 400])
def test_a_number_beyond_the_declared_bounds_is_refused_naming_the_field(engine, balance):
    with pytest.raises(InputError) as info:
        engine.encode_event("c", "loyalty_points_changed", T0, {"balance": balance})
    assert info.value.field == "attributes.balance"
    assert "1e+12" in info.value.reason or "finite" in info.value.reason


def test_numbers_at_the_bounds_are_accepted(engine):
    for balance in (MAX_NUMBER, -MAX_NUMBER, 0, -0.0):
        engine.encode_event("c", "loyalty_points_changed", T0, {"balance": balance})
    engine.encode_context({"basket_value": -MAX_NUMBER})
    with pytest.raises(InputError) as info:
        engine.encode_context({"basket_value": 1e300})
    assert info.value.field == "context.basket_value"


def test_an_extreme_profile_value_then_an_accept_leaves_the_posterior_finite(engine):
    """The issue's repro below the gateway: a profile holding 1e300 (as one acknowledged before
    the bounds would) and a CONVERT from that customer."""
    c = engine.compiled
    row = engine.activate(["rich"])[0]
    engine.table.values[row, c.layout.slot["loyalty_points"]] = 1e300
    decision = engine.decide("rich", "web", "hero", now=T0)
    x = engine.workspace.predictors[0].copy()
    action = decision.actions[0].action_id if decision.actions else "generic_welcome"
    engine.record_outcomes([("rich", action, "web", "convert", T0, decision.decision_id),
                            ("rich", action, "web", "accept", T0, None)])
    assert finite(engine.models)
    learner = Learner(c)
    published = learner.sync(c.version, engine.models.take_delta(), -1)
    assert np.isfinite(published.mean).all() and np.isfinite(published.precision).all()
    assert np.abs(x).max() == PREDICTOR_LIMIT  # clipped, the same in kernel and twin


def test_the_kernel_refuses_an_update_that_is_not_finite_and_counts_it(engine):
    c = engine.compiled
    rows = engine.activate(["a", "b"])
    a = c.action_index["generic_welcome"]
    before = engine.models.mean.copy(), engine.models.precision.copy()
    x = np.ones((2, c.n_predictors))
    x[0, 1] = 1e300  # x*x overflows: the precision would be inf and the mean NaN
    refused_at = np.full(2, -1, np.int8)
    refused = engine.k.record_outcomes(
        engine.catalog_view, engine.state_view, engine.model_view, rows,
        np.array([a, a], np.int32), np.zeros(2, np.int32),
        np.array([Outcome.CONVERT, Outcome.ACCEPT], np.int8), np.array([T0, T0]), x,
        np.full(2, math.nan), np.full(2, Teach.ALL, np.int8), refused_at)
    assert refused == 1 and refused_at.tolist() == [1, 0]
    assert finite(engine.models)
    m = c.model_index(a, 0)
    assert engine.models.positives[m] == 1  # only the finite one counted
    changed = ~per_model(np.isclose(engine.models.precision, before[1])).all(axis=1)
    assert changed.sum() == 1 and changed[m]
    assert engine.table.ring_outcome[rows[0]].tolist().count(Outcome.CONVERT) == 1  # history kept


def test_the_engine_counts_refused_updates_on_its_model_table(engine):
    """A model that is already NaN (adopted from a learner before these checks) learns nothing
    more, and each update it refuses is counted for the shard's metric."""
    c = engine.compiled
    m = c.model_index(c.action_index["generic_welcome"], 0)
    engine.models.mean[m, 0] = math.nan
    learned = engine.record_outcomes([("a", "generic_welcome", "web", "accept", T0, None),
                                      ("b", "generic_welcome", "web", "impression", T0, None)])
    assert learned == [Learned.REFUSED, Learned.NOTHING]  # what the ack of Respond says
    assert engine.models.refused == 1 and engine.models.positives[m] == 0
    engine.table.values[engine.table.index["a"], c.layout.slot["loyalty_points"]] = math.inf
    learned = engine.record_outcomes([("a", "service_menu", "web", "accept", T0, None)])
    assert engine.models.refused == 1  # an infinite input is clipped, not refused
    assert learned == [Learned.PROFILE_NO_DECISION]


def test_a_refused_conversion_adds_no_value_either(engine):
    """"The model is left as is": its conversion value too, or the value factor moves on an
    outcome the ack says was not learned."""
    c = engine.compiled
    m = c.model_index(c.action_index["service_menu"], c.channel_index["web"])
    engine.models.mean[m, 0] = math.inf
    learned = engine.record_outcomes([("a", "service_menu", "web", "convert", T0, None, 250.0)])
    assert learned == [Learned.REFUSED]
    assert (engine.models.value_count[m], engine.models.value_sum[m]) == (0.0, 0.0)


def poisoned(c, row: int):
    table = ModelTable(c)
    table.positives[row] += 1
    table.precision[row, 1] = math.inf
    table.mean[row, 1] = 0.0  # inf * 0: the delta's precision-weighted mean is NaN
    with np.errstate(invalid="ignore"):
        return table.take_delta()


def test_merge_refuses_the_rows_of_a_delta_that_are_not_finite():
    c = default_compiled()
    table = ModelTable(c)
    delta = poisoned(c, 3)
    good = ModelTable(c)
    good.positives[5] += 2
    good.precision[5] += 1.0
    delta = delta + good.take_delta()
    assert table.merge(delta) == 1
    assert finite(table)
    assert table.positives[3] == 0 and table.positives[5] == 2


def test_the_learner_does_not_spread_a_poisoned_delta():
    c = default_compiled()
    learner = Learner(c)
    first = learner.sync(c.version, None, -1)
    published = learner.sync(c.version, poisoned(c, 3), first.version)
    assert published is None or (np.isfinite(published.mean).all()
                                 and np.isfinite(published.precision).all())
    assert learner.refused == 1
    assert learner.status()["refused"] == 1


def test_a_saved_posterior_that_is_not_finite_is_not_taken_up():
    c = default_compiled()
    learner = Learner(c)
    learner.models.precision[3, 1] = math.inf
    learner.models.mean[4, 0] = math.nan
    learner.models.positives[4] = 7
    blob = save_models(learner)
    again = Learner(c)
    assert restore_models(again, blob)
    assert finite(again.models)
    prior = ModelTable(c)
    np.testing.assert_array_equal(again.models.precision[3], prior.precision[3])
    assert again.models.positives[4] == 0


def test_a_time_the_history_ring_cannot_hold_is_refused(engine):
    """Ring times are int32 seconds after 2020: a 2096 outcome wrapped to 1951 in the kernel
    and overflowed in the twin."""
    with pytest.raises(InputError) as info:
        engine.record_outcomes([("c", "generic_welcome", "web", "impression", 3_990_000_000.0,
                                 None)])
    assert info.value.field == "time" and "2088" in info.value.reason
    last = LATEST_TIME_S - 1.0
    engine.record_outcomes([("c", "generic_welcome", "web", "impression", last, None)])
    assert engine.history("c")[0]["time"] == math.floor(last)


def with_balance(spec: dict) -> str:
    doc = yaml.safe_load(default_catalog_text())
    doc["events"]["loyalty_points_changed"]["fields"]["balance"] = spec
    return yaml.safe_dump(doc, sort_keys=False)


def test_a_field_may_declare_narrower_bounds(impl):
    text = with_balance({"type": "int", "min": 0, "max": 1e9})
    assert list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(yaml.safe_load(text))) == []
    engine = DecisionEngine(compiled_from_text(text))
    engine.encode_event("c", "loyalty_points_changed", T0, {"balance": 1_000_000_000})
    for balance, shown in ((-1, "-1"), (1_000_000_001, "1000000001")):
        with pytest.raises(InputError) as info:
            engine.encode_event("c", "loyalty_points_changed", T0, {"balance": balance})
        assert (info.value.field, info.value.reason) == (
            "attributes.balance", f"must be between 0 and 1e+09, got {shown}")


@pytest.mark.parametrize("spec, reason", [
    ({"type": "string", "max": 3}, "only int, float and vector fields take 'max', this one is string"),
    ({"type": "int", "max": 1e13}, "max: must be at most 1e+12"),
    ({"type": "float", "min": 5, "max": 1}, "must be at least min (5), got 1"),
    ({"type": "int", "min": "low"}, "expected a number, got 'low'"),
])
def test_bounds_a_catalog_cannot_declare(spec, reason):
    with pytest.raises(CatalogError) as info:
        load_catalog(with_balance(spec))
    assert reason in str(info.value)


def test_refusals_reach_the_metrics():
    shard = ShardMetrics("s1")
    shard.model_updates_refused = Recorder()
    for refused in (0, 2, 2, 5):
        shard.flush(Tally(model_updates_refused=refused), Tally(), Tally(), 0, 0, 0, 0.0, 0)
    assert shard.model_updates_refused.calls == [(2, {"shard": "s1"}), (3, {"shard": "s1"})]
    learner = LearnerMetrics()
    learner.refused, learner.dropped, learner.repeated = Recorder(), Recorder(), Recorder()
    for refused, dropped, repeated in ((1, 0, 0), (1, 2, 1), (4, 2, 3)):
        learner.flush(refused, dropped, repeated)
    assert [value for value, _ in learner.refused.calls] == [1, 3]
    # and the deltas it dropped (a catalog it cannot remap) or took twice (a sync sent again)
    assert [value for value, _ in learner.dropped.calls] == [2]
    assert [value for value, _ in learner.repeated.calls] == [1, 2]
