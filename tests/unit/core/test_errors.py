"""Every error a marketer or a channel team can meet, checked by its exact message.

Catalog errors must name the file, line:column (pointing at the offending text), the YAML path
and, inside an action, the action id. Rule errors point into the rule, inside its YAML line.
Input errors name the field and the reason, and nothing is applied when one is raised.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from kairos.core.catalog import DEFAULT_HISTORY_SIZE, load_catalog
from kairos.core.compiler import compile_catalog, compiled_from_text
from kairos.core.engine import DecisionEngine
from kairos.core.errors import CatalogError, InputError, KairosError, RuleError
from kairos.core.rules import BOOL, NUM, STR, TIME, Ref, parse

SMALL = (Path(__file__).parent / "data" / "small.yaml").read_text(encoding="utf-8")
T = 1_800_000_000.0  # 2027-01-15, inside 1970..2088

ALLOWED_TOP = ("kairos_catalog, name, version, channels, events, actions, fallbacks, context, "
               "attributes, features, consent, arbitration, models, history, timers")
ALLOWED_ACTION = ("id, group, purpose, channels, value, eligibility, applicability, suitability, "
                  "lever, valid, contact_policy, attributes, name, description")
FUNCTIONS = ("abs, coalesce, days_since, hours_since, known, log1p, max, min, minutes_since")


def edit(old: str, new: str, text: str = SMALL) -> str:
    assert text.count(old) == 1, f"not exactly one {old!r} in small.yaml"
    return text.replace(old, new, 1)


def compile_text(text: str):
    return compile_catalog(load_catalog(text, "small.yaml"))


def catalog_error(text: str) -> CatalogError:
    with pytest.raises(CatalogError) as exc:
        compile_text(text)
    return exc.value


def text_at(text: str, line: int, column: int) -> str:
    """What the YAML text holds from line:column (1-based) to the end of that line."""
    return text.splitlines()[line - 1][column - 1:]


def check(text: str, message: str, points_at: str | None) -> CatalogError:
    err = catalog_error(text)
    assert str(err) == message
    assert err.source == "small.yaml"
    if points_at is not None:  # the line:column is where the offending text starts
        assert text_at(text, err.line, err.column).startswith(points_at), \
            (err.line, err.column, text_at(text, err.line, err.column))
    return err


def test_small_catalog_compiles():
    compile_text(SMALL)  # the edits below each break one thing in a valid catalog


# ---------------------------------------------------------------------------------------------
# Catalog structure errors


@pytest.mark.parametrize("old, new, message, points_at", [
    pytest.param(
        '    value: 30\n', '    value: [30\n',
        "small.yaml:94:7: invalid YAML: expected ',' or ']', but got ':' (while parsing a flow "
        "sequence that starts at 93:12)", ": track_order",
        id="invalid-yaml-unclosed-flow-sequence"),
    pytest.param(
        'name: small-test', 'name: small-test\n\tcolour: blue',
        "small.yaml:3:1: invalid YAML: found character '\\t' that cannot start any token",
        "\tcolour", id="invalid-yaml-tab"),
    pytest.param(
        'name: small-test', 'name: small-test\n  colour: blue',
        "small.yaml:3:9: invalid YAML: mapping values are not allowed here", ": blue",
        id="invalid-yaml-bad-indent"),
    pytest.param(
        'name: small-test', 'name: small-test\ncolour: blue',
        f"small.yaml:3:1: colour: unknown key 'colour' (allowed: {ALLOWED_TOP})",
        "colour: blue", id="unknown-top-level-key"),
    pytest.param(
        'version: "t1"\n', '', "small.yaml:1:1: missing required key 'version'",
        "kairos_catalog", id="missing-required-key"),
    pytest.param(
        'kairos_catalog: 1', 'kairos_catalog: 2',
        "small.yaml:1:17: kairos_catalog: unsupported catalog format 2 (this Kairos reads 1)",
        "2", id="unsupported-format"),
    pytest.param(
        'name: small-test', 'name: small-test\nname: other',
        "small.yaml:3:1: name: duplicate key 'name'", "name: other", id="duplicate-yaml-key"),
    pytest.param(
        'name: small-test', 'name: ""',
        "small.yaml:2:7: name: expected a non-empty string, got ''", '""', id="empty-name"),
    pytest.param(
        '    value: 30\n', '    valeu: 30\n    value: 30\n',
        f"small.yaml:93:5: actions[3].valeu (action 'delivery_apology'): unknown key 'valeu' "
        f"(allowed: {ALLOWED_ACTION})", "valeu", id="unknown-key-in-action"),
    pytest.param(
        '  - id: cart_reminder\n', '  - colour: red\n    id: cart_reminder\n',
        f"small.yaml:56:5: actions[0].colour (action 'cart_reminder'): unknown key 'colour' "
        f"(allowed: {ALLOWED_ACTION})", "colour", id="unknown-key-before-action-id"),
    pytest.param(
        '  - id: cart_reminder\n    group: sell\n', '  - id: cart_reminder\n',
        "small.yaml:56:5: actions[0] (action 'cart_reminder'): missing required key 'group'",
        "id: cart_reminder", id="missing-key-in-action"),
    pytest.param(
        '  - id: track_order\n', '  - name: track_order\n',
        "small.yaml:94:5: actions[4]: missing required key 'id'", "name: track_order",
        id="action-without-id"),
    pytest.param(
        '  - id: track_order', '  - id: delivery_apology',
        "small.yaml:94:9: actions[4].id (action 'delivery_apology'): duplicate action id (first "
        "at actions[3])", "delivery_apology", id="duplicate-action-id"),
    pytest.param(
        '  - id: track_order', '  - id: Track_Order',
        "small.yaml:94:9: actions[4].id (action 'Track_Order'): expected a name of lowercase "
        "letters, digits and '_' starting with a letter, got 'Track_Order'", "Track_Order",
        id="bad-action-id"),
    pytest.param(
        '      web: {treatment: track_widget}', '      wbe: {treatment: track_widget}',
        "small.yaml:98:7: actions[4].channels.wbe (action 'track_order'): unknown channel 'wbe' "
        "(did you mean 'web'?)", "wbe:", id="unknown-channel-in-action"),
    pytest.param(
        '      web: {treatment: track_widget}',
        '      web: {treatment: track_widget, placements: [footer]}',
        "small.yaml:98:51: actions[4].channels.web.placements[0] (action 'track_order'): unknown "
        "placement of web 'footer'", "footer", id="unknown-placement-in-action"),
    pytest.param(
        '      web: {treatment: track_widget}', '      web: {}',
        "small.yaml:98:12: actions[4].channels.web (action 'track_order'): missing required key "
        "'treatment'", "{}", id="offer-without-treatment"),
    pytest.param(
        '    channels:\n      web: {treatment: track_widget}', '    channels: [web]',
        "small.yaml:97:15: actions[4].channels (action 'track_order'): expected a mapping, got a "
        "list", "[web]", id="channels-not-a-mapping"),
    pytest.param(
        '    purpose: service\n    channels:\n      web: {treatment: track_widget}',
        '    purpose: servce\n    channels:\n      web: {treatment: track_widget}',
        "small.yaml:96:14: actions[4].purpose (action 'track_order'): unknown purpose 'servce' "
        "(did you mean 'service'?)", "servce", id="unknown-purpose"),
    pytest.param(
        'orders: {kind: count, event: purchase}', 'orders: {kind: count, event: purchse}',
        "small.yaml:44:32: features.orders.event: unknown event type 'purchse' (did you mean "
        "'purchase'?)", "purchse", id="unknown-event-in-feature"),
    pytest.param(
        'orders: {kind: count, event: purchase}', 'orders: {kind: counter, event: purchase}',
        "small.yaml:44:18: features.orders.kind: expected one of count, sum, decayed_count, "
        "decayed_sum, last, time_since, min, max, got 'counter'", "counter",
        id="unknown-feature-kind"),
    pytest.param(
        'spend_30d: {kind: decayed_sum, event: purchase, field: amount',
        'spend_30d: {kind: decayed_sum, event: purchase, field: category',
        "small.yaml:43:58: features.spend_30d.field: a decayed_sum feature needs a numeric "
        "field, purchase.category is string", "category", id="feature-field-wrong-type"),
    pytest.param(
        'lifetime_spend: {kind: sum, event: purchase, field: amount}',
        'lifetime_spend: {kind: sum, event: purchase, field: amont}',
        "small.yaml:45:55: features.lifetime_spend.field: unknown field of purchase 'amont' "
        "(did you mean 'amount'?)", "amont", id="unknown-feature-field"),
    pytest.param(
        'lifetime_spend: {kind: sum, event: purchase, field: amount}',
        'lifetime_spend: {kind: sum, event: purchase}',
        "small.yaml:45:19: features.lifetime_spend: a sum feature needs 'field'", "{kind: sum",
        id="feature-missing-field"),
    pytest.param(
        'orders: {kind: count, event: purchase}', 'orders: {kind: count, event: purchase, '
                                                  'half_life: 7d}',
        "small.yaml:44:53: features.orders.half_life: a count feature takes no half_life", "7d",
        id="feature-extra-half-life"),
    pytest.param(
        'when: {status: [delayed, lost]}', 'when: {status: [delayed, lots]}',
        "small.yaml:51:83: features.late_deliveries.when.status[1]: 'lots' is not one of "
        "shipped, delayed, lost, delivered", "lots", id="when-value-outside-vocabulary"),
    pytest.param(
        'orders: {kind: count, event: purchase}',
        'orders: {kind: count, event: purchase, when: {amount: [1]}}',
        "small.yaml:44:57: features.orders.when.amount: 'when' filters on string or bool "
        "fields, amount is float", "[1]", id="when-on-float-field"),
    pytest.param(
        'half_life: 7d}', 'half_life: 7 days}',
        "small.yaml:42:64: features.views_7d.half_life: expected a positive duration such as "
        "30m, 2h or 7d, got '7 days'", "7 days", id="bad-duration"),
    pytest.param(
        'half_life: 7d}', 'half_life: -7d}',
        "small.yaml:42:64: features.views_7d.half_life: expected a positive duration such as "
        "30m, 2h or 7d, got '-7d'", "-7d", id="negative-duration"),
    pytest.param(
        'half_life: 7d}', 'half_life: 0}',
        "small.yaml:42:64: features.views_7d.half_life: expected a positive duration such as "
        "30m, 2h or 7d, got 0", "0", id="zero-duration"),
    pytest.param(
        'half_life: 7d}', 'half_life: .inf}',
        "small.yaml:42:64: features.views_7d.half_life: expected a positive duration such as "
        "30m, 2h or 7d, got inf", ".inf", id="inf-duration"),
    pytest.param(
        '      cooldown_after_accept: 1d', '      cooldown_after_accept: soon',
        "small.yaml:67:30: actions[0].contact_policy.cooldown_after_accept (action "
        "'cart_reminder'): expected a positive duration such as 30m, 2h or 7d, got 'soon'",
        "soon", id="bad-duration-in-action"),
    pytest.param(
        'max_impressions: {count: 2, window: 1d}', 'max_impressions: {count: 0, window: 1d}',
        "small.yaml:65:32: actions[0].contact_policy.max_impressions.count (action "
        "'cart_reminder'): must be at least 1, got 0", "0", id="impression-count-zero"),
    pytest.param(
        '"2020-12-01T00:00:00Z"', '"2020-12-01T00:00:00"',
        "small.yaml:107:19: actions[5].valid.from (action 'winter_sale'): expected an ISO-8601 "
        "timestamp with a zone such as 2026-01-01T00:00:00Z, got '2020-12-01T00:00:00'",
        '"2020-12-01T00:00:00"', id="timestamp-without-zone"),
    pytest.param(
        '"2020-12-01T00:00:00Z"', '"yesterday"',
        "small.yaml:107:19: actions[5].valid.from (action 'winter_sale'): expected an ISO-8601 "
        "timestamp with a zone such as 2026-01-01T00:00:00Z, got 'yesterday'", '"yesterday"',
        id="timestamp-not-iso"),
    pytest.param(
        '"2020-12-01T00:00:00Z"', '"2021-12-01T00:00:00Z"',
        "small.yaml:107:12: actions[5].valid (action 'winter_sale'): 'until' must be after "
        "'from'", "{from:", id="validity-window-reversed"),
    pytest.param(
        '  member_since: {type: timestamp}', '  member_since: {type: timestamp, default: '
                                             '"2026-01-01"}',
        "small.yaml:40:44: attributes.member_since.default: expected an ISO-8601 timestamp with "
        "a zone such as 2026-01-01T00:00:00Z, got '2026-01-01'", '"2026-01-01"',
        id="timestamp-default-without-zone"),
    pytest.param(
        'restraint_threshold: 0.01', 'restraint_threshold: .nan',
        "small.yaml:109:24: arbitration.restraint_threshold: expected a finite number, got nan",
        ".nan", id="nan-number"),
    pytest.param(
        'restraint_threshold: 0.01', 'restraint_threshold: .inf',
        "small.yaml:109:24: arbitration.restraint_threshold: expected a finite number, got inf",
        ".inf", id="inf-number"),
    pytest.param(
        'restraint_threshold: 0.01', 'restraint_threshold: -.inf',
        "small.yaml:109:24: arbitration.restraint_threshold: expected a finite number, got -inf",
        "-.inf", id="minus-inf-number"),
    pytest.param(
        '    value: 30\n', '    value: .nan\n',
        "small.yaml:93:12: actions[3].value (action 'delivery_apology'): expected a finite "
        "number, got nan", ".nan", id="nan-action-value"),
    pytest.param(
        '    value: 30\n', '    value: .inf\n',
        "small.yaml:93:12: actions[3].value (action 'delivery_apology'): expected a finite "
        "number, got inf", ".inf", id="inf-action-value"),
    pytest.param(
        '    value: 8\n', '    value: 8\n    lever: -.inf\n',
        "small.yaml:75:12: actions[1].lever (action 'shoes_promo'): expected a finite number, "
        "got -inf", "-.inf", id="inf-lever"),
    pytest.param(
        'attributes: {margin: 0.4}', 'attributes: {margin: .nan}',
        "small.yaml:75:26: actions[1].attributes.margin (action 'shoes_promo'): expected a "
        "finite number, got nan", ".nan", id="nan-action-attribute"),
    pytest.param(
        'prior: {base_rate: 0.1, precision: 1.0}', 'prior: {base_rate: 0.1, precision: .inf}',
        "small.yaml:124:38: models.prior.precision: expected a finite number, got inf", ".inf",
        id="inf-prior-precision"),
    pytest.param(
        '{channel: web, group: sell, when: {device: mobile}, weight: 1.5}',
        '{channel: web, group: sell, weight: .nan}',
        "small.yaml:113:43: arbitration.context_weights[0].weight: expected a finite number, "
        "got nan", ".nan", id="nan-context-weight"),
    pytest.param(
        'hero: {top_k: 1}', 'hero: {top_k: .nan}',
        "small.yaml:7:21: channels.web.placements.hero.top_k: expected an integer, got nan",
        ".nan", id="nan-integer"),
    pytest.param(
        'hero: {top_k: 1}', 'hero: {top_k: 1.5}',
        "small.yaml:7:21: channels.web.placements.hero.top_k: expected an integer, got 1.5",
        "1.5", id="float-for-integer"),
    pytest.param(
        'hero: {top_k: 1}', 'hero: {top_k: "1"}',
        "small.yaml:7:21: channels.web.placements.hero.top_k: expected an integer, got '1'",
        '"1"', id="string-for-integer"),
    pytest.param(
        'hero: {top_k: 1}', 'hero: {top_k: 1, colour: red}',
        "small.yaml:7:24: channels.web.placements.hero.colour: unknown key 'colour' (allowed: "
        "top_k)", "colour", id="unknown-key-in-flow-mapping"),
    pytest.param(
        'hero: {top_k: 1}', 'Hero: {top_k: 1}',
        "small.yaml:7:7: channels.web.placements.Hero: 'Hero' is not a valid name: use "
        "lowercase letters, digits and '_', starting with a letter", "Hero", id="bad-key-name"),
    pytest.param(
        '    consent: {marketing: email_opt_in}', '    consent: {marketing: tier}',
        "small.yaml:10:26: channels.email.consent.marketing: unknown bool attribute 'tier'",
        "tier", id="consent-not-a-bool-attribute"),
    pytest.param(
        '  device: {type: string, values: [desktop, mobile]}',
        '  device: {type: text, values: [desktop, mobile]}',
        "small.yaml:14:18: context.device.type: expected one of string, int, float, bool, "
        "timestamp, vector, got 'text'", "text", id="unknown-field-type"),
    pytest.param(
        '  device: {type: string, values: [desktop, mobile]}',
        '  device: {type: float, values: [desktop, mobile]}',
        "small.yaml:14:33: context.device.values: only string fields take 'values', this one "
        "is float", "[desktop", id="values-on-float"),
    pytest.param(
        '  device: {type: string, values: [desktop, mobile]}',
        '  device: {type: string, values: [desktop, desktop]}',
        "small.yaml:14:44: context.device.values[1]: duplicate value 'desktop'", "desktop]",
        id="duplicate-vocabulary-value"),
    pytest.param(
        '  device: {type: string, values: [desktop, mobile]}',
        '  device: {type: string, values: [desktop, 3]}',
        "small.yaml:14:44: context.device.values[1]: expected a string, got 3", "3]",
        id="number-in-vocabulary"),
    pytest.param(
        '      price: {type: float, required: false}',
        '      price: {type: float, required: "false"}',
        "small.yaml:20:38: events.page_view.fields.price.required: expected true or false, "
        "got 'false'", '"false"', id="string-for-bool"),
    pytest.param(
        'default: none,', 'default: platinum,',
        "small.yaml:36:63: attributes.tier.default: 'platinum' is not one of none, silver, gold",
        "platinum", id="default-outside-vocabulary"),
    pytest.param(
        'default: none,', 'default: 3,',
        "small.yaml:36:63: attributes.tier.default: expected a non-empty string, got 3", "3,",
        id="number-for-string"),
    pytest.param(
        'from: {event: profile_updated, field: tier}',
        'from: {event: profile_updated, field: email_opt_in}',
        "small.yaml:37:48: attributes.tier.from.field: profile_updated.email_opt_in is bool, "
        "the attribute string", "email_opt_in", id="attribute-from-wrong-type"),
    pytest.param(
        '  orders: {kind: count, event: purchase}', '  tier: {kind: count, event: purchase}',
        "small.yaml:44:3: features.tier: 'tier' is already an attribute", "tier:",
        id="feature-shadows-attribute"),
    pytest.param(
        'one_per_group: true', 'one_per_group: yes please',
        "small.yaml:110:18: arbitration.one_per_group: expected true or false, got 'yes please'",
        "yes please", id="bool-wrong-type"),
    pytest.param(
        'allow_multiple: [serve]', 'allow_multiple: [serv]',
        "small.yaml:111:20: arbitration.allow_multiple[0]: unknown action group 'serv' (did "
        "you mean 'serve'?)", "serv]", id="unknown-group"),
    pytest.param(
        '{channel: web, group: sell, when: {device: mobile}, weight: 1.5}',
        '{channel: web, group: sell, when: {device: watch}, weight: 1.5}',
        "small.yaml:113:50: arbitration.context_weights[0].when.device: 'watch' is not one of "
        "desktop, mobile", "watch", id="context-weight-outside-vocabulary"),
    pytest.param(
        '{channel: web, group: sell, when: {device: mobile}, weight: 1.5}',
        '{channel: web, group: sell, when: {devise: mobile}, weight: 1.5}',
        "small.yaml:113:42: arbitration.context_weights[0].when.devise: unknown context key "
        "'devise' (did you mean 'device'?)", "devise", id="context-weight-unknown-key"),
    pytest.param(
        '{channel: web, group: sell, when: {device: mobile}, weight: 1.5}',
        '{channel: sms, group: sell, weight: 1.5}',
        "small.yaml:113:17: arbitration.context_weights[0].channel: unknown channel 'sms'",
        "sms", id="context-weight-unknown-channel"),
    pytest.param(
        'method: none', 'method: greedy',
        "small.yaml:116:13: arbitration.exploration.method: expected one of thompson, ucb, "
        "none, got 'greedy'", "greedy", id="unknown-exploration-method"),
    pytest.param(
        '    - {name: orders, transform: log1p}', '    - {name: order, transform: log1p}',
        "small.yaml:119:14: models.predictors[0].name: unknown attribute or feature 'order' "
        "(did you mean 'orders'?)", "order,", id="unknown-predictor"),
    pytest.param(
        '    - {name: orders, transform: log1p}', '    - {name: last_category, transform: '
                                                 'log1p}',
        "small.yaml:119:14: models.predictors[0].name: 'last_category' is string: use 'equals' "
        "to make an indicator of it", "last_category", id="string-predictor"),
    pytest.param(
        '    - {name: orders, transform: log1p}', '    - {name: orders, transform: scale}',
        "small.yaml:119:7: models.predictors[0]: the scale transform needs 'scale'",
        "{name: orders", id="scale-without-scale"),
    pytest.param(
        '    - {name: tier, equals: gold}', '    - {name: tier, equals: platinum}',
        "small.yaml:122:28: models.predictors[3].equals: 'platinum' is not one of none, silver, "
        "gold", "platinum", id="indicator-outside-vocabulary"),
    pytest.param(
        'prior: {base_rate: 0.1, precision: 1.0}', 'prior: {base_rate: 1.5, precision: 1.0}',
        "small.yaml:124:22: models.prior.base_rate: must be below 1, got 1.5", "1.5",
        id="base-rate-above-one"),
    pytest.param(
        '    method: none', '    method: thompson\n    trial_rate: 1.5',
        "small.yaml:117:17: arbitration.exploration.trial_rate: must be at most 1, got 1.5",
        "1.5", id="trial-rate-above-one"),
    pytest.param(
        '    method: none', '    method: thompson\n    optimistic: maybe',
        "small.yaml:117:17: arbitration.exploration.optimistic: expected true or false, got "
        "'maybe'", "maybe", id="optimistic-not-a-boolean"),
    pytest.param(
        'prior: {base_rate: 0.1, precision: 1.0}',
        'prior: {base_rate: 0.1, precision: 1.0, predictor_precision: 0}',
        "small.yaml:124:64: models.prior.predictor_precision: must be at least 1e-06, got 0", "0",
        id="predictor-precision-zero"),
    pytest.param(
        'fallbacks:', 'history: {size: 2000}\nfallbacks:',
        "small.yaml:127:17: history.size: must be at most 1024, got 2000", "2000",
        id="history-too-large"),
    pytest.param(
        '  email: []', '  email: [track_order]',
        "small.yaml:129:11: fallbacks.email[0]: action 'track_order' is not offered on email",
        "track_order", id="fallback-not-offered-on-channel"),
    pytest.param(
        '  email: []', '  email: [nope]',
        "small.yaml:129:11: fallbacks.email[0]: unknown action 'nope'", "nope",
        id="fallback-unknown-action"),
    pytest.param(
        '  email: []', '  email: []\n  sms: []',
        "small.yaml:130:3: fallbacks.sms: unknown channel 'sms'", "sms",
        id="fallback-unknown-channel"),
    pytest.param(
        '  email: []', '',
        "small.yaml:128:3: fallbacks: channel 'email' has no fallback (an empty list means no "
        "action)", "web:", id="fallback-missing-channel"),
    pytest.param(
        '    value: 30\n', '    value: 30\n    attributes: {margin: "high"}\n',
        "small.yaml:94:26: actions[3].attributes.margin (action 'delivery_apology'): action "
        "attribute 'margin' is string here but number in another action", '"high"',
        id="action-attribute-type-conflict"),
])
def test_catalog_errors(old, new, message, points_at):
    check(edit(old, new), message, points_at)


def test_catalog_error_attributes():
    err = catalog_error(edit('      web: {treatment: track_widget}',
                             '      wbe: {treatment: track_widget}'))
    assert (err.source, err.line, err.column) == ("small.yaml", 98, 7)
    assert err.path == "actions[4].channels.wbe"
    assert err.action_id == "track_order"
    assert err.reason == "unknown channel 'wbe' (did you mean 'web'?)"
    assert isinstance(err, KairosError) and isinstance(err, ValueError)


@pytest.mark.parametrize("text, message", [
    pytest.param("", "small.yaml: the catalog is empty", id="empty"),
    pytest.param("# only a comment\n", "small.yaml: the catalog is empty", id="only-comment"),
    pytest.param("- a\n- b\n", "small.yaml:1:1: expected a mapping, got a list", id="list-root"),
    pytest.param("kairos_catalog: 1\n1: x\n", "small.yaml:1:1: keys must be strings, got 1",
                 id="int-key"),
    pytest.param("kairos_catalog: 1\nname: &a x\nversion: *b\n",
                 "small.yaml:3:10: invalid YAML: found undefined alias 'b'", id="undefined-alias"),
    pytest.param("kairos_catalog: 1\n---\nname: y\n",
                 "small.yaml:2:1: invalid YAML: but found another document", id="two-documents"),
    pytest.param("kairos_catalog: 1\nname: x\nversion: '1'\nchannels: {}\nevents: {}\n"
                 "actions: []\nfallbacks: {}\n",
                 "small.yaml:5:9: events: must not be empty", id="empty-events"),
])
def test_inline_catalog_errors(text, message):
    assert str(catalog_error(text)) == message


def test_catalog_without_a_file_name_says_catalog():
    with pytest.raises(CatalogError) as exc:
        load_catalog("")
    assert str(exc.value) == "<catalog>: the catalog is empty"


# ---------------------------------------------------------------------------------------------
# Rule errors through load + compile: the column points into the rule inside the YAML line

APPLY = '    applicability: "late_deliveries >= 1"\n'  # actions[3], line 92; the rule at col 21


def rule(text: str) -> str:
    return edit(APPLY, f'    applicability: "{text}"\n')


def apology(column: int, reason: str) -> str:
    return f"small.yaml:92:{column}: actions[3].applicability (action 'delivery_apology'): {reason}"


@pytest.mark.parametrize("text, message, points_at", [
    pytest.param("sinc_cart < 2h", apology(21, "unknown name 'sinc_cart'"), "sinc_cart",
                 id="unknown-name"),
    pytest.param("known(since_cart) and known(sinc_cart)",
                 apology(49, "unknown name 'sinc_cart'"), "sinc_cart)", id="unknown-name-later"),
    pytest.param("context.colour == 'red'", apology(21, "unknown name 'context.colour'"),
                 "context.colour", id="unknown-context-key"),
    pytest.param("action.colour == 1", apology(21, "unknown name 'action.colour'"),
                 "action.colour", id="unknown-action-attribute"),
    pytest.param("late_deliveries >= 1 and lifetim(3) > 1",
                 apology(46, f"unknown function 'lifetim' (functions: {FUNCTIONS})"), "lifetim(",
                 id="unknown-function"),
    pytest.param("min(late_deliveries) > 1", apology(21, "min() takes 2 arguments, got 1"),
                 "min(", id="arity-too-few"),
    pytest.param("abs(1, 2) > 1", apology(21, "abs() takes 1 argument, got 2"), "abs(",
                 id="arity-too-many"),
    pytest.param("late_deliveries >= 'x'", apology(37, "cannot compare number with string"),
                 ">=", id="string-vs-number"),
    pytest.param("last_category == 3", apology(35, "cannot compare string with number"), "==",
                 id="number-vs-string"),
    pytest.param("last_category < 'shoes'",
                 apology(35, "a string can only be compared with == or !="), "<",
                 id="string-ordering"),
    pytest.param("last_category == 'sandals'",
                 apology(38, "'sandals' is not a value of last_category (values: shoes, bags, "
                             "hats)"), "'sandals'", id="outside-vocabulary"),
    pytest.param("'sandals' == last_category",
                 apology(21, "'sandals' is not a value of last_category (values: shoes, bags, "
                             "hats)"), "'sandals'", id="outside-vocabulary-on-left"),
    pytest.param("last_category not in ['shoes', 'sandals']",
                 apology(52, "'sandals' is not a value of last_category (values: shoes, bags, "
                             "hats)"), "'sandals'", id="outside-vocabulary-in-list"),
    pytest.param("context.device == 'watch'",
                 apology(39, "'watch' is not a value of context.device (values: desktop, "
                             "mobile)"), "'watch'", id="outside-context-vocabulary"),
    pytest.param("last_category == 'shoes", apology(38, "unterminated string"), "'shoes",
                 id="unterminated-string"),
    pytest.param("late_deliveries >= 1)", apology(41, "unexpected ')'"), ')"',
                 id="unexpected-token"),
    pytest.param("late_deliveries >= 1 1", apology(42, "unexpected '1'"), '1"',
                 id="unexpected-number"),
    pytest.param("late_deliveries == 1 == 1", apology(42, "unexpected '=='"), "== 1\"",
                 id="chained-comparison"),
    pytest.param("late_deliveries >=", apology(39, "unexpected end of rule"), '"',
                 id="unexpected-end"),
    pytest.param("(late_deliveries > 1", apology(41, "expected ')', found end of rule"), '"',
                 id="unclosed-parenthesis"),
    pytest.param("late_deliveries @ 1", apology(37, "unexpected character '@'"), "@",
                 id="unexpected-character"),
    pytest.param("late_deliveries and 1",
                 apology(37, "'and' left operand must be boolean, got number"), "and",
                 id="and-on-numbers"),
    pytest.param("true or late_deliveries",
                 apology(26, "'or' right operand must be boolean, got number"), "or",
                 id="or-on-number"),
    pytest.param("not late_deliveries", apology(21, "'not' operand must be boolean, got number"),
                 "not", id="not-on-number"),
    pytest.param("late_deliveries", apology(21, "the rule must give a boolean, it gives a number"),
                 "late_deliveries", id="condition-gives-number"),
    pytest.param("late_deliveries in [1, 'a']",
                 apology(44, "list item 'a' is a string, the operand a number"), "'a'",
                 id="mixed-list"),
    pytest.param("late_deliveries in [1, late_deliveries]",
                 apology(44, "a list may hold only literal values"), "late_deliveries]",
                 id="non-literal-in-list"),
    pytest.param("late_deliveries between 1 and 'a'",
                 apology(37, "'between' needs three numbers or three timestamps, got number, "
                             "number, string"), "between", id="between-types"),
    pytest.param("coalesce(late_deliveries, 'a') > 1",
                 apology(21, "coalesce needs arguments of one type, got number and string"),
                 "coalesce", id="coalesce-types"),
    pytest.param("days_since(late_deliveries) > 1",
                 apology(21, "its argument must be timestamp, got number"), "days_since",
                 id="function-argument-type"),
    pytest.param("late_deliveries + now > 1", apology(43, "cannot compare timestamp with number"),
                 ">", id="timestamp-vs-number"),
])
def test_rule_errors_point_into_the_rule(text, message, points_at):
    check(rule(text), message, points_at)


@pytest.mark.parametrize("old, new, message, points_at", [
    pytest.param('value: "lifetime_spend / 10"', 'value: "lifetime_spend > 10"',
                 "small.yaml:85:13: actions[2].value (action 'gold_upgrade'): the rule must give "
                 "a number, it gives a boolean", "lifetime_spend", id="value-rule-gives-boolean"),
    pytest.param('value: "lifetime_spend / 10"', 'value: "last_category"',
                 "small.yaml:85:13: actions[2].value (action 'gold_upgrade'): the rule must give "
                 "a number, it gives a string", "last_category", id="value-rule-gives-string"),
    pytest.param(APPLY, "    applicability: late_deliveries >= 'x'\n",
                 apology(36, "cannot compare number with string"), ">=", id="plain-scalar-rule"),
    pytest.param(APPLY, '    applicability: " "\n',
                 apology(20, "expected a non-empty string, got ' '"), '" "', id="blank-rule"),
    pytest.param(APPLY, '    applicability: ""\n',
                 apology(20, "expected a non-empty string, got ''"), '""', id="empty-rule"),
    pytest.param(APPLY, "    applicability: 5\n",
                 apology(20, "expected a non-empty string, got 5"), "5", id="number-rule"),
    pytest.param('    value: 30\n', '    value: ""\n',
                 "small.yaml:93:12: actions[3].value (action 'delivery_apology'): expected a "
                 "non-empty string, got ''", '""', id="empty-value-rule"),
    pytest.param('    value: 30\n', '    value: true\n',
                 "small.yaml:93:12: actions[3].value (action 'delivery_apology'): expected a "
                 "number, got True", "true", id="bool-value"),
    pytest.param(APPLY, '    applicability: "' + "1 + (" * 33 + "1" + ")" * 33 + ' > 1"\n',
                 apology(28, "the rule is nested too deeply here: it holds 33 values at once, "
                             "the most is 32 (nest on the left: (a + b) + c holds fewer than "
                             "a + (b + c))"), "+ (1", id="too-deep"),
])
def test_more_rule_errors(old, new, message, points_at):
    check(edit(old, new), message, points_at)


# ---------------------------------------------------------------------------------------------
# RuleError straight from rules.parse with a resolver

NAMES = {
    "x": Ref("profile", 0, NUM, name="x"),
    "tier": Ref("profile", 1, STR, ("none", "gold"), "tier"),
    "seen": Ref("profile", 2, TIME, name="seen"),
    "flag": Ref("profile", 3, BOOL, name="flag"),
    "now": Ref("now", 0, TIME, name="now"),
}


@pytest.mark.parametrize("text, want, column, reason", [
    pytest.param("", BOOL, 1, "empty rule", id="empty"),
    pytest.param("   ", BOOL, 1, "empty rule", id="blank"),
    pytest.param("y > 1", BOOL, 1, "unknown name 'y'", id="unknown-name"),
    pytest.param("x > 1 and y > 1", BOOL, 11, "unknown name 'y'", id="unknown-name-column"),
    pytest.param("foo(x) > 1", BOOL, 1, f"unknown function 'foo' (functions: {FUNCTIONS})",
                 id="unknown-function"),
    pytest.param("max(x) > 1", BOOL, 1, "max() takes 2 arguments, got 1", id="arity"),
    pytest.param("log1p(x, x) > 1", BOOL, 1, "log1p() takes 1 argument, got 2", id="arity-one"),
    pytest.param("x == 'a'", BOOL, 3, "cannot compare number with string", id="type-mismatch"),
    pytest.param("tier == 1", BOOL, 6, "cannot compare string with number", id="type-mismatch-2"),
    pytest.param("tier == 'platinum'", BOOL, 9,
                 "'platinum' is not a value of tier (values: none, gold)", id="vocabulary"),
    pytest.param("tier in ['gold', 'silver']", BOOL, 18,
                 "'silver' is not a value of tier (values: none, gold)", id="vocabulary-list"),
    pytest.param("tier == 'gold", BOOL, 9, "unterminated string", id="unterminated-single"),
    pytest.param('tier == "gold', BOOL, 9, "unterminated string", id="unterminated-double"),
    pytest.param("x > 1 x", BOOL, 7, "unexpected 'x'", id="unexpected-name"),
    pytest.param(")", BOOL, 1, "unexpected ')'", id="unexpected-paren"),
    pytest.param("x >", BOOL, 4, "unexpected end of rule", id="unexpected-end"),
    pytest.param("x = 1", BOOL, 3, "unexpected character '='", id="single-equals"),
    pytest.param("x between 1", BOOL, 12, "expected 'and', found end of rule", id="between"),
    pytest.param("x and flag", BOOL, 3, "'and' left operand must be boolean, got number",
                 id="and-on-number"),
    pytest.param("flag and x", BOOL, 6, "'and' right operand must be boolean, got number",
                 id="and-right-number"),
    pytest.param("-tier == 1", BOOL, 1, "'-' operand must be number, got string", id="negate"),
    pytest.param("flag > true", BOOL, 6, "a boolean can only be compared with == or !=",
                 id="bool-ordering"),
    pytest.param("seen > 1", BOOL, 6, "cannot compare timestamp with number", id="time-vs-num"),
    pytest.param("min(seen, x) > 1", BOOL, 1, "its arguments must be number, got timestamp",
                 id="min-of-timestamp"),
    pytest.param("flag in [true]", BOOL, 6, "'in' operand must be number or string, got boolean",
                 id="in-on-bool"),
    pytest.param("x between 1 and seen", BOOL, 3,
                 "'between' needs three numbers or three timestamps, got number, number, "
                 "timestamp", id="between-mixed"),
    pytest.param("x > 1", NUM, 1, "the rule must give a number, it gives a boolean",
                 id="value-gives-boolean"),
    pytest.param("tier", NUM, 1, "the rule must give a number, it gives a string",
                 id="value-gives-string"),
    pytest.param("now - seen", BOOL, 1, "the rule must give a boolean, it gives a number",
                 id="condition-gives-number"),
])
def test_parse_errors(text, want, column, reason):
    with pytest.raises(RuleError) as exc:
        parse(text, NAMES.get, lambda s: 0, want)
    assert (exc.value.column, exc.value.reason) == (column, reason)
    assert str(exc.value) == f"column {column}: {reason}"
    assert isinstance(exc.value, KairosError) and isinstance(exc.value, ValueError)


# ---------------------------------------------------------------------------------------------
# Input errors from DecisionEngine

# small.yaml plus an int field, a timestamp field, a free-text field and more context types
RICH = edit('      amount: {type: float}\n  purchase:',
            '      amount: {type: float}\n      quantity: {type: int, required: false}\n'
            '  purchase:')
RICH = edit('      status: {type: string, values: [shipped, delayed, lost, delivered]}\n',
            '      status: {type: string, values: [shipped, delayed, lost, delivered]}\n'
            '      shipped_at: {type: timestamp, required: false}\n'
            '      note: {type: string, required: false}\n', RICH)
RICH = edit('  basket_value: {type: float}\n',
            '  basket_value: {type: float}\n  visits: {type: int}\n  returning: {type: bool}\n'
            '  last_seen: {type: timestamp}\n', RICH)
EVENTS = "page_view, add_to_cart, purchase, delivery_update, profile_updated"
CONTEXT = "device, basket_value, visits, returning, last_seen"
NOT_ISO = "expected epoch seconds or an ISO-8601 timestamp with a zone, got "
BUY = {"amount": 10.0, "category": "shoes"}


@pytest.fixture(scope="module")
def rich():
    return compile_catalog(load_catalog(RICH, "rich.yaml"))


@pytest.fixture
def engine(rich) -> DecisionEngine:
    return DecisionEngine(rich)


def input_error(call, *args, **kwargs) -> InputError:
    with pytest.raises(InputError) as exc:
        call(*args, **kwargs)
    return exc.value


@pytest.mark.parametrize("customer, etype, when, attrs, field, reason", [
    pytest.param("c", "page_vue", T, {}, "type",
                 f"unknown event type 'page_vue' (declared: {EVENTS})", id="unknown-event-type"),
    pytest.param("c", None, T, {}, "type", f"unknown event type None (declared: {EVENTS})",
                 id="no-event-type"),
    pytest.param("c", "page_view", T, {"category": "shoes", "colour": "red"},
                 "attributes.colour", "unknown field of page_view (fields: category, price)",
                 id="unknown-field"),
    pytest.param("c", "purchase", T, {"amount": 1.0}, "attributes.category",
                 "required field of purchase is missing", id="missing-required-field"),
    pytest.param("c", "purchase", T, {"amount": None, "category": "shoes"}, "attributes.amount",
                 "required field of purchase is missing", id="required-field-none"),
    pytest.param("c", "purchase", T, None, "attributes.amount",
                 "required field of purchase is missing", id="no-attributes"),
    pytest.param("c", "purchase", T, {**BUY, "amount": "12"}, "attributes.amount",
                 "expected a number, got str '12'", id="string-for-float"),
    pytest.param("c", "purchase", T, {**BUY, "amount": True}, "attributes.amount",
                 "expected a number, got bool True", id="bool-for-float"),
    pytest.param("c", "purchase", T, {**BUY, "amount": math.nan}, "attributes.amount",
                 "must be a finite number, got nan", id="nan-float"),
    pytest.param("c", "purchase", T, {**BUY, "amount": math.inf}, "attributes.amount",
                 "must be a finite number, got inf", id="inf-float"),
    pytest.param("c", "purchase", T, {**BUY, "amount": -math.inf}, "attributes.amount",
                 "must be a finite number, got -inf", id="minus-inf-float"),
    pytest.param("c", "add_to_cart", T, {"amount": 1.0, "quantity": 2.5}, "attributes.quantity",
                 "expected an integer, got 2.5", id="float-for-int"),
    pytest.param("c", "add_to_cart", T, {"amount": 1.0, "quantity": "2"}, "attributes.quantity",
                 "expected an integer, got str '2'", id="string-for-int"),
    pytest.param("c", "add_to_cart", T, {"amount": 1.0, "quantity": True}, "attributes.quantity",
                 "expected an integer, got bool True", id="bool-for-int"),
    pytest.param("c", "add_to_cart", T, {"amount": 1.0, "quantity": math.nan},
                 "attributes.quantity", "must be a finite number, got nan", id="nan-int"),
    pytest.param("c", "profile_updated", T, {"tier": "gold", "email_opt_in": 1},
                 "attributes.email_opt_in", "expected true or false, got int 1",
                 id="int-for-bool"),
    pytest.param("c", "profile_updated", T, {"tier": "gold", "email_opt_in": "true"},
                 "attributes.email_opt_in", "expected true or false, got str 'true'",
                 id="string-for-bool"),
    pytest.param("c", "page_view", T, {"category": 3}, "attributes.category",
                 "expected a string, got int 3", id="number-for-string"),
    pytest.param("c", "page_view", T, {"category": "socks"}, "attributes.category",
                 "'socks' is not one of shoes, bags, hats", id="outside-vocabulary"),
    pytest.param("c", "delivery_update", T, {"status": "LOST"}, "attributes.status",
                 "'LOST' is not one of shipped, delayed, lost, delivered",
                 id="vocabulary-is-case-sensitive"),
    pytest.param("c", "delivery_update", T, {"status": "lost", "note": "x" * 1025},
                 "attributes.note", "at most 1024 characters, got 1025", id="string-too-long"),
    pytest.param("c", "delivery_update", T, {"status": "lost", "shipped_at": "last tuesday"},
                 "attributes.shipped_at", NOT_ISO + "'last tuesday'", id="timestamp-field-bad"),
    pytest.param("c", "delivery_update", T,
                 {"status": "lost", "shipped_at": "2026-01-01T00:00:00"}, "attributes.shipped_at",
                 NOT_ISO + "'2026-01-01T00:00:00'", id="timestamp-field-without-zone"),
    pytest.param("c", "delivery_update", T, {"status": "lost", "shipped_at": math.nan},
                 "attributes.shipped_at", "must be a finite timestamp, got nan",
                 id="timestamp-field-nan"),
    pytest.param("c", "delivery_update", T, {"status": "lost", "shipped_at": True},
                 "attributes.shipped_at", "expected a timestamp, got bool True",
                 id="timestamp-field-bool"),
    pytest.param("c", "delivery_update", T, {"status": "lost", "shipped_at": -1},
                 "attributes.shipped_at",
                 "timestamp -1 is outside 1970..2088-01-19 (epoch seconds)",
                 id="timestamp-field-negative"),
    pytest.param("c", "page_view", math.nan, {"category": "shoes"}, "time",
                 "must be a finite timestamp, got nan", id="time-nan"),
    pytest.param("c", "page_view", math.inf, {"category": "shoes"}, "time",
                 "must be a finite timestamp, got inf", id="time-inf"),
    pytest.param("c", "page_view", -math.inf, {"category": "shoes"}, "time",
                 "must be a finite timestamp, got -inf", id="time-minus-inf"),
    pytest.param("c", "page_view", -5, {"category": "shoes"}, "time",
                 "timestamp -5 is outside 1970..2088-01-19 (epoch seconds)", id="time-negative"),
    pytest.param("c", "page_view", -0.5, {"category": "shoes"}, "time",
                 "timestamp -0.5 is outside 1970..2088-01-19 (epoch seconds)",
                 id="time-negative-float"),
    pytest.param("c", "page_view", 4_102_444_800, {"category": "shoes"}, "time",
                 "timestamp 4102444800 is outside 1970..2088-01-19 (epoch seconds)",
                 id="time-2100"),
    pytest.param("c", "page_view", "yesterday", {"category": "shoes"}, "time",
                 NOT_ISO + "'yesterday'", id="time-not-iso"),
    pytest.param("c", "page_view", "2026-01-01T00:00:00", {"category": "shoes"}, "time",
                 NOT_ISO + "'2026-01-01T00:00:00'", id="time-without-zone"),
    pytest.param("c", "page_view", True, {"category": "shoes"}, "time",
                 "expected a timestamp, got bool True", id="time-bool"),
    pytest.param("c", "page_view", None, {"category": "shoes"}, "time",
                 "expected a timestamp, got NoneType None", id="time-none"),
    pytest.param("", "page_view", T, {"category": "shoes"}, "customer_id",
                 "expected a non-empty string, got str ''", id="empty-customer"),
    pytest.param(None, "page_view", T, {"category": "shoes"}, "customer_id",
                 "expected a non-empty string, got NoneType None", id="no-customer"),
    pytest.param(42, "page_view", T, {"category": "shoes"}, "customer_id",
                 "expected a non-empty string, got int 42", id="int-customer"),
    # an anonymous profile's id ("~<alias type>:<alias value>") may be 290 characters
    pytest.param("c" * 291, "page_view", T, {"category": "shoes"}, "customer_id",
                 "at most 290 characters, got 291", id="long-customer"),
])
def test_event_errors(engine, customer, etype, when, attrs, field, reason):
    err = input_error(engine.encode_event, customer, etype, when, attrs)
    assert (err.field, err.reason) == (field, reason)
    assert str(err) == f"{field}: {reason}"
    assert isinstance(err, KairosError) and isinstance(err, ValueError)
    assert len(engine.table) == 0


@pytest.mark.parametrize("context, field, reason", [
    pytest.param({"colour": "red"}, "context.colour",
                 f"unknown context key (declared: {CONTEXT})", id="unknown-key"),
    pytest.param({"device": "watch"}, "context.device", "'watch' is not one of desktop, mobile",
                 id="outside-vocabulary"),
    pytest.param({"device": 3}, "context.device", "expected a string, got int 3",
                 id="number-for-string"),
    pytest.param({"basket_value": "10"}, "context.basket_value",
                 "expected a number, got str '10'", id="string-for-float"),
    pytest.param({"basket_value": True}, "context.basket_value",
                 "expected a number, got bool True", id="bool-for-float"),
    pytest.param({"basket_value": math.nan}, "context.basket_value",
                 "must be a finite number, got nan", id="nan"),
    pytest.param({"basket_value": math.inf}, "context.basket_value",
                 "must be a finite number, got inf", id="inf"),
    pytest.param({"basket_value": -math.inf}, "context.basket_value",
                 "must be a finite number, got -inf", id="minus-inf"),
    pytest.param({"visits": 1.5}, "context.visits", "expected an integer, got 1.5",
                 id="float-for-int"),
    pytest.param({"returning": 1}, "context.returning", "expected true or false, got int 1",
                 id="int-for-bool"),
    pytest.param({"last_seen": "yesterday"}, "context.last_seen", NOT_ISO + "'yesterday'",
                 id="bad-timestamp"),
])
def test_context_errors(engine, context, field, reason):
    err = input_error(engine.encode_context, context)
    assert (err.field, err.reason) == (field, reason)
    assert str(err) == f"{field}: {reason}"
    err = input_error(engine.decide, "c", "web", context=context, now=T)
    assert (err.field, err.reason) == (field, reason)
    assert len(engine.table) == 0  # the customer was not even activated


def test_context_none_values_mean_absent(engine):
    row = engine.encode_context({"device": None, "basket_value": None})
    assert all(math.isnan(v) for v in row)


@pytest.mark.parametrize("args, kwargs, field, reason", [
    pytest.param(("c", "sms"), {}, "channel", "unknown channel 'sms' (channels: web, email)",
                 id="unknown-channel"),
    pytest.param(("c", None), {}, "channel", "unknown channel None (channels: web, email)",
                 id="no-channel"),
    pytest.param(("c", "web", "footer"), {}, "placement",
                 "unknown placement 'footer' of web (placements: hero, sidebar)",
                 id="unknown-placement"),
    pytest.param(("c", "web", "weekly"), {}, "placement",
                 "unknown placement 'weekly' of web (placements: hero, sidebar)",
                 id="placement-of-another-channel"),
    pytest.param(("c", "web"), {"max_actions": -1}, "max_actions",
                 "must be 0 (the placement's top_k) or more, got -1", id="negative-max-actions"),
    pytest.param(("c", "web"), {"now": math.nan}, "now", "must be a finite timestamp, got nan",
                 id="now-nan"),
    pytest.param(("c", "web"), {"now": -1.0}, "now",
                 "timestamp -1.0 is outside 1970..2088-01-19 (epoch seconds)", id="now-negative"),
    pytest.param(("c", "web"), {"now": "now"}, "now", NOT_ISO + "'now'", id="now-not-iso"),
    pytest.param(("", "web"), {}, "customer_id", "expected a non-empty string, got str ''",
                 id="empty-customer"),
])
def test_decide_errors(engine, args, kwargs, field, reason):
    err = input_error(engine.decide, *args, **{"now": T, **kwargs})
    assert (err.field, err.reason) == (field, reason)
    assert str(err) == f"{field}: {reason}"
    assert len(engine.table) == 0


GOOD_OUTCOME = ("c", "track_order", "web", "accept", T, None)


@pytest.mark.parametrize("outcome, field, reason", [
    pytest.param(("c", "nope", "web", "accept", T, None), "action_id", "unknown action 'nope'",
                 id="unknown-action"),
    pytest.param(("c", "track_order", "email", "accept", T, None), "action_id",
                 "action 'track_order' is not offered on email", id="not-offered"),
    pytest.param(("c", "track_order", "sms", "accept", T, None), "channel",
                 "unknown channel 'sms' (channels: web, email)", id="unknown-channel"),
    pytest.param(("c", "track_order", "web", "clicked", T, None), "outcome",
                 "unknown outcome 'clicked' (outcomes: impression, accept, reject, ignore, "
                 "convert)", id="unknown-outcome"),
    pytest.param(("c", "track_order", "web", 7, T, None), "outcome",
                 "unknown outcome 7 (outcomes: impression, accept, reject, ignore, convert)",
                 id="unknown-outcome-code"),
    pytest.param(("c", "track_order", "web", None, T, None), "outcome",
                 "unknown outcome None (outcomes: impression, accept, reject, ignore, convert)",
                 id="no-outcome"),
    pytest.param(("c", "track_order", "web", "accept", math.nan, None), "time",
                 "must be a finite timestamp, got nan", id="time-nan"),
    pytest.param(("c", "track_order", "web", "accept", "soon", None), "time",
                 NOT_ISO + "'soon'", id="time-not-iso"),
    pytest.param(("", "track_order", "web", "accept", T, None), "customer_id",
                 "expected a non-empty string, got str ''", id="empty-customer"),
])
def test_outcome_errors_apply_nothing(engine, outcome, field, reason):
    err = input_error(engine.record_outcomes, [GOOD_OUTCOME, outcome])
    assert (err.field, err.reason) == (field, reason)
    assert str(err) == f"{field}: {reason}"
    assert engine.models.positives.sum() == 0 and engine.models.negatives.sum() == 0
    assert len(engine.table) == 0


# ---------------------------------------------------------------------------------------------
# A batch with one bad event applies nothing


def encode_all(engine, events):
    """What a shard does with a batch: validate every event before applying any."""
    return [engine.encode_event(*event) for event in events]


def test_bad_event_in_a_batch_applies_nothing(impl, small):
    engine = DecisionEngine(small)
    batch = [("a", "purchase", T, BUY), ("b", "page_view", T, {"category": "shoes"}),
             ("a", "purchase", T + 1, {"amount": math.nan, "category": "shoes"}),
             ("c", "add_to_cart", T + 2, {"amount": 1.0})]
    with pytest.raises(InputError) as exc:
        engine.apply(encode_all(engine, batch))
    assert str(exc.value) == "attributes.amount: must be a finite number, got nan"
    assert len(engine.table) == 0
    assert "a" not in engine.table and "b" not in engine.table


def test_bad_event_in_a_batch_leaves_profiles_unchanged(impl, small):
    engine = DecisionEngine(small)
    engine.apply(encode_all(engine, [("a", "purchase", T, BUY),
                                     ("a", "page_view", T, {"category": "bags"})]))
    before = engine.profile("a", T + 10)
    values = engine.table.values.copy()
    batch = [("a", "purchase", T + 5, {"amount": 99.0, "category": "hats"}),
             ("a", "page_view", T + 5, {"category": "hats"}),
             ("b", "page_view", T + 5, {"category": "shoes"}),
             ("a", "page_view", "not a time", {"category": "hats"})]
    with pytest.raises(InputError) as exc:
        engine.apply(encode_all(engine, batch))
    assert (exc.value.field, exc.value.reason) == ("time", NOT_ISO + "'not a time'")
    assert engine.profile("a", T + 10) == before
    assert before["features"]["orders"] == 1.0 and before["features"]["last_category"] == "bags"
    assert len(engine.table) == 1 and "b" not in engine.table
    assert np.array_equal(engine.table.values, values, equal_nan=True)


def test_bad_outcome_in_a_batch_leaves_history_unchanged(impl, small):
    engine = DecisionEngine(small)
    engine.record_outcomes([GOOD_OUTCOME])
    history = engine.history("c")
    positives = engine.models.positives.copy()
    with pytest.raises(InputError):
        engine.record_outcomes([GOOD_OUTCOME, ("c", "track_order", "web", "bad", T, None)])
    assert engine.history("c") == history
    assert (engine.models.positives == positives).all()


# ---------------------------------------------------------------------------------------------
# Corner cases that once escaped as raw exceptions or pointed at the wrong place: YAML
# constructs and tags, huge numbers, keys, timestamps without a zone, escapes, block scalars.


@pytest.mark.parametrize("text, message", [
    pytest.param("kairos_catalog: 1\nname: \"x\nversion: 1\n",
                 "small.yaml:4:1: invalid YAML: found unexpected end of stream (while scanning "
                 "a quoted scalar that starts at 2:7)", id="unclosed-quote"),
    pytest.param(edit('    value: 30\n', '    value: [30\n'),
                 "small.yaml:94:7: invalid YAML: expected ',' or ']', but got ':' (while parsing "
                 "a flow sequence that starts at 93:12)", id="unclosed-bracket"),
])
def test_invalid_yaml_names_where_the_construct_began(text, message):
    assert str(catalog_error(text)) == message


@pytest.mark.parametrize("text, message", [
    pytest.param("kairos_catalog: 1\nname: !!python/object:os.system x\n",
                 "small.yaml:2:7: invalid YAML: could not determine a constructor for the tag "
                 "'tag:yaml.org,2002:python/object:os.system'", id="python-tag"),
    pytest.param("kairos_catalog: 1\nname: !custom x\n",
                 "small.yaml:2:7: invalid YAML: could not determine a constructor for the tag "
                 "'!custom'", id="custom-tag"),
    pytest.param("kairos_catalog: 1\nname: !!float abc\n",
                 "small.yaml:2:7: invalid YAML: 'abc' is not a float", id="bad-float-tag"),
    pytest.param("kairos_catalog: 1\nname: !!timestamp abc\n",
                 "small.yaml:2:7: invalid YAML: 'abc' is not a timestamp", id="bad-timestamp-tag"),
    pytest.param("kairos_catalog: 1\n? [a]\n: x\n",
                 "small.yaml:2:3: keys must be strings, got a list", id="list-key"),
])
def test_yaml_construction_errors_are_catalog_errors(text, message):
    assert str(catalog_error(text)) == message


def test_duplicate_key_inside_action_names_the_action():
    check(edit('    value: 30\n', '    value: 30\n    value: 31\n'),
          "small.yaml:94:5: actions[3].value (action 'delivery_apology'): duplicate key 'value'",
          "value: 31")


@pytest.mark.parametrize("written", ["2020-12-01T00:00:00", "2020-12-01"])
def test_unquoted_timestamp_without_zone_is_an_error(written):
    check(edit('"2020-12-01T00:00:00Z"', written),
          f"small.yaml:107:19: actions[5].valid.from (action 'winter_sale'): expected an ISO-8601 "
          f"timestamp with a zone such as 2026-01-01T00:00:00Z, got {written}", written)


def test_format_version_true_is_rejected():
    check(edit('kairos_catalog: 1', 'kairos_catalog: true'),
          "small.yaml:1:17: kairos_catalog: unsupported catalog format True (this Kairos reads 1)",
          "true")


@pytest.mark.parametrize("written, shown", [
    pytest.param("", "nothing", id="null"),
    pytest.param("{a: 1}", "a mapping", id="mapping"),
    pytest.param("1.10", "1.1", id="float"),
])
def test_version_must_be_a_string(written, shown):
    check(edit('version: "t1"', f"version: {written}".rstrip()),
          f"small.yaml:3:{10 if written else 9}: version: expected a string such as "
          f"\"2026.11.1\" (quote it), got {shown}", None)


@pytest.mark.parametrize("written, message", [
    pytest.param("history: 5", "small.yaml:127:10: history: expected a mapping, got 5",
                 id="int"),
    pytest.param("history: {}", "small.yaml:127:10: history: missing required key 'size'",
                 id="empty"),
])
def test_history_wrong_shape(written, message):
    check(edit('fallbacks:', f"{written}\nfallbacks:"), message, written[9:])


@pytest.mark.parametrize("policy, history, message", [
    pytest.param("max_impressions", 8,
                 "small.yaml:65:32: actions[0].contact_policy.max_impressions.count (action "
                 "'cart_reminder'): must be at most history.size (8), got 9: contact policies "
                 "count in the customer's last 8 interactions, all actions' together",
                 id="impressions"),
    pytest.param("suppress_after_rejects", None,
                 "small.yaml:66:39: actions[0].contact_policy.suppress_after_rejects.count "
                 "(action 'cart_reminder'): must be at most history.size (32), got 33: contact "
                 "policies count in the customer's last 32 interactions, all actions' together",
                 id="rejects-default-size"),
])
def test_a_policy_count_past_the_history_ring(policy, history, message):
    """The ring is all a contact policy sees: a count past its size would never trip."""
    def with_count(count: int) -> str:
        text = edit(f"{policy}: {{count: 2,", f"{policy}: {{count: {count},")
        if history is None:
            return text
        return edit("fallbacks:", f"history: {{size: {history}}}\nfallbacks:", text)

    size = history or DEFAULT_HISTORY_SIZE
    check(with_count(size + 1), message, f"{size + 1},")
    compile_text(with_count(size))
    # a catalog the cluster took up before this check (saved, running) still runs: only one
    # coming in new is refused (PutCatalog, ValidateCatalog, the CLI)
    running = compiled_from_text(with_count(size + 1))
    assert str(running.catalog.refusals[0]).endswith(message.split(": ", 1)[1])
    with pytest.raises(CatalogError, match="must be at most history.size"):
        compiled_from_text(with_count(size + 1), strict=True)


@pytest.mark.parametrize("old, new, message", [
    pytest.param('    value: 30\n', f'    value: {10 ** 400}\n',
                 f"small.yaml:93:12: actions[3].value (action 'delivery_apology'): expected a "
                 f"finite number, got {10 ** 400}", id="number"),
    pytest.param('half_life: 7d}', f'half_life: {10 ** 400}}}',
                 f"small.yaml:42:64: features.views_7d.half_life: expected a positive duration "
                 f"such as 30m, 2h or 7d, got {10 ** 400}", id="duration"),
    pytest.param('attributes: {margin: 0.4}', f'attributes: {{margin: {10 ** 400}}}',
                 f"small.yaml:75:26: actions[1].attributes.margin (action 'shoes_promo'): "
                 f"expected a finite number, got {10 ** 400}", id="action-attribute"),
])
def test_huge_catalog_numbers(old, new, message):
    check(edit(old, new), message, None)


@pytest.mark.parametrize("old, new, prefix", [
    pytest.param('hero: {top_k: 1}', 'hero: {top_k: 9999999999999}',
                 "small.yaml:7:21: channels.web.placements.hero.top_k: must be at most ",
                 id="top-k"),
    pytest.param('max_impressions: {count: 2,', 'max_impressions: {count: 9999999999999,',
                 "small.yaml:65:32: actions[0].contact_policy.max_impressions.count (action "
                 "'cart_reminder'): must be at most ", id="impression-count"),
])
def test_huge_integers(old, new, prefix):
    assert str(catalog_error(edit(old, new))).startswith(prefix)


@pytest.mark.parametrize("old, new, message, points_at", [
    pytest.param('when: {status: [delayed, lost]}', 'when: {state: [delayed, lost]}',
                 "small.yaml:51:65: features.late_deliveries.when.state: unknown field of "
                 "delivery_update 'state'", "state", id="when-field"),
    pytest.param('    consent: {marketing: email_opt_in}',
                 '    consent: {marketting: email_opt_in}',
                 "small.yaml:10:15: channels.email.consent.marketting: unknown purpose "
                 "'marketting' (purposes: marketing, service)", "marketting",
                 id="channel-consent-purpose"),
    pytest.param('method: none', 'method: none\n    groups: {retian: {variance_scale: 1}}',
                 "small.yaml:117:14: arbitration.exploration.groups.retian: unknown action group "
                 "'retian' (did you mean 'retain'?)", "retian", id="exploration-group"),
    pytest.param('    serve: {base_rate: 0.5}', '    serv: {base_rate: 0.5}',
                 "small.yaml:126:5: models.groups.serv: unknown action group 'serv' (did you "
                 "mean 'serve'?)", "serv", id="model-group"),
    pytest.param('  orders: {kind: count, event: purchase}', '  tier: {kind: count, event: '
                                                             'purchase}',
                 "small.yaml:44:3: features.tier: 'tier' is already an attribute", "tier",
                 id="feature-shadows-attribute"),
])
def test_key_errors_point_at_the_key(old, new, message, points_at):
    check(edit(old, new), message, points_at)


def test_consent_false():
    check(edit('  service: true', '  service: false'),
          "small.yaml:54:12: consent.service: expected true or the name of a bool attribute, "
          "got false", "false")


@pytest.mark.parametrize("written", [
    "'late_deliveries >= ''x'' or sinc > 1'",
    '"last_category == \\"shoes\\" and sinc > 1"',
])
def test_rule_column_after_yaml_escapes(written):
    line = f"    applicability: {written}"
    check(edit(APPLY, line + "\n"), apology(line.index("sinc") + 1, "unknown name 'sinc'"),
          "sinc")


@pytest.mark.parametrize("style", [">-", "|"])
def test_rule_in_block_scalar(style):
    text = edit(APPLY, f"    applicability: {style}\n      late_deliveries >= 'x'\n")
    check(text, "small.yaml:93:23: actions[3].applicability (action 'delivery_apology'): cannot "
                "compare number with string", ">=")


@pytest.mark.parametrize("style", [">", "|", ">-", "|+"])
def test_rule_error_on_a_later_line_of_a_block_scalar(style):
    text = edit(APPLY, f"    applicability: {style}\n      late_deliveries >= 1 and\n\n"
                       f"      sinc > 2\n")
    check(text, "small.yaml:95:7: actions[3].applicability (action 'delivery_apology'): unknown "
                "name 'sinc'", "sinc")


def test_call_without_arguments():
    with pytest.raises(RuleError) as exc:
        parse("known()", NAMES.get, lambda s: 0, BOOL)
    assert str(exc.value) == "column 1: known() takes 1 argument, got 0"


def test_backslash_in_string():
    with pytest.raises(RuleError) as exc:
        parse("tier == 'go\\ld'", NAMES.get, lambda s: 0, BOOL)
    assert str(exc.value) == "column 12: backslashes are not allowed in strings"


@pytest.mark.parametrize("text, column", [
    ("coalesce(tier, 'none') == 'platinum'", 27),
    ("coalesce(tier, 'platinum') == 'gold'", 16),
])
def test_vocabulary_through_coalesce(text, column):
    with pytest.raises(RuleError) as exc:
        parse(text, NAMES.get, lambda s: 0, BOOL)
    assert str(exc.value) == f"column {column}: 'platinum' is not a value of tier (values: none, " \
                             f"gold)"


@pytest.mark.parametrize("call, field", [
    pytest.param(lambda e: e.encode_event("c", "purchase", T, {**BUY, "amount": 2 ** 1024}),
                 "attributes.amount", id="field"),
    pytest.param(lambda e: e.encode_event("c", "purchase", 2 ** 1024, BUY), "time", id="time"),
    pytest.param(lambda e: e.encode_context({"basket_value": 2 ** 1024}), "context.basket_value",
                 id="context"),
])
def test_huge_int_input(engine, call, field):
    err = input_error(call, engine)
    assert err.field == field
    assert err.reason.startswith("must be a finite")


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+00:00", "9999-01-01T00:00:00+00:00"])
def test_iso_time_outside_range(engine, when):
    err = input_error(engine.encode_event, "c", "page_view", when, {"category": "shoes"})
    assert (err.field, err.reason) == ("time", f"timestamp {when!r} is outside 1970..2088-01-19")


@pytest.mark.parametrize("value, shown", [("2", "str '2'"), (1.5, "float 1.5"),
                                          (10 ** 12, f"int {10 ** 12}")])
def test_max_actions_type(engine, value, shown):
    err = input_error(engine.decide, "c", "web", now=T, max_actions=value)
    assert err.field == "max_actions"
    assert err.reason.startswith("expected an integer") or err.reason.startswith("must be at most")
    assert shown.split()[-1] in err.reason


def test_bool_outcome(engine):
    err = input_error(engine.record_outcomes, [("c", "track_order", "web", True, T, None)])
    assert str(err) == "outcome: unknown outcome True (outcomes: impression, accept, reject, " \
                       "ignore, convert)"


def test_more_predictors_than_the_kernel_holds_is_a_catalog_error():
    """The validator says so, with where: not the engine at shard start."""
    from kairos.core.catalog import MAX_PREDICTORS
    declared = len(load_catalog(SMALL, "small.yaml").models.predictors)

    def with_more(n: int) -> str:
        return edit("  predictors:\n", "  predictors:\n" + "".join(
            f"    - {{name: orders, equals: {i + 1000}}}\n" for i in range(n)))
    compile_text(with_more(MAX_PREDICTORS - declared))  # up to the limit
    err = catalog_error(with_more(MAX_PREDICTORS - declared + 1))
    assert err.path == "models.predictors"
    assert err.reason == (f"at most {MAX_PREDICTORS} predictors (the kernel's models hold "
                          f"{MAX_PREDICTORS + 1} inputs with the intercept), got "
                          f"{MAX_PREDICTORS + 1}")


def test_a_repeated_predictor_is_a_catalog_error_naming_both_positions():
    err = catalog_error(edit("    - {name: tier, equals: gold}\n",
                             "    - {name: tier, equals: gold}\n"
                             "    - {name: tier, equals: gold}\n"))
    assert err.path == "models.predictors[4]"
    assert err.reason == "repeats predictor tier=='gold' (position 3)"
