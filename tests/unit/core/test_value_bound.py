"""What one client can do to an action's learned value, which every customer of its model
shares: one convert reporting a huge value, or a stream of them, must not set it for
everyone. A value counts at most max_ratio times the value the remembered decision gave the
action, and not at all without such a decision."""
from __future__ import annotations

import pytest

from kairos.cluster.metrics import ShardMetrics, Tally
from kairos.core.catalog import MAX_NUMBER, load_catalog
from kairos.core.compiler import compile_catalog
from kairos.core.decision import Learned
from kairos.core.engine import DecisionEngine
from kairos.core.errors import CatalogError

from tests.unit.core.test_numeric_bounds import Recorder
from tests.unit.core.test_value_learning import SMALL, T0, engine_for, shown


def track_order(engine: DecisionEngine, customer: str) -> float:
    """track_order's value factor for a customer who just bought (which makes it apply)."""
    engine.apply([engine.encode_event(customer, "purchase", T0 - 60,
                                      {"amount": 20.0, "category": "bags"})])
    decision = engine.decide(customer, "web", "hero", {"basket_value": 40.0}, now=T0)
    return next(a.value for a in decision.actions if a.action_id == "track_order")


def convert(engine: DecisionEngine, value: float, n: int = 1) -> list[Learned]:
    """n converts of track_order, each of its own decision that showed it."""
    return engine.record_outcomes([("ana", "track_order", "web", "convert", T0, shown(engine),
                                    value) for _ in range(n)])


def cart_reminder(engine: DecisionEngine, basket: float, value: float) -> float:
    """What a convert of cart_reminder, valued from the decision's basket, taught."""
    engine.apply([engine.encode_event("ana", "add_to_cart", T0 - 60, {"amount": basket})])
    decision = engine.decide("ana", "web", "hero", {"basket_value": basket}, now=T0)
    assert [a.value for a in decision.actions if a.action_id == "cart_reminder"] == \
        [basket * 0.5]
    assert engine.record_outcomes([("ana", "cart_reminder", "web", "convert", T0 + 5,
                                    decision.decision_id, value)]) == [Learned.DECISION]
    c = engine.compiled
    m = c.action_index["cart_reminder"] * len(c.channel_names) + c.channel_names.index("web")
    return float(engine.models.value_sum[m])


def test_one_convert_at_the_bound_counts_as_ten_times_the_catalogs_value(impl):
    engine = engine_for()
    assert track_order(engine, "ana") == 2.0  # the catalog's value
    convert(engine, MAX_NUMBER)
    # counted as 10 x 2, blended with the catalog's 2 weighed as 10 conversions
    assert track_order(engine, "zoe") == pytest.approx((10 * 2.0 + 20.0) / 11)
    assert (engine.values_clipped, engine.values_unbounded) == (1, 0)
    convert(engine, 5.0, 100)
    assert track_order(engine, "yan") == pytest.approx((10 * 2.0 + 20.0 + 500.0) / 111)
    assert engine.values_clipped == 1


def test_a_stream_of_converts_at_the_bound_lifts_the_value_to_the_ratio_at_most(impl):
    """The bound is the catalog's value the decision saw, not the learned one it showed: a
    bound that followed the learned value would climb by max_ratio with every stream."""
    engine = engine_for("{max_ratio: 3}")
    for _ in range(4):
        convert(engine, MAX_NUMBER, 100)
    assert track_order(engine, "zoe") == pytest.approx((10 * 2.0 + 400 * 6.0) / 410)


@pytest.mark.parametrize("decision_id", [None, "forgotten"])
def test_a_convert_of_no_remembered_decision_teaches_its_label_but_no_value(impl, decision_id):
    """A profile the client writes would bound it: one purchase of 1e12 made gold_upgrade's
    value (lifetime_spend / 10) 1e11 for the customer at the outcome."""
    engine = engine_for()
    engine.apply([engine.encode_event("ana", "purchase", T0 - 30,
                                      {"amount": MAX_NUMBER, "category": "bags"})])
    learned = engine.record_outcomes([("ana", "gold_upgrade", "web", "convert", T0,
                                       decision_id, MAX_NUMBER)])
    assert learned[0] != Learned.DECISION
    assert engine.models.value_count.sum() == 0 and engine.models.positives.sum() == 1
    assert (engine.values_clipped, engine.values_unbounded) == (0, 1)


def test_a_convert_of_an_action_the_decision_did_not_show_teaches_no_value(impl):
    engine = engine_for()
    decision_id = shown(engine)
    engine.record_outcomes([("ana", "gold_upgrade", "web", "convert", T0, decision_id, 5.0)])
    assert engine.models.value_count.sum() == 0 and engine.values_unbounded == 1


def test_the_bound_is_the_decisions_value_with_its_context(impl):
    """cart_reminder's value is half the decision's basket: a convert of a basket of 400
    teaches its 200 as it is (the profile without the context valued it 10, bound 100)."""
    assert cart_reminder(engine_for(), 400.0, 200.0) == 200.0
    assert cart_reminder(engine_for(), 400.0, 5000.0) == 2000.0
    # a rule that reads only the context has no value without it, yet bounds the decision's
    only_context = SMALL.replace('value: "coalesce(context.basket_value, 20) * 0.5"',
                                 'value: "context.basket_value * 0.5"')
    engine = DecisionEngine(compile_catalog(load_catalog(only_context, "small.yaml")))
    assert cart_reminder(engine, 400.0, 200.0) == 200.0
    assert engine.values_unbounded == 0


def test_the_ratio_is_at_least_one():
    with pytest.raises(CatalogError, match="must be at least 1"):
        engine_for("{max_ratio: 0.5}")


def test_values_clipped_and_unbounded_reach_the_metrics():
    shard = ShardMetrics("s1")
    shard.values_clipped, shard.values_unbounded = Recorder(), Recorder()
    for clipped, unbounded in ((0, 0), (2, 1), (3, 1)):
        shard.flush(Tally(values_clipped=clipped, values_unbounded=unbounded), Tally(), Tally(),
                    0, 0, 0, 0.0, 0)
    assert shard.values_clipped.calls == [(2, {"shard": "s1"}), (1, {"shard": "s1"})]
    assert shard.values_unbounded.calls == [(1, {"shard": "s1"})]


def test_a_repeated_convert_counts_its_value_once(impl):
    """A retried Respond teaches nothing again, and is not counted again either."""
    engine = engine_for()
    decision_id = shown(engine)
    for _ in range(2):
        engine.record_outcomes([("ana", "track_order", "web", "convert", T0, decision_id,
                                 MAX_NUMBER),
                                ("ana", "gold_upgrade", "web", "convert", T0, decision_id, 5.0)])
    assert engine.models.value_count.sum() == 1
    assert (engine.values_clipped, engine.values_unbounded) == (1, 1)
