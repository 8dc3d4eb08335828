"""What a catalog within its documented bounds may still ask of a shard: model memory, the
history's channel column, a decision's selection re-runs, and numbers that multiply into a
priority. Each is refused at load or compile time with the figure, not found at run time."""
from __future__ import annotations

import math

import pytest
import yaml

from bench.workload import yaml_text
from kairos.core.catalog import (MAX_CHANNELS, MAX_MODEL_BYTES, MAX_NUMBER, MAX_SELECTION_WORK,
                                 MAX_UCB_ALPHA, MAX_VARIANCE_SCALE, load_catalog)
from kairos.core.compiler import compile_catalog, compiled_from_text
from kairos.core.engine import DecisionEngine
from kairos.core.errors import CatalogError

from tests.unit.core.test_catalog_checks import web_action
from tests.unit.core.test_value_learning import SMALL, T0



def refusal(text: str) -> CatalogError:
    with pytest.raises(CatalogError) as exc:
        compile_catalog(load_catalog(text, "small.yaml"))
    return exc.value


def edit(old: str, new: str, text: str = SMALL) -> str:
    assert text.count(old) == 1
    return text.replace(old, new, 1)


def many_channels(n: int) -> str:
    """small.yaml with n channels more, each with a fallback list (every channel needs one)."""
    extra = "".join(f"  c{i}: {{placements: {{p: {{top_k: 1}}}}}}\n" for i in range(n))
    text = edit("channels:\n  web:\n", "channels:\n" + extra + "  web:\n")
    doc = yaml.safe_load(text)
    doc["fallbacks"].update({f"c{i}": [] for i in range(n)})
    return yaml_text(doc)


# -- the history ring's channel column is an int8 -------------------------------------------

def test_more_channels_than_the_history_can_name_are_refused():
    assert MAX_CHANNELS == 127
    compile_catalog(load_catalog(many_channels(MAX_CHANNELS - 2), "small.yaml"))  # 127 in all
    error = refusal(many_channels(MAX_CHANNELS - 1))
    assert error.path == "channels"
    assert "more than 127 channels (128 given)" in str(error)


def test_a_saved_catalog_of_more_channels_still_starts_with_the_refusal_named():
    """Its channels past the 127th wrap onto others in the history (c129's impressions
    counted as c1's), so it never worked; refused at a restart, though, its store could not
    start at all, not even to be given another catalog (the saved one is taken up first), so
    it runs as it always did, warned of, until it is replaced (review rev41 d-core2)."""
    text = many_channels(MAX_CHANNELS - 1)
    loaded = load_catalog(text, "saved.yaml", strict=False)
    assert [e.path for e in loaded.refusals] == ["channels"]
    assert "the channels past the 127th share others' history" in str(loaded.refusals[0])
    compile_catalog(loaded)


# -- model memory --------------------------------------------------------------------------

def vector_catalog(n_actions: int, n_channels: int) -> str:
    """small.yaml with n_channels channels more, whose models read a context vector of 63
    inputs (64 coefficients, full), with n_actions more actions on web."""
    doc = yaml.safe_load(many_channels(n_channels))
    doc["context"]["emb"] = {"type": "vector", "size": 63, "min": -1, "max": 1}
    doc["models"]["predictors"] = [{"name": "emb", "source": "context"}]
    doc["models"]["posterior"] = "full"
    doc["actions"] += [web_action(i) for i in range(n_actions)]
    doc["arbitration"]["exploration"] = {"method": "none"}
    return yaml_text(doc)


