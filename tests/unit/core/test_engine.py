"""Behaviour of the decision core through DecisionEngine; every test runs on both kernels."""
from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from kairos.core.compiler import compiled_from_text
from kairos.core.engine import DecisionEngine
from kairos.core.errors import InputError
from kairos.core.models import ModelTable

T0 = 1_800_000_000.0
H, D = 3600.0, 86400.0


@pytest.fixture
def engine(impl, small) -> DecisionEngine:
    return DecisionEngine(small)


def apply(engine, customer, *events):
    engine.apply([engine.encode_event(customer, etype, t, attrs) for etype, t, attrs in events])


def winners(decision):
    return [a.action_id for a in decision.actions]


def reasons(decision):
    return {d.action_id: d.reason for d in decision.explanation.dropped}


def test_decayed_features_halve_every_half_life(engine):
    apply(engine, "c", ("page_view", T0, {"category": "hats"}),
          ("purchase", T0, {"amount": 100.0, "category": "hats"}))
    now = T0 + 7 * D
    features = engine.profile("c", now)["features"]
    assert features["views_7d"] == pytest.approx(0.5, rel=1e-12)
    assert features["spend_30d"] == pytest.approx(100 * 2 ** (-7 / 30), rel=1e-12)
    assert features["orders"] == 1.0 and features["lifetime_spend"] == 100.0


def test_late_events_count_decayed_and_do_not_override_last(engine):
    apply(engine, "c", ("page_view", T0, {"category": "shoes", "price": 50.0}),
          ("page_view", T0 - 7 * D, {"category": "bags", "price": 20.0}))
    features = engine.profile("c", T0)["features"]
    assert features["views_7d"] == pytest.approx(1.5, rel=1e-12)
    assert features["last_category"] == "shoes"  # the late view is older
    assert features["min_price"] == 20.0


def test_time_since_filters_and_attributes_from_events(engine):
    apply(engine, "c", ("add_to_cart", T0, {"amount": 10.0}),
          ("delivery_update", T0, {"status": "shipped"}),
          ("delivery_update", T0, {"status": "lost"}),
          ("profile_updated", T0, {"tier": "gold"}))
    profile = engine.profile("c", T0 + 90)
    assert profile["features"]["since_cart"] == 90.0
    assert profile["features"]["since_purchase"] is None  # unknown until a purchase
    assert profile["features"]["late_deliveries"] == 1.0
    assert profile["attributes"]["tier"] == "gold"
    assert profile["attributes"]["email_opt_in"] is False  # optional field absent: unchanged


def test_rules_channels_placements_and_restraint(engine):
    apply(engine, "c", ("add_to_cart", T0, {"amount": 10.0}))
    hero = engine.decide("c", "web", "hero", {"basket_value": 40.0}, now=T0 + 60, explain=True)
    assert winners(hero) == ["cart_reminder"]
    assert hero.actions[0].treatment == "cart_banner"
    assert hero.actions[0].value == 20.0  # basket_value * 0.5
    why = reasons(hero)
    assert why["shoes_promo"] == "APPLICABILITY"
    assert why["gold_upgrade"] == "NOT_IN_CHANNEL"  # sidebar only
    assert why["winter_sale"] == "OUTSIDE_VALIDITY"
    detail = {d.action_id: d.detail for d in hero.explanation.dropped}
    assert detail["shoes_promo"] == "applicability: last_category == 'shoes'"
    later = engine.decide("c", "web", "hero", now=T0 + 3 * H, explain=True)
    assert reasons(later)["cart_reminder"] == "APPLICABILITY"  # cart older than 2h


def test_consent_per_purpose_and_channel(engine):
    apply(engine, "c", ("add_to_cart", T0, {"amount": 10.0}))
    email = engine.decide("c", "email", "weekly", now=T0 + 60, explain=True)
    assert reasons(email)["cart_reminder"] == "NO_CONSENT"
    apply(engine, "c", ("profile_updated", T0 + 61, {"tier": "none", "email_opt_in": True}))
    assert winners(engine.decide("c", "email", "weekly", now=T0 + 62)) == ["cart_reminder"]


def test_service_actions_are_not_limited_to_one_per_group(engine):
    apply(engine, "c", ("purchase", T0, {"amount": 50.0, "category": "hats"}),
          ("delivery_update", T0 + 10, {"status": "delayed"}))
    decision = engine.decide("c", "web", "sidebar", now=T0 + 60, explain=True)
    assert winners(decision)[:2] == ["delivery_apology", "track_order"]
    assert [a.group for a in decision.actions[:2]] == ["serve", "serve"]


