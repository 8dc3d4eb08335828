"""Exact error messages: a marketer or a channel team must see what is wrong and where."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from kairos.core.catalog import load_catalog
from kairos.core.compiler import compile_catalog
from kairos.core.engine import DecisionEngine
from kairos.core.errors import CatalogError, InputError, RuleError
from kairos.core.rules import NUM, BOOL, Ref, parse

SMALL = (Path(__file__).parent / "data" / "small.yaml").read_text()
T = 1_800_000_000.0


def compile_edited(old: str, new: str):
    assert old in SMALL, old
    return compile_catalog(load_catalog(SMALL.replace(old, new, 1), "small.yaml"))


@pytest.mark.parametrize("old, new, message", [
    ('    value: 30\n', '    value: [30\n',
     "small.yaml:94:7: invalid YAML: expected ',' or ']', but got ':'"),
    ('name: small-test', 'name: small-test\ncolour: blue',
     "small.yaml:3:1: colour: unknown key 'colour' (allowed: kairos_catalog, name, version, "
     "channels, events, actions, fallbacks, context, attributes, features, consent, arbitration, "
     "models, history)"),
    ('version: "t1"\n', '', "small.yaml:1:1: missing required key 'version'"),
    ('    value: 30\n', '    valeu: 30\n    value: 30\n',
     "small.yaml:93:5: actions[3].valeu (action 'delivery_apology'): unknown key 'valeu' "
     "(allowed: id, group, purpose, channels, value, eligibility, applicability, suitability, "
     "lever, valid, contact_policy, attributes, name, description)"),
    ('  - id: track_order', '  - id: delivery_apology',
     "small.yaml:94:9: actions[4].id (action 'delivery_apology'): duplicate action id (first at "
     "actions[3])"),
    ('      web: {treatment: track_widget}', '      wbe: {treatment: track_widget}',
     "small.yaml:98:7: actions[4].channels.wbe (action 'track_order'): unknown channel 'wbe' "
     "(did you mean 'web'?)"),
    ('orders: {kind: count, event: purchase}', 'orders: {kind: count, event: purchse}',
     "small.yaml:44:32: features.orders.event: unknown event type 'purchse' (did you mean "
     "'purchase'?)"),
    ('spend_30d: {kind: decayed_sum, event: purchase, field: amount',
     'spend_30d: {kind: decayed_sum, event: purchase, field: category',
     "small.yaml:43:58: features.spend_30d.field: a decayed_sum feature needs a numeric field, "
     "purchase.category is string"),
    ('half_life: 7d}', 'half_life: 7 days}',
     "small.yaml:42:64: features.views_7d.half_life: expected a positive duration such as 30m, "
     "2h or 7d, got '7 days'"),
    ('"2020-12-01T00:00:00Z"', '"2020-12-01T00:00:00"',
     "small.yaml:107:19: actions[5].valid.from (action 'winter_sale'): expected an ISO-8601 "
     "timestamp with a zone such as 2026-01-01T00:00:00Z, got '2020-12-01T00:00:00'"),
    ('restraint_threshold: 0.01', 'restraint_threshold: .nan',
     "small.yaml:109:24: arbitration.restraint_threshold: expected a finite number, got nan"),
    ('restraint_threshold: 0.01', 'restraint_threshold: .inf',
     "small.yaml:109:24: arbitration.restraint_threshold: expected a finite number, got inf"),
    ('  email: []', '  email: [track_order]',
     "small.yaml:129:11: fallbacks.email[0]: action 'track_order' is not offered on email"),
])
def test_catalog_errors(old, new, message):
    with pytest.raises(CatalogError) as exc:
        compile_edited(old, new)
    assert str(exc.value) == message


@pytest.mark.parametrize("old, new, message", [
    ('applicability: "since_cart < 2h', 'applicability: "sinc_cart < 2h',
     "small.yaml:62:21: actions[0].applicability (action 'cart_reminder'): unknown name "
     "'sinc_cart'"),
    ('applicability: "lifetime_spend between 100 and 1000"',
     'applicability: "lifetim(3) between 100 and 1000"',
     "small.yaml:84:21: actions[2].applicability (action 'gold_upgrade'): unknown function "
     "'lifetim' (functions: abs, coalesce, days_since, hours_since, known, log1p, max, min, "
     "minutes_since)"),
    ('applicability: "late_deliveries >= 1"', 'applicability: "late_deliveries >= \'x\'"',
     "small.yaml:92:37: actions[3].applicability (action 'delivery_apology'): cannot compare "
     "number with string"),
    ("applicability: \"last_category == 'shoes'\"",
     "applicability: \"last_category == 'sandals'\"",
     "small.yaml:73:38: actions[1].applicability (action 'shoes_promo'): 'sandals' is not a "
     "value of last_category (values: shoes, bags, hats)"),
    ("applicability: \"last_category == 'shoes'\"", "applicability: \"last_category == 'shoes\"",
     "small.yaml:73:38: actions[1].applicability (action 'shoes_promo'): unterminated string"),
    ('value: "lifetime_spend / 10"', 'value: "lifetime_spend > 10"',
     "small.yaml:85:13: actions[2].value (action 'gold_upgrade'): the rule must give a number, "
     "it gives a boolean"),
    ('applicability: "late_deliveries >= 1"', 'applicability: "late_deliveries and 1"',
     "small.yaml:92:37: actions[3].applicability (action 'delivery_apology'): 'and' left "
     "operand must be boolean, got number"),
    ('applicability: "late_deliveries >= 1"', 'applicability: "late_deliveries >= 1)"',
     "small.yaml:92:41: actions[3].applicability (action 'delivery_apology'): unexpected ')'"),
    ('applicability: "late_deliveries >= 1"', 'applicability: " "',
     "small.yaml:92:20: actions[3].applicability (action 'delivery_apology'): expected a "
     "non-empty string, got ' '"),
])
def test_rule_errors_point_into_the_rule(old, new, message):
    with pytest.raises(CatalogError) as exc:
        compile_edited(old, new)
    assert str(exc.value) == message


NAMES = {"x": Ref("profile", 0, NUM, name="x")}


@pytest.mark.parametrize("text, want, message", [
    ("x >", BOOL, "column 4: unexpected end of rule"),
    ("", BOOL, "column 1: empty rule"),
    ("x @ 1", BOOL, "column 3: unexpected character '@'"),
    ("min(x)", NUM, "column 1: min() takes 2 arguments, got 1"),
    ("x in [1, x]", BOOL, "column 10: a list may hold only literal values"),
    ("x between 1", BOOL, "column 12: expected 'and', found end of rule"),
])
def test_rule_parse_errors(text, want, message):
    with pytest.raises(RuleError) as exc:
        parse(text, NAMES.get, lambda s: 0, want)
    assert str(exc.value) == message


@pytest.fixture
def engine(small):
    return DecisionEngine(small)


@pytest.mark.parametrize("args, field, reason", [
    (("c", "page_vue", T, {}), "type", "unknown event type 'page_vue' (declared: page_view, "
     "add_to_cart, purchase, delivery_update, profile_updated)"),
    (("c", "page_view", T, {"category": "shoes", "colour": "red"}), "attributes.colour",
     "unknown field of page_view (fields: category, price)"),
    (("c", "purchase", T, {"amount": 1.0}), "attributes.category",
     "required field of purchase is missing"),
    (("c", "purchase", T, {"amount": "12", "category": "shoes"}), "attributes.amount",
     "expected a number, got str '12'"),
    (("c", "purchase", T, {"amount": math.nan, "category": "shoes"}), "attributes.amount",
     "must be a finite number, got nan"),
    (("c", "purchase", T, {"amount": math.inf, "category": "shoes"}), "attributes.amount",
     "must be a finite number, got inf"),
    (("c", "purchase", T, {"amount": -math.inf, "category": "shoes"}), "attributes.amount",
     "must be a finite number, got -inf"),
    (("c", "purchase", T, {"amount": True, "category": "shoes"}), "attributes.amount",
     "expected a number, got bool True"),
    (("c", "page_view", T, {"category": "socks"}), "attributes.category",
     "'socks' is not one of shoes, bags, hats"),
    (("c", "page_view", T, {"category": 3}), "attributes.category",
     "expected a string, got int 3"),
    (("c", "profile_updated", T, {"tier": "gold", "email_opt_in": 1}),
     "attributes.email_opt_in", "expected true or false, got int 1"),
    (("c", "page_view", math.nan, {"category": "shoes"}), "time",
     "must be a finite timestamp, got nan"),
    (("c", "page_view", math.inf, {"category": "shoes"}), "time",
     "must be a finite timestamp, got inf"),
    (("c", "page_view", -5, {"category": "shoes"}), "time",
     "timestamp -5 is outside 1970..2100 (epoch seconds)"),
    (("c", "page_view", "2026-01-01T00:00:00", {"category": "shoes"}), "time",
     "expected epoch seconds or an ISO-8601 timestamp with a zone, got '2026-01-01T00:00:00'"),
    (("", "page_view", T, {"category": "shoes"}), "customer_id",
     "expected a non-empty string, got str ''"),
])
def test_event_errors_name_the_field(engine, args, field, reason):
    with pytest.raises(InputError) as exc:
        engine.encode_event(*args)
    assert (exc.value.field, exc.value.reason) == (field, reason)
    assert str(exc.value) == f"{field}: {reason}"
    assert len(engine.table) == 0  # nothing was activated or applied


@pytest.mark.parametrize("kwargs, field, reason", [
    ({"channel": "sms"}, "channel", "unknown channel 'sms' (channels: web, email)"),
    ({"channel": "web", "placement": "footer"}, "placement",
     "unknown placement 'footer' of web (placements: hero, sidebar)"),
    ({"channel": "web", "context": {"colour": "red"}}, "context.colour",
     "unknown context key (declared: device, basket_value)"),
    ({"channel": "web", "context": {"device": "watch"}}, "context.device",
     "'watch' is not one of desktop, mobile"),
    ({"channel": "web", "context": {"basket_value": math.nan}}, "context.basket_value",
     "must be a finite number, got nan"),
    ({"channel": "web", "context": {"basket_value": "10"}}, "context.basket_value",
     "expected a number, got str '10'"),
    ({"channel": "web", "max_actions": -1}, "max_actions",
     "must be 0 (the placement's top_k) or more, got -1"),
])
def test_decide_errors_name_the_field(engine, kwargs, field, reason):
    with pytest.raises(InputError) as exc:
        engine.decide("c", **kwargs)
    assert (exc.value.field, exc.value.reason) == (field, reason)
    assert len(engine.table) == 0


@pytest.mark.parametrize("outcome, field, reason", [
    (("c", "nope", "web", "accept", T, None), "action_id", "unknown action 'nope'"),
    (("c", "track_order", "web", "clicked", T, None), "outcome",
     "unknown outcome 'clicked' (outcomes: impression, accept, reject, ignore, convert)"),
    (("c", "track_order", "email", "accept", T, None), "action_id",
     "action 'track_order' is not offered on email"),
])
def test_outcome_errors_apply_nothing(engine, outcome, field, reason):
    good = ("c", "track_order", "web", "accept", T, None)
    with pytest.raises(InputError) as exc:
        engine.record_outcomes([good, outcome])
    assert (exc.value.field, exc.value.reason) == (field, reason)
    assert engine.models.positives.sum() == 0 and len(engine.table) == 0