def test_a_catalog_whose_models_outgrow_the_budget_is_refused_with_the_figure():
    # 1,006 actions x 20 channels x 64 coefficients, full: 8 x (2 x (64 + 4096 + 4) + 4096)
    # bytes a model, 1.86 GiB in all, under the 2 GiB...
    assert MAX_MODEL_BYTES == 2 * 2**30
    compiled = compile_catalog(load_catalog(vector_catalog(1_000, 18), "small.yaml"))
    assert (compiled.n_models, compiled.n_predictors, compiled.full_posterior) == \
        (20_120, 64, True)
    # ...and 1,106 of them 2.05 GiB: refused before any shard allocates them
    error = refusal(vector_catalog(1_100, 18))
    assert error.path == "models"
    assert "models need 2.0 GiB for 1,106 actions x 20 channels x 64 coefficients " \
           "(full posterior); the most is 2 GiB" in str(error)


def test_a_saved_catalog_past_a_later_bound_still_loads():
    """The bounds came after catalogs could be saved: a restart is never refused its
    catalog (load_catalog's strict=False), a catalog coming in new is."""
    text = vector_catalog(1_100, 18).replace("method: none", "method: ucb\n    ucb_alpha: 50")
    loaded = load_catalog(text, "small.yaml", strict=False)
    assert [e.path for e in loaded.refusals] == ["arbitration.exploration.ucb_alpha", "models",
                                                 "models.predictors"]


# -- a decision's selection re-runs ----------------------------------------------------------

def samples_catalog(n_web: int, samples: int, method: str = "thompson",
                    top_k: int = 3) -> str:
    doc = yaml.safe_load(SMALL)
    doc["actions"] += [web_action(i) for i in range(n_web)]
    doc["arbitration"]["exploration"] = {"method": method, "selection_samples": samples}
    doc["channels"]["web"]["placements"]["sidebar"]["top_k"] = top_k
    return yaml_text(doc)


def test_selection_samples_times_a_channels_actions_and_top_k_is_bounded():
    """A re-run fills each of top_k slots by a pass over the actions, about 1.2 ns x
    (15 + top_k) an action here: 2,048 actions x 128 samples took 4.4 ms at top_k 3 and
    336 ms at top_k 1,024, when only samples x actions was bounded."""
    # small.yaml offers 6 actions on web, the sidebar 3 of them: 759 in all x 256 samples
    # x (15 + 3) is 3,497,472
    assert MAX_SELECTION_WORK == 3_500_000
    compile_catalog(load_catalog(samples_catalog(753, 256), "small.yaml"))
    error = refusal(samples_catalog(753, 512))
    assert error.path == "arbitration.exploration.selection_samples"
    assert "selection_samples x actions x (15 + top_k) on channel 'web' is 512 x 759 x " \
           "(15 + 3) = 6,994,944; the most is 3,500,000, about 4 to 7 ms a decision" \
        in str(error)
    # the same samples and actions at top_k 64: 79 passes, not 18
    error = refusal(samples_catalog(753, 256, top_k=64))
    assert "is 256 x 759 x (15 + 64) = 15,350,016" in str(error)


def test_a_top_k_past_the_channels_actions_counts_its_actions():
    # 6 actions on web: a re-run fills at most 6 slots, whatever the sidebar's top_k
    compile_catalog(load_catalog(samples_catalog(0, 27_777, top_k=1_024), "small.yaml"))
    error = refusal(samples_catalog(0, 27_778, top_k=1_024))
    assert "is 27778 x 6 x (15 + 6) = 3,500,028" in str(error)


def test_a_policy_that_draws_nothing_at_random_runs_no_samples_and_is_not_bounded():
    compile_catalog(load_catalog(samples_catalog(1_012, 65_536, "none"), "small.yaml"))
    text = samples_catalog(1_012, 65_536, "ucb").replace(
        "selection_samples: 65536", "selection_samples: 65536\n    trial_rate: 0.0")
    compile_catalog(load_catalog(text, "small.yaml"))
    refusal(text.replace("trial_rate: 0.0", "trial_rate: 0.01"))


# -- numbers that multiply into a priority -------------------------------------------------

