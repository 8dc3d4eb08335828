"""The off-policy estimators against cases worked by hand, and their unbiasedness on a bandit
whose value is known."""
from __future__ import annotations

import math

import numpy as np
import pytest

from kairos.cluster.evidence import estimators

WEIGHTS = np.array([1.0, 2.0, 0.5, 0.0])
REWARDS = np.array([1.0, 0.0, 1.0, 1.0])


def test_ips_by_hand():
    """Terms w*r = 1, 0, 0.5, 0: mean 0.375; deviations' squares sum to 0.6875, so the
    standard error is sqrt(0.6875 / 3 / 4), times t's 3.182446 with 3 degrees of freedom
    (its lower bound, 0.375 - 0.762, clipped to 0: no reward is below it); ESS = 3.5^2 / 5.25."""
    e = estimators.ips(WEIGHTS, REWARDS)
    se = math.sqrt(0.6875 / 3 / 4)
    assert e.value == pytest.approx(0.375)
    assert e.standard_error == pytest.approx(se)
    assert (e.low, e.high) == pytest.approx((0.0, 0.375 + 3.182446 * se))
    assert e.ess == pytest.approx(3.5 ** 2 / 5.25)


def test_snips_by_hand():
    """sum(w r) / sum(w) = 1.5 / 3.5; the delta method's terms w (r - v) / mean(w)."""
    e = estimators.snips(WEIGHTS, REWARDS)
    v = 1.5 / 3.5
    terms = WEIGHTS * (REWARDS - v) / (3.5 / 4)
    assert e.value == pytest.approx(v)
    assert e.standard_error == pytest.approx(np.std(terms, ddof=1) / 2)


def test_snips_without_weight_is_undefined_not_zero():
    e = estimators.snips(np.zeros(3), np.ones(3))
    assert math.isnan(e.value) and e.ess == 0.0


def test_doubly_robust_by_hand():
    """With a model that is exact on the logged actions the correction vanishes: DR is the
    model's value of the candidate; with a model of 0 it is IPS."""
    q_candidate = np.array([0.2, 0.4, 0.6, 0.8])
    exact = estimators.doubly_robust(WEIGHTS, REWARDS, REWARDS, q_candidate)
    assert exact.value == pytest.approx(0.5)
    assert exact.standard_error == pytest.approx(np.std(q_candidate, ddof=1) / 2)
    zero = estimators.doubly_robust(WEIGHTS, REWARDS, np.zeros(4), np.zeros(4))
    assert zero.value == pytest.approx(estimators.ips(WEIGHTS, REWARDS).value)


def q_matrix(model: estimators.DirectMethod, n_actions: int) -> np.ndarray:
    """Every record's prediction for every action, as a records x actions matrix."""
    n = len(model.fold)
    return np.stack([model.predict(np.arange(n), np.full(n, a)) for a in range(n_actions)],
                    axis=1)


def test_direct_method_fits_each_action_and_falls_back_for_unseen_ones():
    """Action 0 always earns 1 and action 1 never: the fits are exact whatever the features;
    action 2, never logged, gets the training folds' mean reward."""
    rng = np.random.default_rng(1)
    features = rng.normal(size=(40, 3))
    actions = np.arange(40) % 2
    rewards = (actions == 0).astype(float)
    q = q_matrix(estimators.direct_method(features, actions, rewards), 3)
    assert q[:, 0] == pytest.approx(np.ones(40))
    assert q[:, 1] == pytest.approx(np.zeros(40), abs=1e-12)
    assert 0.2 < q[:, 2].min() and q[:, 2].max() < 0.8


def test_direct_method_is_cross_fitted():
    """A record's own reward never enters its prediction."""
    rng = np.random.default_rng(2)
    features = rng.normal(size=(30, 2))
    actions = rng.integers(0, 2, 30)
    rewards = rng.random(30)
    q = q_matrix(estimators.direct_method(features, actions, rewards, seed=5), 2)
    changed = rewards.copy()
    changed[7] += 100.0
    q_changed = q_matrix(estimators.direct_method(features, actions, changed, seed=5), 2)
    assert q_changed[7] == pytest.approx(q[7])
    assert not np.allclose(q_changed, q)  # it does enter the other fold's


def test_unbiased_on_a_bandit_with_known_value():
    """Two actions, a context x in {0, 1}; the logger shows action 1 with probability 0.2 +
    0.5 x, the candidate with 0.9 - 0.6 x; rewards are Bernoulli(0.3 + 0.4 x a). Over 300
    logs of 400 decisions, the mean of each estimate is within 3 standard errors (of that
    mean) of the candidate's true value, and DR's interval covers it in at least 90 %."""
    rng = np.random.default_rng(3)
    x = np.array([0, 1])
    truth = np.mean([(1 - (0.9 - 0.6 * c)) * 0.3 + (0.9 - 0.6 * c) * (0.3 + 0.4 * c) for c in x])
    found = {name: [] for name in ("ips", "snips", "dr")}
    covered = 0
    for _ in range(300):
        ctx = rng.integers(0, 2, 400)
        mu1 = 0.2 + 0.5 * ctx
        a = (rng.random(400) < mu1).astype(int)
        r = (rng.random(400) < 0.3 + 0.4 * ctx * a).astype(float)
        pi1 = 0.9 - 0.6 * ctx
        pi = np.stack([1 - pi1, pi1], axis=1)
        w = pi[np.arange(400), a] / np.where(a == 1, mu1, 1 - mu1)
        q = q_matrix(estimators.direct_method(ctx[:, None].astype(float), a, r), 2)
        dr = estimators.doubly_robust(w, r, q[np.arange(400), a], np.sum(pi * q, axis=1))
        found["ips"].append(estimators.ips(w, r).value)
        found["snips"].append(estimators.snips(w, r).value)
        found["dr"].append(dr.value)
        covered += dr.low <= truth <= dr.high
    for name, values in found.items():
        assert abs(np.mean(values) - truth) < 3 * np.std(values) / math.sqrt(len(values)), name
    assert covered >= 0.9 * 300
