"""Off-policy estimators: what a candidate policy would earn, from a log another policy wrote.

For logged decision i: the logging policy showed action a_i with probability mu_i (the logged
selection) and earned r_i; the candidate would show a with probability pi_i(a). With the
importance weight w_i = pi_i(a_i) / mu_i:

    IPS    mean(w_i r_i)                                    unbiased when mu_i > 0 wherever
                                                            pi_i > 0 (overlap)
    SNIPS  sum(w_i r_i) / sum(w_i)                          biased O(1/n), lower variance
    DR     mean(sum_a pi_i(a) q(x_i, a) + w_i (r_i - q(x_i, a_i)))
                                                            unbiased if either mu or q is right

q is the direct-method model: a ridge regression of the reward on the decision's inputs, one
per action, cross-fitted (each record's q comes from the folds it is not in, so its own reward
does not fit its correction term). Each estimate has a 95 % confidence interval by the normal
approximation (the mean of independent per-record terms plus or minus 1.96 standard errors;
SNIPS by the delta method) and the effective sample size of its weights,
(sum w)^2 / sum w^2: the number of logged decisions the estimate is worth.

A binary reward (accepted or not) with few positives has a normal interval far too narrow:
with none, every term is 0 and so is its width. Its interval is therefore at least Wilson's
score interval for the estimate as a proportion over the effective sample size (what a
weighted proportion's survey estimate takes), which with no positive among n is
[0, z^2 / (n + z^2)]: about 3.84 / n, where the normal one says nothing at all. That floor
assumes overlap: the effective sample size does not change when every weight is scaled, so a
candidate putting 99 % of its mass on an action the log never showed (every weight 0.01)
would keep n and a floor of 3.84 / n. The weights' mean is the candidate's mass the log can
see (1 under overlap); the rest, m = 1 - mean(w) less 1.96 standard errors of that mean (so
that chance alone widens nothing), may earn anything from nothing to all of it: the floor's
upper bound is raised by m, and its lower one scaled by 1 - m (SNIPS spreads the seen rate
over the unseen mass). A log whose probabilities are misstated shows the same shortfall.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile
RIDGE = 1.0  # the direct method's penalty on its slopes (not its intercept)
FOLDS = 2  # of the direct method's cross-fitting


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float  # the 95 % confidence interval
    high: float
    standard_error: float
    ess: float  # effective sample size of the importance weights

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high,
                "standard_error": self.standard_error, "ess": self.ess}


def effective_sample_size(weights: np.ndarray) -> float:
    # scaled by the largest weight first: the sums' squares of large (or tiny) weights would
    # overflow (or vanish) where their ratio does not
    scale = float(np.max(np.abs(weights))) if len(weights) else 0.0
    if not scale > 0:
        return 0.0
    scaled = weights / scale
    return float(np.sum(scaled)) ** 2 / float(np.sum(scaled ** 2))


def _interval(terms: np.ndarray, weights: np.ndarray) -> Estimate:
    """The mean of independent per-record terms, with its normal-approximation interval."""
    n = len(terms)
    mean = float(np.mean(terms)) if n else math.nan
    se = float(np.std(terms, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return Estimate(mean, mean - Z95 * se, mean + Z95 * se, se, effective_sample_size(weights))


def wilson(p: float, n: float) -> tuple[float, float]:
    """Wilson's 95 % score interval of a proportion p observed over n trials (n may be an
    effective sample size; at 0 it is [0, 1])."""
    z2 = Z95 * Z95
    centre = (n * p + z2 / 2) / (n + z2)
    half = Z95 * math.sqrt(n * p * (1 - p) + z2 / 4) / (n + z2)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def _binary(e: Estimate, binary: bool, weights: np.ndarray) -> Estimate:
    """For a binary reward, the interval widened to at least Wilson's, and by the mass the
    log cannot see (module docstring)."""
    if not binary or math.isnan(e.low) or math.isnan(e.high):
        return e
    low, high = wilson(min(max(e.value, 0.0), 1.0), e.ess)
    n = len(weights)
    slack = Z95 * float(np.std(weights, ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    unseen = min(max(1.0 - float(np.mean(weights)) - slack, 0.0), 1.0)
    low, high = low * (1.0 - unseen), min(high + unseen, 1.0)
    return Estimate(e.value, min(e.low, low), max(e.high, high), e.standard_error, e.ess)


def ips(weights: np.ndarray, rewards: np.ndarray, binary: bool = False) -> Estimate:
    """`binary`: the rewards are 0 or 1 (module docstring)."""
    return _binary(_interval(weights * rewards, weights), binary, weights)


def snips(weights: np.ndarray, rewards: np.ndarray, binary: bool = False) -> Estimate:
    n, total = len(weights), float(np.sum(weights))
    if n == 0 or total <= 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, 0.0)
    value = float(np.sum(weights * rewards)) / total
    # delta method: the ratio's influence terms are w_i (r_i - value) / mean(w)
    influence = weights * (rewards - value) / (total / n)
    se = float(np.std(influence, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return _binary(Estimate(value, value - Z95 * se, value + Z95 * se, se,
                            effective_sample_size(weights)), binary, weights)


def doubly_robust(weights: np.ndarray, rewards: np.ndarray, q_logged: np.ndarray,
                  q_candidate: np.ndarray, binary: bool = False) -> Estimate:
    """q_logged: the model's reward for the logged action; q_candidate: its expectation under
    the candidate, sum_a pi(a) q(x, a)."""
    return _binary(_interval(q_candidate + weights * (rewards - q_logged), weights), binary,
                   weights)


def direct_method(features: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                  n_actions: int, seed: int = 0, folds: int = FOLDS) -> np.ndarray:
    """Cross-fitted predictions q[i, a] of the reward of action a for record i: per fold, a
    ridge regression per action fitted on the other folds' records that showed it (an action
    they never showed gets their mean reward). `actions` holds each record's logged action
    index; features are one row per record (an intercept is added)."""
    n = len(rewards)
    x = np.hstack([np.ones((n, 1)), np.nan_to_num(features.reshape(n, -1))])
    q = np.zeros((n, n_actions))
    fold = np.random.default_rng(seed).permutation(n) % folds if n >= folds else np.zeros(n, int)
    for k in range(folds):
        test, train = fold == k, fold != k
        if not test.any():
            continue
        if not train.any():  # too few records to hold any out: fit on all of them
            train = np.ones(n, bool)
        fallback = float(np.mean(rewards[train]))
        for a in range(n_actions):
            rows = train & (actions == a)
            q[test, a] = x[test] @ _ridge(x[rows], rewards[rows]) if rows.any() else fallback
    return q


def _ridge(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    penalty = RIDGE * np.eye(x.shape[1])
    penalty[0, 0] = 0.0  # the intercept is free: an action's mean reward is not shrunk to 0
    # lstsq, not solve: a single record (or constant columns) leaves the system singular
    return np.linalg.lstsq(x.T @ x + penalty, x.T @ y, rcond=None)[0]