@pytest.mark.parametrize("old, new, path", [
    ("    value: 8\n", "    value: 1.0e+13\n", "actions[1].value"),
    ("    value: 8\n", "    value: -1.0e+13\n", "actions[1].value"),
    ("    value: 8\n", "    value: 8\n    lever: 1.0e+13\n", "actions[1].lever"),
    ("{group: retain, weight: 2.0}", "{group: retain, weight: 1.0e+13}",
     "arbitration.context_weights[1].weight"),
])
def test_values_levers_and_context_weights_are_bounded(old, new, path):
    error = refusal(edit(old, new))
    assert error.path == path
    assert "must be at" in str(error) and "1e+12" in str(error)


def weights(*extra: str, first: str = "1.5", text: str = SMALL) -> str:
    return edit("    - {group: retain, weight: 2.0}\n",
                "".join(f"    - {{{w}}}\n" for w in extra),
                text.replace("when: {device: mobile}, weight: 1.5}",
                             f"when: {{device: mobile}}, weight: {first}}}"))


def test_context_weights_that_can_match_together_may_not_multiply_past_the_bound():
    # with the one on web for sell (1.5): 1.5e12 on web for sell
    error = refusal(weights("channel: web, weight: 1.0e+6", "group: sell, weight: 1.0e+6"))
    assert error.path == "arbitration.context_weights"
    assert "weights that can match together may multiply to 1.5e+12 on channel 'web' (group " \
           "'sell'); the most is 1e+12 (of weights whose `when` names different values of " \
           "one context field, only the largest counts)" in str(error)
    # one on email never meets the one on web: 1e12 at most
    compile_catalog(load_catalog(weights("channel: email, weight: 1.0e+6",
                                         "group: sell, weight: 1.0e+6"), "small.yaml"))
    # a weight under 1 only ever lowers a priority: 1e12 at most
    compile_catalog(load_catalog(weights("channel: web, weight: 1.0e+6",
                                         "group: sell, weight: 1.0e+6", first="0.5"),
                                 "small.yaml"))


def regions(n: int, weight: float, group: str = "group: sell, ") -> str:
    """small.yaml with a context field of 40 regions and one weight for each of n of them."""
    text = edit("  basket_value: {type: float}\n",
                "  basket_value: {type: float}\n  region: {type: string, values: [%s]}\n"
                % ", ".join(f"r{i}" for i in range(40)))
    return weights(*(f"{group}when: {{region: r{i}}}, weight: {weight}" for i in range(n)),
                   text=text)


def test_weights_for_different_values_of_one_context_field_never_multiply():
    """A request holds one region: of one weight per region only one ever matches, so 26
    weights of 3 reach 3 (x 1.5 on web, mobile), not 3^26 = 2.5e12. They were refused."""
    for n, weight in ((26, 3.0), (40, 2.0), (13, 10.0)):
        compile_catalog(load_catalog(regions(n, weight), "small.yaml"))
    # on every group, or on a group's channel, alike
    compile_catalog(load_catalog(regions(26, 3.0, group=""), "small.yaml"))
    compile_catalog(load_catalog(regions(26, 3.0, group="channel: web, group: sell, "),
                                 "small.yaml"))
    # mobile's and desktop's weights are alternatives as well: 1e6 x 1.5 on web, mobile
    compile_catalog(load_catalog(weights("group: sell, when: {device: mobile}, weight: 1.0e+6",
                                         "group: sell, when: {device: desktop}, weight: 1.0e+6"),
                                 "small.yaml"))


