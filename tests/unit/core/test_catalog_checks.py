"""Catalogs that validated yet asked for what a decision cannot give: context weights and
models whose work grows with every decision, an empty placement list read as every
placement, fallbacks shown where a decision would not show them, and YAML 1.1 numbers read
with another value than the one written (review rev43, catalog)."""
from __future__ import annotations

import pytest
import yaml

from bench.workload import yaml_text
import kairos.core.catalog as catalog_module
from kairos.core.catalog import (MAX_CONTEXT_WEIGHTS, MAX_MODEL_WORK, MAX_WEIGHT_WORK,
                                 default_catalog_text, load_catalog, load_default_catalog)
from kairos.core.compiler import compile_catalog
from kairos.core.errors import CatalogError
from kairos.core.request import fallback_decision

from tests.unit.core.test_value_learning import SMALL



def web_action(i: int, group: str = "g") -> dict:
    """Action a<i> on web, in `group`."""
    return {"id": f"a{i}", "group": group, "purpose": "service", "value": 1,
            "channels": {"web": {"treatment": "t"}}}


def refused(text: str) -> CatalogError:
    with pytest.raises(CatalogError) as exc:
        load_catalog(text, "small.yaml")
    return exc.value


def edit(old: str, new: str, text: str = SMALL) -> str:
    assert text.count(old) == 1
    return text.replace(old, new, 1)


def with_doc(change) -> str:
    doc = yaml.safe_load(SMALL)
    change(doc)
    return yaml_text(doc)  # libyaml's: thousands of actions took seconds with PyYAML's own


# -- context weights ---------------------------------------------------------------------------

def weighted(n_groups: int, n_weights: int) -> str:
    """small.yaml (its 3 groups and 2 weights) with n_groups more groups of one action each
    and n_weights more weights of 1 for every group."""
    def change(doc):
        doc["actions"] += [web_action(i, f"g{i}") for i in range(n_groups)]
        doc["arbitration"]["context_weights"] += [{"weight": 1}] * n_weights
    return with_doc(change)


def test_context_weights_times_the_groups_they_multiply_into_are_bounded():
    """Each weight that matches multiplies into every group (the kernel's _context_weights):
    5,000 groups x 40,000 weights of 1 took 53 ms a decision, and weights of 1 never trip the
    bound on what weights multiply to."""
    assert MAX_WEIGHT_WORK == 4_000_000
    # 2,003 groups; on web each of 1,996 weights is looked at, the first's one condition
    # tested, and each multiplied into every group: 1,996 + 1 + 1,996 x 2,003 = 3,999,985
    load_catalog(weighted(2_000, 1_994), "small.yaml")
    error = refused(weighted(2_000, 1_995))
    assert error.path == "arbitration.context_weights" and error.line > 0
    assert "context weights cost 4,001,989 steps a decision on channel 'web' (1,997 weights, " \
           "1,997 of them on it, each multiplied into 2,003 groups); the most is 4,000,000" \
           in str(error)


def test_the_context_weights_are_counted():
    assert MAX_CONTEXT_WEIGHTS == 2_000
    load_catalog(weighted(0, MAX_CONTEXT_WEIGHTS - 2), "small.yaml")
    error = refused(weighted(0, MAX_CONTEXT_WEIGHTS - 1))
    assert error.path == "arbitration.context_weights"
    assert "more than 2,000 context weights (2,001 given)" in str(error)
    # a catalog saved before the bound still loads, the refusal named
    saved = load_catalog(weighted(0, MAX_CONTEXT_WEIGHTS - 1), "small.yaml", strict=False)
    assert [e.path for e in saved.refusals] == ["arbitration.context_weights"]


# -- models ------------------------------------------------------------------------------------

def modelled(n_actions: int, posterior: str, method: str = "thompson") -> str:
    """small.yaml with n_actions more on web, scored by a context vector of 63 inputs."""
    def change(doc):
        doc["context"]["emb"] = {"type": "vector", "size": 63, "min": -1, "max": 1}
        doc["models"]["predictors"] = [{"name": "emb", "source": "context"}]
        doc["models"]["posterior"] = posterior
        doc["actions"] += [web_action(i, "g0") for i in range(n_actions)]
        doc["arbitration"]["exploration"] = {"method": method, "selection_samples": 1}
    return with_doc(change)