def test_one_per_group_and_max_actions(engine):
    apply(engine, "c", ("page_view", T0, {"category": "shoes"}),
          ("purchase", T0, {"amount": 200.0, "category": "bags"}),
          ("delivery_update", T0, {"status": "lost"}))
    full = engine.decide("c", "web", "sidebar", {"device": "mobile"}, now=T0 + 60, explain=True)
    assert len(full.actions) == 3
    groups = [a.group for a in full.actions]
    assert groups.count("sell") <= 1 and groups.count("retain") <= 1
    capped = engine.decide("c", "web", "sidebar", now=T0 + 60, max_actions=1, explain=True)
    assert len(capped.actions) == 1
    assert "TOP_K" in reasons(capped).values()


def test_priority_is_the_product_of_four_factors(engine):
    apply(engine, "c", ("purchase", T0, {"amount": 500.0, "category": "bags"}))
    decision = engine.decide("c", "web", "sidebar", now=T0 + 60)
    upgrade = next(a for a in decision.actions if a.action_id == "gold_upgrade")
    assert upgrade.weight == 2.0  # retain weighted x2 everywhere
    assert upgrade.value == 50.0  # lifetime_spend / 10
    assert upgrade.priority == pytest.approx(
        upgrade.propensity * upgrade.weight * upgrade.value * upgrade.lever, rel=1e-12)


def test_context_weight_applies_only_when_context_matches(engine):
    apply(engine, "c", ("page_view", T0, {"category": "shoes"}))
    mobile = engine.decide("c", "web", "hero", {"device": "mobile"}, now=T0)
    desktop = engine.decide("c", "web", "hero", {"device": "desktop"}, now=T0)
    assert mobile.actions[0].weight == 1.5 and desktop.actions[0].weight == 1.0


def test_impression_cap_reject_suppression_and_accept_cooldown(engine):
    apply(engine, "c", ("add_to_cart", T0, {"amount": 10.0}))
    def record(outcome, t):
        engine.record_outcomes([("c", "cart_reminder", "web", outcome, t, None)])
    record("impression", T0 + 1)
    record("impression", T0 + 2)
    capped = engine.decide("c", "web", "hero", now=T0 + 3, explain=True)
    assert reasons(capped)["cart_reminder"] == "IMPRESSION_CAP"
    email = engine.decide("c", "web", "hero", now=T0 + D + 3, explain=True)  # window passed
    assert reasons(email)["cart_reminder"] == "APPLICABILITY"  # ...but the cart is old now

    apply(engine, "d", ("add_to_cart", T0, {"amount": 10.0}))
    engine.record_outcomes([("d", "cart_reminder", "web", "reject", T0 + 1, None),
                            ("d", "cart_reminder", "web", "reject", T0 + 2, None)])
    assert reasons(engine.decide("d", "web", "hero", now=T0 + 3, explain=True))[
        "cart_reminder"] == "REJECT_SUPPRESSION"

    apply(engine, "e", ("add_to_cart", T0, {"amount": 10.0}))
    engine.record_outcomes([("e", "cart_reminder", "web", "accept", T0 + 1, None)])
    assert reasons(engine.decide("e", "web", "hero", now=T0 + 3, explain=True))[
        "cart_reminder"] == "ACCEPT_COOLDOWN"


def test_history_ring_keeps_the_newest(engine, small):
    n = small.history_size + 5
    engine.record_outcomes([("c", "track_order", "web", "impression", T0 + i, None)
                            for i in range(n)])
    history = engine.history("c")
    assert len(history) == small.history_size
    assert history[0]["time"] == T0 + n - 1 and history[-1]["time"] == T0 + 5


def test_closed_loop_learning_raises_the_accepted_actions_propensity(engine):
    apply(engine, "c", ("add_to_cart", T0, {"amount": 10.0}))
    before = engine.decide("c", "web", "hero", {"basket_value": 40.0}, now=T0 + 10)
    assert winners(before) == ["cart_reminder"]
    outcomes = []
    for i in range(50):
        d = engine.decide(f"u{i}", "web", "hero", now=T0)
        outcomes.append((f"u{i}", "track_order", "web", "accept", T0, d.decision_id))
    engine.record_outcomes(outcomes)
    models = engine.models
    m = engine.compiled.model_index(engine.compiled.action_index["track_order"], 0)
    assert models.positives[m] == 50
    assert 1 / (1 + math.exp(-models.mean[m, 0])) > 0.9  # was 0.5 (serve prior)