def test_weights_that_a_request_can_match_together_still_multiply():
    # region r0 and mobile can both match a request: 1e6 x 1e6 x 1.5
    text = regions(1, 1.0e6)
    error = refusal(text.replace("    - {group: sell, when: {region: r0}, weight: 1000000.0}\n",
                                 "    - {group: sell, when: {region: r0}, weight: 1000000.0}\n"
                                 "    - {group: sell, when: {device: mobile}, weight: 1.0e+6}\n"))
    assert "may multiply to 1.5e+12 on channel 'web' (group 'sell')" in str(error)
    # so do two for one region, a weight naming two fields with one of them
    error = refusal(regions(1, 1.0e6).replace(
        "    - {group: sell, when: {region: r0}, weight: 1000000.0}\n",
        "    - {group: sell, when: {region: r0}, weight: 1000000.0}\n"
        "    - {group: sell, when: {region: r0, device: mobile}, weight: 1.0e+6}\n"))
    assert "may multiply to 1.5e+12" in str(error)
    # and a region's weight with one naming no region: 3 (one region's) x 5e11 x 1.5
    error = refusal(regions(26, 3.0).replace("    - {group: sell, when: {region: r0}",
                                             "    - {group: sell, weight: 5.0e+11}\n"
                                             "    - {group: sell, when: {region: r0}"))
    assert "may multiply to 2.25e+12 on channel 'web' (group 'sell')" in str(error)


def test_past_a_thousand_weights_x_groups_a_groups_weights_are_bounded_apart():
    """Weighed together, channels x groups x weights would make a catalog of many weights slow
    to check: past 1,000 weights for every group x groups named, a group's own are bounded
    apart from those, and the two multiplied, whatever their `when`."""
    def catalog(n_common: int) -> str:
        text = edit("  basket_value: {type: float}\n",
                    "  basket_value: {type: float}\n  region: {type: string}\n")
        return weights("group: sell, when: {region: r0}, weight: 1.0e+6",
                       *(f"when: {{region: r{i}}}, weight: 1.0e+6" for i in range(1, n_common + 1)),
                       text=text)
    compile_catalog(load_catalog(catalog(1_000), "small.yaml"))  # one region's: 1.5e6
    error = refusal(catalog(1_001))
    assert "may multiply to 1.5e+12 on channel 'web' (group 'sell'); the most is 1e+12 (of " \
           "weights whose `when` names different values of one context field, only the " \
           "largest counts; the weights for every group bounded apart from the group's own, " \
           "as there are so many)" in str(error)


# -- exploration ---------------------------------------------------------------------------

@pytest.mark.parametrize("setting, path", [
    ("variance_scale: 100.5", "arbitration.exploration.variance_scale"),
    ("method: ucb\n    ucb_alpha: 10.5", "arbitration.exploration.ucb_alpha"),
    ("groups: {sell: {variance_scale: 1.0e+308}}",
     "arbitration.exploration.groups.sell.variance_scale"),
])
def test_exploration_reaches_at_most_ten_posterior_deviations(setting, path):
    """Past them a draw or a bonus swamps what a model learnt; 1e308 broke nothing visible
    but was taken as is."""
    assert (MAX_VARIANCE_SCALE, MAX_UCB_ALPHA) == (100.0, 10.0)
    at_most = setting.replace("100.5", "100").replace("10.5", "10").replace("1.0e+308", "100")
    compile_catalog(load_catalog(edit("    method: none\n", f"    {at_most}\n"), "small.yaml"))
    error = refusal(edit("    method: none\n", f"    {setting}\n"))
    assert error.path == path
    assert "must be at most" in str(error)
    # one saved before the bound still runs with it
    saved = load_catalog(edit("    method: none\n", f"    {setting}\n"), "small.yaml",
                         strict=False)
    assert [e.path for e in saved.refusals] == [path]


# -- rule literals -------------------------------------------------------------------------

@pytest.mark.parametrize("literal", ["1e999", "1e13", "1" + "0" * 400, "99999999999999999w"])
def test_a_rule_number_past_the_bound_is_a_rule_error_naming_action_and_position(literal):
    error = refusal(edit('    value: "lifetime_spend / 10"\n',
                        f'    value: "lifetime_spend / {literal}"\n'))
    assert error.action_id == "gold_upgrade"
    assert error.path == "actions[2].value"
    assert f"number out of range: {literal[:10]}" in str(error)
    assert "(at most 1e+12)" in str(error)
    # line 85: `    value: "` takes 12 columns, `lifetime_spend / ` 17 more
    assert (error.line, error.column) == (85, 12 + 17 + 1)