def test_a_channels_actions_times_their_models_inputs_are_bounded():
    """A full posterior's deviation is a quadratic form of the inputs per action: 2,000
    actions x 64 inputs took 13 ms a decision."""
    assert MAX_MODEL_WORK == 3_500_000
    load_catalog(modelled(848, "full"), "small.yaml")  # 854 on web x 64 x 64: 3,497,984
    error = refused(modelled(849, "full"))
    assert error.path == "models.predictors"
    assert "scoring channel 'web' costs 855 actions x 64 x 64 (full posterior) inputs = " \
           "3,502,080 steps a decision; the most is 3,500,000" in str(error)
    # a diagonal posterior reads each input twice where explored, and no exploration reads
    # no deviation: 906 actions would cost 3,710,976 steps with a full one, explored
    load_catalog(modelled(900, "diagonal"), "small.yaml")
    load_catalog(modelled(900, "full", "none"), "small.yaml")


def test_an_explored_diagonal_posterior_reads_each_input_twice(monkeypatch):
    monkeypatch.setattr(catalog_module, "MAX_MODEL_WORK", 20_000)
    load_catalog(modelled(150, "diagonal"), "small.yaml")  # 156 on web x 2 x 64: 19,968
    error = refused(modelled(151, "diagonal"))
    assert "157 actions x 2 x 64 (diagonal posterior, explored) inputs = 20,096" in str(error)
    assert "posterior: diagonal" not in str(error)  # it is one


def test_the_default_catalog_is_within_the_decision_budgets():
    catalog = load_default_catalog()
    assert not catalog.refusals


# -- an offer's placements ---------------------------------------------------------------------

def test_an_empty_placement_list_is_refused_not_read_as_every_placement():
    text = edit("      web: {treatment: track_widget}\n",
                "      web: {treatment: track_widget, placements: []}\n")
    error = refused(text)
    assert (error.action_id, error.path) == ("track_order", "actions[4].channels.web.placements")
    assert (error.line, error.column) == (98, 50)
    assert "must not be empty" in str(error)


# -- fallbacks ---------------------------------------------------------------------------------

WINTER_SALE_AS_SERVICE = ("purpose: marketing\n    channels:\n      web: {treatment: winter",
                          "purpose: service\n    channels:\n      web: {treatment: winter")


@pytest.mark.parametrize("fallbacks, action, path, reason", [
    ("web: [track_order]\n  email: [cart_reminder]", "cart_reminder", "fallbacks.email[0]",
     "its purpose 'marketing' needs consent, which a fallback cannot check"),
    ("web: [winter_sale]\n  email: []", "winter_sale", "fallbacks.web[0]",
     "it has a validity window, which a fallback cannot check"),
    ("web: [delivery_apology, shoes_promo]\n  email: []", "shoes_promo", "fallbacks.web[1]",
     "its purpose 'marketing' needs consent"),
])
def test_a_fallback_must_be_safe_for_any_customer_at_any_time(fallbacks, action, path, reason):
    """The gateway serves a fallback without rules or a profile: an opted-out customer was
    sent cart_reminder, and winter_sale was shown years after it ended."""
    text = edit(*WINTER_SALE_AS_SERVICE)
    error = refused(edit("web: [track_order]\n  email: []", fallbacks, text))
    assert (error.action_id, error.path) == (action, path)
    assert error.line == (129 if "email[" in path else 128)
    assert reason in str(error)


def test_a_fallback_shows_only_where_it_is_offered_and_at_most_the_placements_top_k():
    """A fallback is served at whichever placement asked: the shipped catalog's web fallback
    showed generic_welcome (offered at hero only) at sidebar and checkout, and two actions at
    hero, whose top_k is 1."""
    compiled = compile_catalog(load_default_catalog())
    shown = {placement: [a.action_id for a in fallback_decision(compiled, "c", "web",
                                                                placement).actions]
             for placement in ("hero", "sidebar", "checkout", "account")}
    assert shown == {"hero": ["generic_welcome"], "sidebar": [], "checkout": [],
                     "account": ["service_menu"]}


