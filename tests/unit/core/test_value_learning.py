"""Numeric rewards: a convert's value, learned per (action, channel) model as a blend with the
catalog's value, from sums that add across shards."""
from __future__ import annotations

import math

import pytest

from kairos.cluster.control.learner import Learner
from kairos.core.catalog import load_catalog
from kairos.core.compiler import compile_catalog
from kairos.core.engine import DecisionEngine
from kairos.core.errors import InputError

from tests.conftest import DATA

T0 = 1_800_000_000.0
SMALL = (DATA / "small.yaml").read_text()


def engine_for(value_spec: str = "", seed: int = 0) -> DecisionEngine:
    text = SMALL if not value_spec else SMALL.replace(
        "  prior: {base_rate: 0.1, precision: 1.0}",
        f"  value: {value_spec}\n  prior: {{base_rate: 0.1, precision: 1.0}}")
    return DecisionEngine(compile_catalog(load_catalog(text, "small.yaml")), seed=seed)


def value_factor(engine: DecisionEngine) -> float:
    """track_order's value factor for a customer who just bought (which makes it apply)."""
    engine.apply([engine.encode_event("ana", "purchase", T0 - 60,
                                      {"amount": 20.0, "category": "bags"})])
    decision = engine.decide("ana", "web", "hero", {"basket_value": 40.0}, now=T0)
    return next(a.value for a in decision.actions if a.action_id == "track_order")


def shown(engine: DecisionEngine, customer: str = "ana") -> str:
    """A decision that showed track_order to a customer who just bought: a convert's value
    is learned only as one of a remembered decision that showed its action."""
    engine.apply([engine.encode_event(customer, "purchase", T0 - 60,
                                      {"amount": 20.0, "category": "bags"})])
    decision = engine.decide(customer, "web", "hero", {"basket_value": 40.0}, now=T0)
    assert "track_order" in [a.action_id for a in decision.actions]
    return decision.decision_id


def converted(engine: DecisionEngine, value: float | None, n: int = 1) -> None:
    """n converts of track_order, each of its own decision."""
    engine.record_outcomes([("ana", "track_order", "web", "convert", T0, shown(engine), value)
                            for _ in range(n)])


def test_reported_values_replace_the_catalogs_little_by_little(impl):
    engine = engine_for("{prior_weight: 4, max_ratio: 100}")  # 100 is within 100 x 2
    before = value_factor(engine)
    converted(engine, 100.0, 4)
    assert value_factor(engine) == pytest.approx((4 * before + 4 * 100.0) / 8)


def test_converts_without_a_value_and_value_learning_off_keep_the_catalogs_value(impl):
    plain, off = engine_for(), engine_for("{learn: false}")
    fresh = value_factor(engine_for())
    converted(plain, None)
    converted(off, 55.0)
    assert value_factor(plain) == fresh and value_factor(off) == fresh
    assert off.models.value_count.sum() == 1  # counted all the same, for when it is turned on


@pytest.mark.parametrize("outcome, value, reason", [
    ("accept", 3.0, "only a convert carries a value, not accept"),
    ("convert", -0.5, "must be between 0 and 1e+12"),
    ("convert", 2e12, "must be between 0 and 1e+12"),
    ("convert", math.inf, "must be a finite number"),
    ("convert", "12", "expected a number"),
])
def test_a_bad_value_is_an_input_error_and_changes_nothing(outcome, value, reason):
    engine = engine_for()
    with pytest.raises(InputError) as exc:
        engine.record_outcomes([("ana", "track_order", "web", outcome, T0, None, value)])
    assert exc.value.field == "value" and reason in exc.value.reason
    assert engine.models.value_count.sum() == 0 and "ana" not in engine.table


def test_values_from_every_shard_add_up_at_the_learner():
    shards = [engine_for("{max_ratio: 20}", seed=s) for s in range(2)]  # 30 within 20 x 2
    learner = Learner(shards[0].compiled)
    for shard, value in zip(shards, (10.0, 30.0)):
        converted(shard, value)
    published = None
    for shard in shards:
        published = learner.sync(shard.compiled.version, shard.models.take_delta(), -1)
    assert published.value_count.sum() == 2 and published.value_sum.sum() == 40.0


def test_an_outcome_of_more_than_seven_fields_is_refused():
    with pytest.raises(ValueError, match="6 or 7 fields, got 8"):
        engine_for().record_outcomes([("ana", "track_order", "web", "convert", T0, None, 1.0,
                                       "extra")])
