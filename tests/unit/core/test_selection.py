"""Selection probabilities: the chance that the policy shows an action where a decision
showed it, estimated from re-runs of the decision's draws, for off-policy evaluation."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import yaml

from kairos.core.compiler import compiled_from_text
from kairos.core.engine import DecisionEngine

T0 = 1_800_000_000.0
SAMPLES = 64


def engine_with(seed: int = 3, restraint: float = 0.0, control: float = 0.0,
                **exploration) -> DecisionEngine:
    """Five actions in two groups on one placement of two slots, uncertain models."""
    doc = {
        "kairos_catalog": 1, "name": "selection", "version": "1",
        "channels": {"web": {"placements": {"hero": {"top_k": 2}}, "control": control}},
        "context": {"x": {"type": "vector", "size": 2, "min": -10, "max": 10}},
        "events": {"seen": {"fields": {}}}, "consent": {"service": True},
        "arbitration": {"exploration": {"variance_scale": 1.0, **exploration},
                        "allow_multiple": ["b"], "restraint_threshold": restraint},
        "actions": [{"id": f"a{i}", "group": "a" if i < 2 else "b", "purpose": "service",
                     "channels": {"web": {"treatment": f"t{i}"}}, "value": 1 + i / 10}
                    for i in range(5)],
        "models": {"predictors": [{"name": "x", "source": "context"}],
                   "prior": {"base_rate": 0.3, "precision": 1.0}},
        "fallbacks": {"web": []}}
    return DecisionEngine(compiled_from_text(yaml.safe_dump(doc)), seed=seed)


def decide(engine: DecisionEngine, i: int):
    return engine.decide("ana", "web", "hero", {"x": [0.5, -1.0]}, now=T0 + i)


@pytest.mark.parametrize("optimistic", [True, False])
@pytest.mark.parametrize("slot", [0, 1])
def test_estimates_match_how_often_each_action_is_shown_and_sum_to_one(impl, slot, optimistic):
    """The same customer decided for 300 times: each action's share of a slot is within the
    Monte Carlo error of its estimated probability there, and the estimates of the actions
    shown there sum to 1 (both slots are always filled); optimistic Thompson draws or plain."""
    engine = engine_with(trial_rate=0.2, selection_samples=SAMPLES, optimistic=optimistic)
    shown, estimates = defaultdict(int), defaultdict(list)
    n = 300
    for i in range(n):
        ranked = decide(engine, i).actions[slot]
        shown[ranked.action_id] += 1
        # the estimate counts the decision's own run: the re-runs alone are unbiased
        estimates[ranked.action_id].append((ranked.selection * (SAMPLES + 1) - 1) / SAMPLES)
        assert ranked.selection >= 1 / (SAMPLES + 1)
    assert len(shown) >= 3  # the draws do move the slot around
    total = 0.0
    for action, count in shown.items():
        p = float(np.mean(estimates[action]))
        total += p
        error = math.sqrt(max(p * (1 - p), 0.01) / n) + 0.5 / math.sqrt(SAMPLES * len(
            estimates[action]))
        assert abs(count / n - p) <= 4 * error, (action, count / n, p)
    assert abs(total - 1.0) <= 0.05


def test_a_decision_without_draws_is_certain_and_the_decisions_own_draws_are_unchanged(impl):
    engine = engine_with(method="none")
    decision = decide(engine, 0)
    assert len(decision.actions) == 2 and all(a.selection == 1.0 for a in decision.actions)
    # the re-runs draw from a stream of their own: the decisions themselves do not change
    a, b = (engine_with(seed=9, selection_samples=s) for s in (1, 512))
    for i in range(20):
        da, db = (decide(e, i) for e in (a, b))
        assert [x.action_id for x in da.actions] == [x.action_id for x in db.actions]
        assert [x.propensity for x in da.actions] == [x.propensity for x in db.actions]


def test_optimistic_draws_never_fall_below_the_posterior_mean(impl):
    """Untrained models all sit at the prior's base rate (0.3): an optimistic Thompson draw
    never shows a propensity below it, a plain one does; both move it from decision to
    decision."""
    seen = {}
    for optimistic in (True, False):
        engine = engine_with(optimistic=optimistic)
        seen[optimistic] = [a.propensity for i in range(100) for a in decide(engine, i).actions]
    assert min(seen[True]) >= 0.3 and len(set(seen[True])) > 10
    assert min(seen[False]) < 0.3


@pytest.mark.parametrize("control", [0.0, 0.3])
def test_a_decision_that_shows_nothing_estimates_how_often_the_policy_does(impl, control):
    """Under a restraint threshold the Thompson draws cross now and then: the same customer
    decided 400 times shows nothing in a share within error of the probability its decisions
    that showed nothing carry (`nothing_selection`), control's share mixed in (it always
    shows one of the eligible actions here); a decision that shows something carries none."""
    engine = engine_with(restraint=1.0, control=control, selection_samples=SAMPLES)
    made = [decide(engine, i) for i in range(400)]
    nothing = [d.nothing_selection for d in made if not d.actions]
    assert all(d.nothing_selection is None for d in made if d.actions)
    assert 0.3 < len(nothing) / len(made) < 0.9  # the draws do cross the threshold
    p = float(np.mean(nothing))
    assert max(nothing) <= 1 - control + 1e-12  # control never shows nothing here
    # binomial error of the share, Monte Carlo error of the estimates, and the bias of
    # counting the decision's own run (at most 1 / (samples + 1))
    error = math.sqrt(p * (1 - p) / len(made)) + 0.5 / math.sqrt(SAMPLES * len(nothing)) \
        + 1 / (SAMPLES + 1)
    assert abs(len(nothing) / len(made) - p) <= 4 * error, (len(nothing) / len(made), p)


@pytest.mark.parametrize("control", [0.0, 0.3])
def test_without_draws_nothing_is_certain_but_for_control(impl, control):
    """Nothing reaches the threshold and nothing is drawn: the models show nothing for sure,
    and the policy does unless control draws an eligible action (a share s of decisions)."""
    engine = engine_with(restraint=100.0, control=control, method="none")
    made = [decide(engine, i) for i in range(50)]
    assert all(d.nothing_selection == pytest.approx(1 - control, abs=1e-12)
               for d in made if not d.actions)
    assert any(not d.actions for d in made)