def test_a_fallback_shows_at_most_the_actions_the_caller_asked_for():
    both = ("fallbacks:\n  web: [generic_welcome, service_menu]",
            "fallbacks:\n  web: [track_order, help_center_article]")
    compiled = compile_catalog(load_catalog(default_catalog_text().replace(*both)))
    assert len(fallback_decision(compiled, "c", "web", "sidebar").actions) == 2  # top_k 3
    assert [a.action_id for a in fallback_decision(compiled, "c", "web", "sidebar", 1).actions] \
        == ["track_order"]


# -- YAML 1.1 numbers --------------------------------------------------------------------------

@pytest.mark.parametrize("old, new, path, column, read", [
    ("cooldown_after_accept: 1d", "cooldown_after_accept: 1:30",
     "actions[0].contact_policy.cooldown_after_accept", 30, "'1:30' reads as 90"),
    ("window: 1d}", "window: 1:00:00}", "actions[0].contact_policy.max_impressions.window", 43,
     "'1:00:00' reads as 3600"),
    ("    value: 30\n", "    value: 010\n", "actions[3].value", 12, "'010' reads as 8"),
    ("max_impressions: {count: 2,", "max_impressions: {count: 0x2,",
     "actions[0].contact_policy.max_impressions.count", 32, "'0x2' reads as 2"),
    ("value: 8\n", "value: 1_000\n", "actions[1].value", 12, "'1_000' reads as 1000"),
])
def test_a_number_in_a_yaml_1_1_form_is_refused_where_written(old, new, path, column, read):
    error = refused(edit(old, new))
    assert error.path == path
    assert error.column == column
    assert read in str(error) and "write numbers in plain decimal" in str(error)
    assert error.action_id is not None


def test_plain_decimal_numbers_read_as_written():
    text = edit("    value: 30\n", "    value: -0.5e+1\n")
    text = edit("weight: 2.0}", "weight: +2.}", text)
    catalog = load_catalog(text, "small.yaml")
    assert catalog.actions[3].value == -5.0
    assert catalog.arbitration.context_weights[1].weight == 2.0
    compile_catalog(catalog)


def test_a_saved_catalog_with_a_yaml_1_1_number_still_loads():
    saved = load_catalog(edit("cooldown_after_accept: 1d", "cooldown_after_accept: 1:30"),
                         "small.yaml", strict=False)
    assert saved.actions[0].contact_policy.accept_cooldown_s == 90.0
    assert [e.action_id for e in saved.refusals] == ["cart_reminder"]


# -- smaller checks ----------------------------------------------------------------------------

def test_a_numeric_action_attribute_is_held_to_the_bound_of_values():
    """Past 1e12 every decision dropped the action (INVALID_VALUE), unnoticed at validation."""
    error = refused(edit("attributes: {margin: 0.4}", "attributes: {margin: 5.0e+12}"))
    assert (error.action_id, error.path) == ("shoes_promo", "actions[1].attributes.margin")
    assert "must be at most 1e+12" in str(error)
    load_catalog(edit("attributes: {margin: 0.4}", "attributes: {margin: -1.0e+12}"),
                 "small.yaml")


def test_a_features_when_needs_a_value():
    error = refused(edit("when: {status: [delayed, lost]}", "when: {status: []}"))
    assert (error.path, error.line) == ("features.late_deliveries.when.status", 51)
    assert "must not be empty" in str(error)


@pytest.mark.parametrize("old, new, path", [
    ("  member_since: {type: timestamp}\n", "  between: {type: timestamp}\n",
     "attributes.between"),
    ("  orders: {kind: count", "  and: {kind: count, event: purchase}\n  orders: {kind: count",
     "features.and"),
    ("  basket_value: {type: float}\n", "  basket_value: {type: float}\n  in: {type: float}\n",
     "context.in"),
])
def test_a_rule_keyword_is_no_name(old, new, path):
    """A rule reading it failed with "unexpected 'between'", which did not say why."""
    error = refused(edit(old, new))
    assert error.path == path
    assert f"'{path.split('.')[1]}' is a rule keyword, so no rule could read it" in str(error)


