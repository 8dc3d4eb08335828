"""Control groups: a channel's `control` share of decisions shows one action drawn uniformly
from the eligible ones, and every decision's selection probabilities are the mixture's."""
from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pytest
import yaml

from kairos.core.catalog import CatalogError
from kairos.core.compiler import compiled_from_text
from kairos.core.engine import DecisionEngine

T0 = 1_800_000_000.0


def catalog(control: float | None, samples: int = 256, method: str = "thompson") -> str:
    """Six actions on web (two slots): a0-a2 uncertain and eligible, a3 never eligible, a4
    worth nothing (lever 0), a5 on email only; email has no control group."""
    web = {"placements": {"hero": {"top_k": 2}}}
    if control is not None:
        web["control"] = control
    actions = [{"id": f"a{i}", "group": "offers", "purpose": "service",
                "channels": {"web": {"treatment": f"t{i}"}}, "value": 1 + i / 10}
               for i in range(5)]
    actions[3]["eligibility"] = "false"
    actions[4]["lever"] = 0.0
    actions.append({"id": "a5", "group": "offers", "purpose": "service",
                    "channels": {"email": {"treatment": "t5"}}, "value": 1})
    return yaml.safe_dump({
        "kairos_catalog": 1, "name": "control", "version": "1",
        "channels": {"web": web, "email": {"placements": {"inbox": {"top_k": 1}}}},
        "context": {"x": {"type": "vector", "size": 2, "min": -10, "max": 10}},
        "events": {"seen": {"fields": {}}}, "consent": {"service": True},
        "arbitration": {"exploration": {"method": method, "variance_scale": 1.0,
                                        "trial_rate": 0.0, "selection_samples": samples},
                        "allow_multiple": ["offers"]},
        "actions": actions,
        "models": {"predictors": [{"name": "x", "source": "context"}],
                   "prior": {"base_rate": 0.3, "precision": 1.0}},
        "fallbacks": {"web": [], "email": []}})


def decisions(text: str, n: int, channel: str = "web", seed: int = 5):
    engine = DecisionEngine(compiled_from_text(text), seed=seed)
    placement = "hero" if channel == "web" else "inbox"
    return [engine.decide("ana", channel, placement, {"x": [0.5, -1.0]}, now=T0 + i)
            for i in range(n)]


def test_a_share_of_decisions_is_held_back_and_shows_one_eligible_action_uniformly(impl):
    share, n = 0.3, 1000
    made = decisions(catalog(share), n)
    held = [d for d in made if d.control]
    sd = math.sqrt(share * (1 - share) / n)
    assert abs(len(held) / n - share) <= 4 * sd
    assert all(len(d.actions) == 1 for d in held)
    shown = Counter(d.actions[0].action_id for d in held)
    # a3 fails its rule, a4 is worth nothing, a5 is not on web: control never shows them
    assert set(shown) == {"a0", "a1", "a2"}
    for count in shown.values():
        assert abs(count / len(held) - 1 / 3) <= 4 * math.sqrt(2 / 9 / len(held))
    assert not any(d.control for d in decisions(catalog(share), 200, channel="email"))


def test_a_held_decision_explains_itself(impl):
    engine = DecisionEngine(compiled_from_text(catalog(0.5)), seed=5)
    for i in range(40):
        d = engine.decide("ana", "web", "hero", {"x": [0.5, -1.0]}, now=T0 + i, explain=True)
        if d.control:
            break
    assert d.control
    details = {x.action_id: x.detail for x in d.explanation.dropped if x.reason == "TOP_K"}
    # the two eligible actions not drawn; a4, worth nothing, never ranks (priority 0)
    assert len(details) == 2 and all("held back as control" in v for v in details.values())
    assert {x.action_id: x.reason for x in d.explanation.dropped}["a4"] == "RESTRAINT"


