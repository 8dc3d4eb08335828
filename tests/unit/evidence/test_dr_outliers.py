"""The doubly robust estimate's reward model on unbounded inputs: one outlying input (the
engine accepts context numbers up to 1e12, and records leave them unbounded) must neither
carry the estimate out of the reward's range nor crash it (review rev42 learning finding 1)."""
from __future__ import annotations

import numpy as np
import pytest

from kairos.cluster.evidence import estimators, evaluation
from kairos.cluster.evidence.replay import Replayed
from tests.unit.evidence.test_estimators import q_matrix


def basket_log(outlier: float | None) -> list[Replayed]:
    """The reviewer's repro: 400 decisions, a basket ~ N(50, 20), a true accept rate of 0.3,
    the logger showing either action with 0.5, the candidate aa with 0.9; decision 123's
    basket is the outlier."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(400):
        action = "aa" if rng.random() < 0.5 else "bb"
        basket = outlier if outlier is not None and i == 123 else float(rng.normal(50, 20))
        out.append(Replayed(f"d{i}", "v1", "web", "p", action, 0.5, float(rng.random() < 0.3),
                            0.0, {"basket": basket}, {"aa": 0.9, "bb": 0.1}))
    return out


@pytest.mark.parametrize("outlier", [1e6, 1e12, 1e200])
def test_one_outlying_input_leaves_dr_within_the_other_estimates_intervals(outlier):
    """Before: DR -3.3 at 1e6, -5e6 at 1e12, LinAlgError at 1e200 (IPS 0.35 throughout)."""
    accept = evaluation.evaluate(basket_log(outlier))["estimates"]["accept"]
    dr = accept["dr"]
    assert 0.0 <= dr["value"] <= 1.0
    for name in ("ips", "snips"):
        assert accept[name]["low"] <= dr["value"] <= accept[name]["high"], name
    assert dr["high"] - dr["low"] < 0.2  # as narrow as without the outlier (0.12)
    assert dr["model_fallbacks"] == 0


def test_an_outlier_in_the_evaluated_fold_is_not_extrapolated():
    """Rewards rise with x on the training records: a record far past them is predicted as
    the edge of their bulk, and no prediction leaves the rewards they earned."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, 200)
    rewards = np.clip(x + rng.normal(0, 0.05, 200), 0, 1)
    x[0], x[1] = 1e9, -1e9
    q = estimators.direct_method(x[:, None], np.zeros(200, int), rewards).predict(
        np.arange(200), np.zeros(200, int))
    assert 0.0 <= q.min() and q.max() <= 1.0
    assert q[0] == pytest.approx(q[x < 1e9].max(), abs=0.05)
    assert q[1] == pytest.approx(q[x > -1e9].min(), abs=0.05)


@pytest.mark.parametrize("n", [150, 400])
def test_an_outlier_among_the_training_inputs_leaves_the_model_following_the_bulk(n):
    """Rewards rise with x; one training input is 1e9. Clipped, each fold's model still
    follows x on the other records (unclipped, the outlier set the scale and the fold trained
    with it predicted a constant); with 75 records a training fold, the interpolated 99th
    percentile still lay half-way to the outlier."""
    rng = np.random.default_rng(11)
    x = rng.uniform(0, 1, n)
    rewards = np.clip(x + rng.normal(0, 0.05, n), 0, 1)
    x[7] = 1e9
    q = estimators.direct_method(x[:, None], np.zeros(n, int), rewards).predict(
        np.arange(n), np.zeros(n, int))
    fold = np.random.default_rng(0).permutation(n) % estimators.FOLDS
    for k in range(estimators.FOLDS):
        bulk = (fold == k) & (x < 1e9)
        assert np.corrcoef(x[bulk], q[bulk])[0, 1] > 0.9, k


def test_predictions_stay_within_the_training_rewards():
    """A value reward: q never leaves the training fold's [min, max]."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 2))
    rewards = np.where(rng.random(300) < 0.2, 10 + 5 * x[:, 0], 0.0)
    q = q_matrix(estimators.direct_method(x * 1e3, rng.integers(0, 2, 300), rewards), 2)
    assert rewards.min() <= q.min() and q.max() <= rewards.max()


def test_a_fit_that_fails_numerically_predicts_the_mean_and_is_reported(monkeypatch):
    def fail(*args, **kwargs):
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr(np.linalg, "solve", fail)
    evidence = evaluation.evaluate(basket_log(None))
    dr = evidence["estimates"]["accept"]["dr"]
    assert dr["model_fallbacks"] == 4  # two folds, two actions
    assert 0.0 <= dr["value"] <= 1.0
    assert any("accept rate's reward model failed numerically in 4 fit(s)" in w
               for w in evidence["warnings"])


def test_inputs_near_the_largest_float_are_a_reported_failure_not_a_crash(capfd):
    """...nor LAPACK's complaint about illegal values on the terminal of `kairos replay`."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 1))
    features[::2], features[1::4] = 1.7e308, -1.7e308
    model = estimators.direct_method(features, np.arange(40) % 2, rng.random(40))
    assert model.failed > 0 and np.all(np.isfinite(q_matrix(model, 2)))
    assert capfd.readouterr() == ("", "")