@pytest.mark.parametrize("old, new", [
    ("window: 1d}", "window: \"\uff11d\"}"),  # a fullwidth one
    ("late_deliveries >= 1", "late_deliveries >= \u0661"),  # an Arabic-Indic one
])
def test_digits_are_ascii(old, new):
    """float() reads "１" and "١" as 1, the schema's and the kernel's digits do not: a new
    catalog is refused, and one saved before still loads and runs as it did."""
    assert "digits are ASCII ones" in str(refused(edit(old, new)))
    compile_catalog(load_catalog(edit(old, new), "small.yaml", strict=False))


def test_a_rule_may_hold_any_unicode_space():
    """As catalogs were saved with (a no-break space pasted into a rule)."""
    compile_catalog(load_catalog(edit("late_deliveries >= 1", "late_deliveries\u00a0>=\u30001"),
                                 "small.yaml"))


def test_a_merge_key_is_said_to_be_unsupported():
    text = edit("  - id: track_order\n", "  - <<: {lever: 2}\n    id: track_order\n")
    error = refused(text)
    assert (error.line, error.column) == (94, 5)
    assert str(error).endswith("merge keys (<<) are not supported: write the keys out, or put "
                               "an alias where the whole value goes")


AGENT_TEXT = ("web: {treatment: track_widget}",
              'web: {treatment: track_widget, agent_text: "a%sb"}')


@pytest.mark.parametrize("old, new, char", [
    ("name: small-test", 'name: "a\\u2028test"', "#x2028 (LINE SEPARATOR)"),
    ("name: small-test", 'name: "a\\u200btest"', "#x200b (ZERO WIDTH SPACE)"),
    ("name: small-test", 'name: "a\\u200ftest"', "#x200f (RIGHT-TO-LEFT MARK)"),
    ("name: small-test", 'name: "a\\u061ctest"', "#x061c (ARABIC LETTER MARK)"),
    (AGENT_TEXT[0], AGENT_TEXT[1] % "\\u2029", "#x2029 (PARAGRAPH SEPARATOR)"),
    (AGENT_TEXT[0], AGENT_TEXT[1] % "\\ufeff", "#xfeff (ZERO WIDTH NO-BREAK SPACE)"),
])
def test_line_breaking_and_invisible_characters_are_refused(old, new, char):
    """They broke lines or hid text in logs and the console. A name is one line: no mark."""
    error = refused(edit(old, new))
    assert f"character {char} at 2" in str(error)


def test_an_agent_text_keeps_the_joiners_and_marks_its_words_need():
    text = edit(AGENT_TEXT[0], AGENT_TEXT[1] % "\\u200c\\u200d\\u200e\\u200f\\u061c")
    load_catalog(text, "small.yaml")


@pytest.mark.parametrize("change, valid", [
    (lambda d: d.update(timers={"t": {"start": "add_to_cart", "after": 1800,
                                      "fire": "quiet"}}), True),
    (lambda d: d["actions"][0]["contact_policy"]["max_impressions"].update(window=" 2h "), True),
    (lambda d: d["channels"]["web"]["placements"]["hero"].update(top_k=1025), False),
    (lambda d: d["actions"][1]["attributes"].update(margin="x" * 5_000), False),
    (lambda d: d["actions"][1]["attributes"].update(margin=2e12), False),
    (lambda d: d["attributes"].update(visits={"type": "int", "default": 1.5}), False),
    (lambda d: d["attributes"].update(visits={"type": "int", "default": 2}), True),
], ids=["timer-after-seconds", "duration-spaces", "top-k", "attribute-text", "attribute-number",
        "int-default", "int-default-whole"])
def test_the_schema_agrees_with_the_loader(change, valid):
    """Editors showed errors on catalogs Kairos takes and none on some it refuses."""
    from tests.unit.core.test_catalog_schema import as_json, validator
    doc = yaml.safe_load(SMALL)
    doc["events"]["quiet"] = {"fields": {}}  # what a timer may fire
    change(doc)
    text = yaml.safe_dump(doc, sort_keys=False)
    errors = list(validator().iter_errors(as_json(yaml.safe_load(text))))
    assert (errors == []) == valid
    try:
        load_catalog(text, "small.yaml")
    except CatalogError:
        assert not valid
    else:
        assert valid