def test_a_rule_number_at_the_bound_is_accepted():
    compile_catalog(load_catalog(edit('    value: "lifetime_spend / 10"\n',
                                      '    value: "lifetime_spend / 1e12"\n'), "small.yaml"))


# -- what a value rule gives, and the learned value ------------------------------------------

def track_order_engine(value: str) -> DecisionEngine:
    text = edit("    applicability: \"known(since_purchase) and since_purchase < 14d\"\n"
                "    value: 2\n",
                "    applicability: \"known(since_purchase) and since_purchase < 14d\"\n"
                f"    value: \"{value}\"\n")
    return DecisionEngine(compile_catalog(load_catalog(text, "small.yaml")))


def decide_after_purchase(engine: DecisionEngine, customer: str, amount: float):
    engine.apply([engine.encode_event(customer, "purchase", T0 - 60,
                                      {"amount": amount, "category": "bags"})])
    return engine.decide(customer, "web", "hero", {"basket_value": 40.0}, now=T0, explain=True)


def test_a_value_rule_result_past_the_bound_is_an_invalid_value(impl):
    """Within the bound a value rule's numbers still multiply past it (1e12 x 10): such a
    result is as invalid as a non-finite one, or weights and levers take it to inf."""
    engine = track_order_engine("max_order * 10")
    ok = decide_after_purchase(engine, "ana", MAX_NUMBER / 10)
    assert [(a.action_id, a.value) for a in ok.actions] == [("track_order", MAX_NUMBER)]
    over = decide_after_purchase(engine, "zoe", MAX_NUMBER)
    assert over.actions == ()
    dropped = {d.action_id: d.reason for d in over.explanation.dropped}
    assert dropped["track_order"] == "INVALID_VALUE"


def test_the_learned_value_does_not_overflow_where_prior_weight_x_value_would(impl):
    """The blend weighs the catalog's value by its share: (w x value + sum) / (w + n) made
    1e300 x 1e12 inf first, and the action's value and priority inf, after one convert. (A
    catalog's prior_weight is at most 1e12, so only a compiled catalog set by hand gets
    there now.)"""
    engine = track_order_engine("1e12")
    engine.compiled.value_prior_weight = 1e300
    engine = DecisionEngine(engine.compiled)
    first = decide_after_purchase(engine, "ana", 20.0)
    assert [a.value for a in first.actions] == [MAX_NUMBER]
    engine.record_outcomes([("ana", "track_order", "web", "convert", T0 + 1,
                             first.decision_id, 1.0)])
    after = decide_after_purchase(engine, "zoe", 20.0)
    assert [a.action_id for a in after.actions] == ["track_order"]
    assert math.isfinite(after.actions[0].priority)
    assert after.actions[0].value == pytest.approx(MAX_NUMBER)


def test_a_saved_catalog_keeps_its_values_past_the_bound(impl):
    """A catalog saved before values were bounded runs as it did, a non-finite value its only
    invalid one: with 1e12 its bound, its action of value 5e12 would never rank again."""
    for value, shown in (("5.0e+12", 5.0e12), ('"2e12"', 2.0e12), ('"max(2e12, 1) * 3"', 6e12)):
        text = edit("    value: 8\n", f"    value: {value}\n")
        with pytest.raises(CatalogError):
            load_catalog(text, "saved.yaml")
        engine = DecisionEngine(compiled_from_text(text, "saved.yaml"))
        engine.apply([engine.encode_event("ana", "page_view", T0 - 60,
                                          {"category": "shoes", "price": 10.0})])
        decision = engine.decide("ana", "web", "hero", {}, now=T0)
        assert [(a.action_id, a.value) for a in decision.actions] == [("shoes_promo", shown)]