def test_deltas_from_two_shards_merge_into_one_posterior(impl, small):
    shards = [DecisionEngine(small, seed=s) for s in (1, 2)]
    learner = ModelTable(small)
    for s, shard in enumerate(shards):
        shard.record_outcomes([(f"c{s}{i}", "track_order", "web",
                                "accept" if i % 3 else "reject", T0, None) for i in range(30)])
    merged = shards[0].models.take_delta() + shards[1].models.take_delta()
    learner.merge(merged)
    learner.version += 1
    m = small.model_index(small.action_index["track_order"], 0)
    assert learner.positives[m] == 40 and learner.negatives[m] == 20
    for shard in shards:  # a shard adopts the published version and keeps unsent learning
        shard.record_outcomes([("late", "track_order", "web", "accept", T0, None)])
        shard.adopt_models(learner)
        assert shard.models.version == 1
        assert shard.models.positives[m] == 41
        np.testing.assert_allclose(shard.models.pending().positives[m], 1)


def test_passivation_round_trip_is_bit_identical(engine):
    apply(engine, "c", ("page_view", T0, {"category": "shoes", "price": 5.0}))
    engine.record_outcomes([("c", "shoes_promo", "web", "impression", T0, None)])
    record = engine.table.export("c")
    engine.table.evict("c")
    assert "c" not in engine.table
    engine.table.load("c", record)
    assert engine.table.export("c").equals(record)


def test_thompson_sampling_is_seeded(impl, small):
    small.exploration = type(small.exploration)(1)  # thompson
    a, b = DecisionEngine(small, seed=7), DecisionEngine(small, seed=7)
    for engine in (a, b):
        apply(engine, "c", ("purchase", T0, {"amount": 500.0, "category": "bags"}))
    da = [a.decide("c", "web", "sidebar", now=T0).actions for _ in range(5)]
    db = [b.decide("c", "web", "sidebar", now=T0).actions for _ in range(5)]
    assert da == db
    assert len({tuple(x.propensity for x in d) for d in da}) > 1  # it does explore


def test_bad_input_changes_nothing(engine):
    good = engine.encode_event("c", "page_view", T0, {"category": "shoes"})
    with pytest.raises(InputError):
        engine.encode_event("c", "purchase", T0, {"amount": math.nan, "category": "shoes"})
    assert len(engine.table) == 0
    engine.apply([good])
    assert engine.profile("c", T0)["features"]["views_7d"] == 1.0


TRIALS = """
kairos_catalog: 1
name: trials
version: "1"
channels: {web: {placements: {main: {top_k: 1}}}}
events: {seen: {fields: {}}}
consent: {service: true}
actions:
  - {id: first, group: a, purpose: service, channels: {web: {treatment: t}}, value: 1}
  - {id: second, group: b, purpose: service, channels: {web: {treatment: t}}, value: 1}
arbitration:
  restraint_threshold: 0.2
  exploration: {method: METHOD, trial_rate: RATE}
fallbacks: {web: []}
"""


@pytest.mark.parametrize("method", ["thompson", "ucb"])
@pytest.mark.parametrize("rate", [0.0, 0.1])
def test_an_action_never_accepted_keeps_being_tried_at_the_trial_rate(impl, method, rate):
    """Once `first` is accepted, the pessimistic prior alone would never show `second` again
    (and the restraint threshold drops it); trials show it in `rate` of the decisions until
    it has an accept of its own."""
    engine = DecisionEngine(compiled_from_text(
        TRIALS.replace("METHOD", method).replace("RATE", str(rate))), seed=3)
    engine.record_outcomes([(f"c{i}", "first", "web", "accept", T0, None) for i in range(20)])
    shown = Counter(d.actions[0].action_id if d.actions else None
                    for d in (engine.decide(f"c{i}", "web", "main", now=T0) for i in range(1000)))
    assert shown["second"] == pytest.approx(1000 * rate, abs=40)  # over 4 sd at rate 0.1
    assert shown["first"] == 1000 - shown["second"]
    engine.record_outcomes([("c0", "second", "web", "accept", T0, None)])
    later = [engine.decide(f"c{i}", "web", "main", now=T0) for i in range(300)]
    assert all(d.actions[0].action_id == "first" for d in later)  # tried: ranked as it earns



def test_an_engine_started_again_issues_ids_the_one_before_never_did():
    """A restarted shard's process numbers its decisions from the start again: were the ids
    the same, an outcome sealed for a decision of the process before would find the new
    process's decision of that id in the memo and learn from its inputs."""
    code = ("from kairos.core.compiler import default_compiled\n"
            "from kairos.core.engine import DecisionEngine\n"
            "e = DecisionEngine(default_compiled())\n"
            "print(e.decide('ana', 'web', 'hero', now=1.8e9).decision_id)")
    before, after = (subprocess.run([sys.executable, "-c", code], capture_output=True,
                                    text=True, check=True).stdout.strip() for _ in range(2))
    assert before and after and before != after
