"""evaluate() without its records x actions matrices (review of cluster/evidence/, finding 4):
the candidate's probabilities kept as entries, the direct method predicting only the (record,
action) pairs asked, inputs constant once clipped left out of its fits, and at most
MAX_INPUTS input names read. Where no input name is left out the estimates are the dense
evaluation's, which `dense_estimates` keeps, copied from evaluation.py and estimators.py as
they were before, as the oracle."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kairos.cluster.evidence import estimators, evaluation
from kairos.cluster.evidence.replay import NOTHING, Replayed

# -- the oracle: the dense evaluation as it was ------------------------------------------------


def dense_direct_method(features, actions, rewards, n_actions, seed=0, folds=2):
    n = len(rewards)
    x = np.nan_to_num(features.reshape(n, -1))
    q = np.zeros((n, n_actions))
    failed = 0
    fold = np.random.default_rng(seed).permutation(n) % folds if n >= folds else np.zeros(n, int)
    for k in range(folds):
        test, train = fold == k, fold != k
        if not test.any():
            continue
        if not train.any():
            train = np.ones(n, bool)
        y = rewards[train]
        fallback = float(np.mean(y))
        x_train, x_test = dense_standardised(x[train], x[test])
        for a in range(n_actions):
            rows = actions[train] == a
            predicted = dense_ridge(x_train[rows], y[rows], x_test) if rows.any() else fallback
            if predicted is None:
                failed += 1
                predicted = fallback
            q[test, a] = np.clip(predicted, np.min(y), np.max(y))
    return q, failed


def dense_standardised(train, test):
    with np.errstate(all="ignore"):
        low = np.quantile(train, 0.01, axis=0, method="higher")
        high = np.quantile(train, 0.99, axis=0, method="lower")
        train, test = np.clip(train, low, high), np.clip(test, low, high)
        centre, scale = np.mean(train, axis=0), np.std(train, axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        return tuple(np.hstack([np.ones((len(z), 1)), (z - centre) / scale])
                     for z in (train, test))


def dense_ridge(x, y, x_test):
    penalty = 1.0 * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    with np.errstate(all="ignore"):
        gram, moments = x.T @ x + penalty, x.T @ y
        if not all(np.all(np.isfinite(z)) for z in (gram, moments, x_test)):
            return None
        try:
            predicted = x_test @ np.linalg.lstsq(gram, moments, rcond=None)[0]
        except np.linalg.LinAlgError:
            return None
    return predicted if np.all(np.isfinite(predicted)) else None


def dense_estimates(usable: list[Replayed], seed: int = 0) -> dict:
    names = sorted({a for r in usable for a in r.candidate} | {r.logged for r in usable})
    index = {name: a for a, name in enumerate(names)}
    pi = np.zeros((len(usable), len(names)))
    for i, r in enumerate(usable):
        for action, p in r.candidate.items():
            pi[i, index[action]] = p
    logged = np.array([index[r.logged] for r in usable])
    mu = np.array([r.selection for r in usable])
    weights = pi[np.arange(len(usable)), logged] / mu
    seen = weights if NOTHING not in index else \
        np.where(logged == index[NOTHING], 0.0, weights) + pi[:, index[NOTHING]]
    inputs = sorted({name for r in usable for name in r.inputs})
    features = np.nan_to_num(np.array([[r.inputs.get(name, 0.0) for name in inputs]
                                       for r in usable], float).reshape(len(usable), -1),
                             nan=0.0, posinf=0.0, neginf=0.0)
    clusters = estimators.clusters([r.customer for r in usable])
    out = {}
    for reward in evaluation.REWARDS:
        y = np.array([getattr(r, reward) for r in usable])
        q, failed = dense_direct_method(features, logged, y, len(names), seed)
        if NOTHING in index:
            q[:, index[NOTHING]] = 0.0
        given = {"binary": reward == "accept", "clusters": clusters, "seen": seen,
                 "largest": evaluation._largest_value(usable) if reward == "value" else None}
        out[reward] = {
            "ips": estimators.ips(weights, y, **given).to_json(),
            "snips": estimators.snips(weights, y, **given).to_json(),
            "dr": {**estimators.doubly_robust(weights, y, q[np.arange(len(y)), logged],
                                              np.sum(pi * q, axis=1), **given).to_json(),
                   "model_fallbacks": failed}}
    return out

# -- random logs ---------------------------------------------------------------------------------


def random_log(seed: int) -> list[Replayed]:
    """A log of 1 to 400 decisions over up to 40 actions and nothing, a candidate of up to 8
    entries per decision, and inputs of every kind the direct method meets: a number, a
    flag, one set in under 1 % of the decisions (constant once clipped), one no decision
    varies, one most decisions lack, one with an outlier, and names seen in one decision."""
    rng = np.random.default_rng(seed)
    n = int(rng.choice([1, 2, 3, 7, 40, 150, 400]))
    actions = [f"a{k}" for k in range(int(rng.integers(1, 40)))] + [NOTHING]
    rows = []
    for i in range(n):
        logged = str(rng.choice(actions))
        shown = rng.choice(actions, size=int(rng.integers(1, 9)))
        p = rng.dirichlet(np.ones(len(shown)))
        candidate: dict[str, float] = {}
        for action, share in zip(shown.tolist(), p.tolist()):
            candidate[action] = candidate.get(action, 0.0) + share
        inputs = {"x": float(rng.normal()), "flag": float(rng.random() < 0.3), "one": 1.0,
                  "rare": float(i == 3), "outlier": 1e9 if i == 5 else float(rng.normal())}
        if rng.random() < 0.2:
            inputs["sparse"] = float(rng.normal())
        if rng.random() < 0.05:
            inputs[f"only{i}"] = float(rng.normal())
        accepted = float(logged != NOTHING and rng.random() < 0.3)
        value = float(rng.exponential(20.0)) if accepted and rng.random() < 0.5 else 0.0
        rows.append(Replayed(f"d{i}", "v", "web", "hero", logged,
                             float(rng.uniform(0.01, 1.0)), accepted, value, inputs, candidate,
                             customer=f"c{rng.integers(0, max(n // 5, 1))}"))
    return rows


def assert_same(estimates: dict, expected: dict) -> None:
    assert estimates.keys() == expected.keys()
    for reward, by_name in expected.items():
        assert estimates[reward].keys() == by_name.keys()
        for name, e in by_name.items():
            assert estimates[reward][name] == pytest.approx(e, rel=1e-9, abs=1e-9,
                                                            nan_ok=True), (reward, name)


@pytest.mark.parametrize("seed", range(40))
def test_the_estimates_are_the_dense_evaluations(seed):
    log = random_log(seed)
    assert_same(evaluation.evaluate(log, seed=seed)["estimates"], dense_estimates(log, seed))


def test_a_log_of_10000_actions_is_evaluated_without_a_matrix_of_them():
    """2,000 decisions over 10,000 actions: the dense matrices were 160 MB each; the estimates
    match the dense ones computed here on the actions the log holds."""
    rng = np.random.default_rng(1)
    log = []
    for i in range(2000):
        a, b = (f"a{k}" for k in rng.integers(0, 10_000, 2))
        log.append(Replayed(f"d{i}", "v", "web", "hero", a, 0.5, float(rng.random() < 0.2),
                            0.0, {"x": float(rng.normal())}, {a: 0.5, b: 0.5} if a != b
                            else {a: 1.0}, customer=f"c{i % 100}"))
    assert_same(evaluation.evaluate(log)["estimates"], dense_estimates(log))


def test_inputs_past_the_most_frequent_are_left_out_and_said():
    """A log of 300 input names: the estimates are those of the same log holding only the
    MAX_INPUTS names the most decisions have, and a warning says how many were left out."""
    rng = np.random.default_rng(2)
    names = evaluation.MAX_INPUTS + 44
    log = []
    for i in range(600):
        # name k is in the decisions whose i is a multiple of k // 100 + 1: names 0-99 in all
        inputs = {f"in{k:03d}": float(rng.normal()) for k in range(names)
                  if i % (k // 100 + 1) == 0}
        log.append(Replayed(f"d{i}", "v", "web", "hero", f"a{i % 3}", 1 / 3,
                            float(rng.random() < 0.4), 0.0, inputs, {"a0": 0.7, "a1": 0.3},
                            customer=f"c{i % 60}"))
    evidence = evaluation.evaluate(log)
    kept = {f"in{k:03d}" for k in range(evaluation.MAX_INPUTS)}
    trimmed = [dataclasses.replace(r, inputs={k: v for k, v in r.inputs.items() if k in kept})
               for r in log]
    assert_same(evidence["estimates"], dense_estimates(trimmed))
    assert f"the logged decisions have {names} input names: the doubly robust estimates' " \
        f"reward model reads the {evaluation.MAX_INPUTS} that the most decisions have, and " \
        f"leaves 44 out" in evidence["warnings"]
    assert not any("input names" in w for w in evaluation.evaluate(trimmed)["warnings"])


def test_a_prediction_of_an_action_no_training_record_showed_is_their_mean():
    """Action 2 was never logged: every record's prediction for it is its training fold's mean
    reward, and no fit of it is counted."""
    rng = np.random.default_rng(3)
    rewards = rng.random(50)
    model = estimators.direct_method(rng.normal(size=(50, 2)), np.arange(50) % 2, rewards)
    q = model.predict(np.arange(50), np.full(50, 2))
    for k in range(estimators.FOLDS):
        assert q[model.fold == k] == pytest.approx(np.mean(rewards[model.fold != k]))
    assert model.failed == 0