def test_selection_probabilities_are_the_mixtures_and_match_what_is_shown(impl):
    """Each action's share of the first slot, over control and model decisions alike, is
    within error of its mean estimated probability there, and the estimates sum to 1."""
    share, samples, n = 0.3, 256, 600
    made = decisions(catalog(share, samples), n)
    shown, estimates = Counter(), defaultdict(list)
    for d in made:
        first = d.actions[0]
        shown[first.action_id] += 1
        estimates[first.action_id].append(first.selection)
        assert first.selection >= share / 3 - 1e-12  # control alone shows it this often
        for later in d.actions[1:]:  # control never fills a later slot
            assert later.selection <= 1 - share + 1e-12
    assert len(shown) == 3
    total = 0.0
    for action, count in shown.items():
        p = float(np.mean(estimates[action]))
        total += p
        # binomial error of the share, Monte Carlo error of the estimates, and the bias of
        # counting the decision's own run (at most 1 / (samples + 1))
        error = math.sqrt(max(p * (1 - p), 0.01) / n) + 0.5 / math.sqrt(samples * count) \
            + 1 / (samples + 1)
        assert abs(count / n - p) <= 4 * error, (action, count / n, p)
    assert abs(total - 1.0) <= 0.05


def test_without_draws_a_held_decision_is_exact(impl):
    """With no exploration the models' choice is certain: a held decision's action has
    probability s/3 (control) plus 1 - s if it is also the models' first choice."""
    share = 0.5
    made = decisions(catalog(share, method="none"), 300)
    model_first = next(d.actions[0].action_id for d in made if not d.control)
    for d in made:
        first = d.actions[0]
        expected = share / 3 + (1 - share) * (first.action_id == model_first)
        assert first.selection == pytest.approx(expected, abs=1e-12)


def test_no_control_share_changes_nothing(impl):
    a = decisions(catalog(None), 50)
    b = decisions(catalog(0.0), 50)
    assert not any(d.control for d in a + b)
    assert [[(x.action_id, x.selection) for x in d.actions] for d in a] == \
        [[(x.action_id, x.selection) for x in d.actions] for d in b]


@pytest.mark.parametrize("value", [-0.1, 0.6, "many"])
def test_a_control_share_out_of_bounds_is_refused_with_its_path(value):
    text = catalog(0.1).replace("control: 0.1", f"control: {value}")
    with pytest.raises(CatalogError, match=r"channels\.web\.control"):
        compiled_from_text(text)


def test_a_decision_with_nothing_eligible_is_held_back_as_often_and_shows_nothing(impl):
    """The coin is tossed whatever is eligible: tossed only when something was, every
    decision nothing could be shown in fell in the models' group, and the uplift compared a
    group with such decisions to one without."""
    share, n = 0.3, 1000
    text = yaml.safe_dump({**yaml.safe_load(catalog(share)), "actions": [
        {**a, "eligibility": "false"} for a in yaml.safe_load(catalog(share))["actions"]]})
    made = decisions(text, n)
    held = [d for d in made if d.control]
    assert abs(len(held) / n - share) <= 4 * math.sqrt(share * (1 - share) / n)
    assert all(not d.actions for d in made)
    # nothing scored, nothing drawn: the policy shows nothing for sure, held back or not
    assert all(d.nothing_selection == pytest.approx(1.0, abs=1e-12) for d in made)


def test_a_decision_whose_only_action_is_worth_nothing_shows_nothing_for_sure(impl):
    """Only a4 passes its rules: worth nothing, control never draws it, and though its
    priority of 0 reaches the threshold (0), the models never show it either, whatever their
    draws. So the policy shows nothing for sure, held back or not."""
    share = 0.3
    doc = yaml.safe_load(catalog(share))
    for action in doc["actions"][:3]:
        action["eligibility"] = "false"
    made = decisions(yaml.safe_dump(doc), 200)
    assert any(d.control for d in made) and all(not d.actions for d in made)
    assert all(d.nothing_selection == pytest.approx(1.0, abs=1e-12) for d in made)
