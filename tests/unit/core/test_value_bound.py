"""What one client can do to an action's learned value, which every customer of its model
shares: one convert reporting a huge value, or a stream of them, must not set it for
everyone."""
from __future__ import annotations

import pytest

from kairos.core.catalog import MAX_NUMBER
from kairos.core.engine import DecisionEngine
from kairos.core.errors import CatalogError

from tests.unit.core.test_value_learning import T0, engine_for


def track_order(engine: DecisionEngine, customer: str) -> float:
    """track_order's value factor for a customer who just bought (which makes it apply)."""
    engine.apply([engine.encode_event(customer, "purchase", T0 - 60,
                                      {"amount": 20.0, "category": "bags"})])
    decision = engine.decide(customer, "web", "hero", {"basket_value": 40.0}, now=T0)
    return next(a.value for a in decision.actions if a.action_id == "track_order")


def convert(engine: DecisionEngine, value: float, n: int = 1, decision_id=None) -> None:
    engine.record_outcomes([("ana", "track_order", "web", "convert", T0, decision_id,
                             value)] * n)


def test_one_convert_at_the_bound_counts_as_ten_times_the_catalogs_value(impl):
    engine = engine_for()
    assert track_order(engine, "ana") == 2.0  # the catalog's value
    decision = engine.decide("ana", "web", "hero", {}, now=T0)
    convert(engine, MAX_NUMBER, decision_id=decision.decision_id)
    # counted as 10 x 2, blended with the catalog's 2 weighed as 10 conversions
    assert track_order(engine, "zoe") == pytest.approx((10 * 2.0 + 20.0) / 11)
    convert(engine, 5.0, 1000)
    assert track_order(engine, "yan") == pytest.approx((10 * 2.0 + 20.0 + 5000.0) / 1011)


def test_a_stream_of_converts_at_the_bound_lifts_the_value_to_the_ratio_at_most(impl):
    engine = engine_for("{max_ratio: 3}")
    convert(engine, MAX_NUMBER, 10_000)
    assert track_order(engine, "zoe") == pytest.approx((10 * 2.0 + 10_000 * 6.0) / 10_010)


def test_a_convert_with_no_catalog_value_to_bound_it_teaches_no_value(impl):
    """gold_upgrade's value is lifetime_spend / 10, unknown for a customer who never bought."""
    engine = engine_for()
    engine.record_outcomes([("ana", "gold_upgrade", "web", "convert", T0, None, 50.0)])
    assert engine.models.value_count.sum() == 0 and engine.models.positives.sum() == 1


def test_the_ratio_is_at_least_one():
    with pytest.raises(CatalogError, match="must be at least 1"):
        engine_for("{max_ratio: 0.5}")
