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
does not fit its correction term). Inputs are unbounded (a context number may be 1e12), and a
linear model extrapolates: one outlying input made q, and with it DR, any number at all. So
each input is clipped to its training records' TRIM..1-TRIM quantiles, taken inward (a data
point, never the most extreme of 100 or fewer), before it is standardised by the clipped
training values (an outlier, in either fold, weighs no more than the edge of the bulk; so does
a rare one: a flag set in under TRIM of the records does not enter the model), and q is
clipped to the rewards the training records earned (for the accept rate within [0, 1]). A
fit that fails numerically predicts the training records' mean reward, and is counted
(`DirectMethod.failed`): DR stays unbiased with any q when the logged probabilities are right;
q only narrows its interval. Its cost is bounded for a catalog of 10,000 actions and a log of
many input names: q is predicted only for the (record, action) pairs the estimates read (the
logged action, and those the candidate may show), never as a records x actions matrix; an
input constant once clipped is left out of the fits; each fit is solved over its inputs or its
records, whichever are fewer; evaluation.py gives it at most 256 input names. (Dense, a log
of 20,000 decisions over 4,000 actions took 1.9 GB; one of 1,000 input names 28.7 s.)

Each estimate has a 95 % confidence interval (the mean of per-record terms plus or minus
Student's t quantile with G - 1 degrees of freedom for G customers, 1.96 for many, times the
standard error; SNIPS by the delta method) and the
effective sample size of its weights, (sum w)^2 / sum w^2: the number of logged decisions the
estimate is worth. A customer gets many decisions (Kairos decides on every event), and its
decisions' rewards share its propensity, so the terms are not independent: the standard error
is cluster-robust by customer (each customer's sum of its records' deviations from the mean,
squared, summed, times G / (G - 1) for G customers, over n^2), which with one record per
customer is the independent records' s / sqrt(n). Treating them as independent covered the
truth in 47 % of logs of 50 customers x 40 decisions (tests/unit/evidence/test_clustered.py);
1.96 in place of the t quantile covered it in 85 % of those of 5 customers. A log of one
customer has no clustered standard error: its decisions are taken as independent, and
evaluation.py warns that it has too few customers.

A binary reward (accepted or not) with few positives has a normal interval far too narrow:
with none, every term is 0 and so is its width. Its interval is therefore at least Wilson's
score interval for the estimate as a proportion over the effective sample size (what a
weighted proportion's survey estimate takes), which with no positive among n is
[0, z^2 / (n + z^2)]: about 3.84 / n, where the normal one says nothing at all.

Every estimate assumes overlap: the log shows, with some probability, what the candidate
would. The weights' mean is the candidate's mass the log can see (1 under overlap), but for
showing nothing, which earns 0 wherever it is shown: its mass is known in every decision, so
a record's seen mass is its weight where the log showed something, plus the candidate's
probability of showing nothing (`seen`; SNIPS normalises by it). A candidate that showed
nothing in half the contexts of a log that never did counted that half as unseen, and SNIPS
read 0.27 for a truth of 0.15. The rest,
m = 1 - mean(w) less a slack (so that chance alone widens nothing), and at least 0,
may earn anything from nothing to the reward's largest (1 for the accept rate; for the value,
what the caller gives: evaluation.py takes the largest value the log shows read through the
candidate's bound (replay.py), which what the unseen mass would earn may pass). So every
interval's upper bound is raised by m times that largest reward, and
its lower one lowered: IPS's and SNIPS's by m times itself (what the log sees, spread over the
unseen mass by SNIPS, is all that is certain), DR's by m times the largest reward (its model
guessed the unseen mass's reward). A log that never explores (every selection 1) showed a
candidate half of whose mass it never saw a value per decision of 3.1 [2.9, 3.3] against a
truth of 4.5 before. A log whose probabilities are misstated shows the same shortfall.

Last, every interval, and its estimate with it, is clipped to where the estimand lies: 0 or
more, and for a binary reward at most 1 (a log with a few weights of 20 had an accept rate's
normal interval of [-0.51, 1.51]).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile
# Student's t's 97.5th percentile for 1..9 degrees of freedom (scipy.stats.t.ppf); past them
# t95's expansion is within 1e-5 of it
T95 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
       2.262157)
RIDGE = 1.0  # the direct method's penalty on its slopes (not its intercept)
FOLDS = 2  # of the direct method's cross-fitting
TRIM = 0.01  # of each input's training values, at either end, that the direct method clips
UNSEEN_DELTA = 0.05  # the chance that the unseen mass's slack is too small
# (record, action) pairs the direct method predicts at once: their gathered input rows stay
# within some 32 MB whatever the log's size
PAIRS_AT_ONCE = 1 << 14


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


def t95(df: int) -> float:
    """Student's t's 97.5th percentile with `df` degrees of freedom (NaN below 1): the table
    up to 9, then the Cornish-Fisher expansion about the normal's (numpy has no t, and scipy
    is not a dependency)."""
    if df < 1:
        return math.nan
    if df <= len(T95):
        return T95[df - 1]
    z = Z95
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3)
            + (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z)
            / (92160 * df ** 4))


def customers(clusters: np.ndarray | None, n: int) -> int:
    """How many customers (clusters) n records have; None: each record its own."""
    return n if clusters is None else len(np.unique(clusters))


def _centred(mean: float, influence: np.ndarray, clusters: np.ndarray | None, weights: np.ndarray
             ) -> Estimate:
    """`mean` with its interval: t95 with G - 1 degrees of freedom times the standard error
    clustered by G customers (module docstring); a log of one customer has no clustered one,
    and its decisions are taken as independent (evaluation.py warns of it)."""
    if customers(clusters, len(influence)) < 2:
        clusters = None
    se = standard_error(influence, clusters)
    half = t95(customers(clusters, len(influence)) - 1) * se
    return Estimate(mean, mean - half, mean + half, se, effective_sample_size(weights))


def _interval(terms: np.ndarray, weights: np.ndarray, clusters: np.ndarray | None
              ) -> Estimate:
    """The mean of per-record terms, with its interval."""
    mean = float(np.mean(terms)) if len(terms) else math.nan
    return _centred(mean, terms - mean, clusters, weights)


def standard_error(influence: np.ndarray, clusters: np.ndarray | None = None) -> float:
    """The standard error of a mean over n records whose terms deviate from it by `influence`,
    cluster-robust by `clusters` (a label per record; None: each record its own), as the
    module's docstring says; NaN with fewer than two clusters."""
    n = len(influence)
    sums = influence if clusters is None else \
        np.bincount(np.unique(clusters, return_inverse=True)[1], weights=influence)
    g = len(sums)
    if g < 2:
        return math.nan
    return math.sqrt(g / (g - 1) * float(np.sum(sums ** 2))) / n


def clusters(customers: Sequence[str | None]) -> np.ndarray:
    """Each record's customer as a code for standard_error (a record naming none its own)."""
    codes: dict[object, int] = {}
    return np.array([codes.setdefault((i,) if c is None else c, len(codes))
                     for i, c in enumerate(customers)], np.int64)


def wilson(p: float, n: float) -> tuple[float, float]:
    """Wilson's 95 % score interval of a proportion p observed over n trials (n may be an
    effective sample size; at 0 it is [0, 1])."""
    z2 = Z95 * Z95
    centre = (n * p + z2 / 2) / (n + z2)
    half = Z95 * math.sqrt(n * p * (1 - p) + z2 / 4) / (n + z2)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def unseen_mass(seen: np.ndarray) -> float:
    """The candidate's mass the log cannot see, 1 - mean(seen) less chance, in [0, 1]. The
    slack is Maurer and Pontil's empirical-Bernstein bound on the mean of values in [0, b],
    with b the largest seen weight (at least 1): the weights are right-skewed, a log of 200
    rarely draws its largest ones, and 1.96 standard errors, which cannot see those, warned of
    6-28 % of healthy logs of 200 decisions (tests/unit/evidence/test_unseen_mass.py)."""
    n = len(seen)
    if n == 0:
        return 1.0
    slack = 0.0
    if n > 1:
        spread, b = math.log(2 / UNSEEN_DELTA), max(float(np.max(seen)), 1.0)
        slack = math.sqrt(2 * float(np.var(seen, ddof=1)) * spread / n) + \
            7 * b * spread / (3 * (n - 1))
    return min(max(1.0 - float(np.mean(seen)) - slack, 0.0), 1.0)


def _widened(e: Estimate, seen: np.ndarray, rewards: np.ndarray, binary: bool,
             largest: float | None, modelled: bool = False) -> Estimate:
    """The interval widened to at least Wilson's for a binary reward, and by the mass the log
    cannot see (from `seen`, each record's) times the largest reward (None: 1 if binary, else
    the largest of `rewards`); `modelled`: the estimate guessed that mass's reward (module
    docstring). Then the interval and the estimate clipped to where the estimand lies: 0 or
    more, and at most 1 for a binary reward (the normal interval of a log of 40 customers, a
    few of them weighed 20, was [-0.51, 1.51]; an IPS rate of 1.5 with its interval clipped lay
    outside it, which the report's plot refused)."""
    if math.isnan(e.low) or math.isnan(e.high):
        return e
    low, high = wilson(min(max(e.value, 0.0), 1.0), e.ess) if binary else (e.low, e.high)
    if largest is None:
        largest = 1.0 if binary else float(np.max(rewards, initial=0.0))
    unseen = unseen_mass(seen)
    # the rewards are 0 or more (a binary one at most 1): so is what the candidate earns
    low = max(min(e.low, low - unseen * (largest if modelled else max(low, 0.0))), 0.0)
    # `low`: a DR interval wholly below 0 (its model's guesses) becomes [0, 0]
    high = max(e.high, high + unseen * largest, low)
    if binary:
        high = min(high, 1.0)
    return Estimate(min(max(e.value, low), high), low, high, e.standard_error, e.ess)


# Each estimator's `binary`: the rewards are 0 or 1; `clusters`: each record's customer (None:
# each record its own); `largest`: the largest reward the unseen mass may earn (module
# docstring; None: 1 if binary, else the largest of `rewards`); `seen`: each record's
# candidate mass the log sees (None: its weight; module docstring).

def ips(weights: np.ndarray, rewards: np.ndarray, binary: bool = False,
        clusters: np.ndarray | None = None, largest: float | None = None,
        seen: np.ndarray | None = None) -> Estimate:
    return _widened(_interval(weights * rewards, weights, clusters),
                    weights if seen is None else seen, rewards, binary, largest)


def snips(weights: np.ndarray, rewards: np.ndarray, binary: bool = False,
          clusters: np.ndarray | None = None, largest: float | None = None,
          seen: np.ndarray | None = None) -> Estimate:
    seen = weights if seen is None else seen
    n, total = len(weights), float(np.sum(seen))
    if n == 0 or total <= 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, 0.0)
    value = float(np.sum(weights * rewards)) / total
    # delta method: the ratio's influence terms are (w_i r_i - value s_i) / mean(s)
    return _widened(_centred(value, (weights * rewards - value * seen) / (total / n), clusters,
                             weights), seen, rewards, binary, largest)


def doubly_robust(weights: np.ndarray, rewards: np.ndarray, q_logged: np.ndarray,
                  q_candidate: np.ndarray, binary: bool = False,
                  clusters: np.ndarray | None = None, largest: float | None = None,
                  seen: np.ndarray | None = None) -> Estimate:
    """q_logged: the model's reward for the logged action; q_candidate: its expectation under
    the candidate, sum_a pi(a) q(x, a)."""
    return _widened(_interval(q_candidate + weights * (rewards - q_logged), weights, clusters),
                    weights if seen is None else seen, rewards, binary, largest, modelled=True)


@dataclass(frozen=True)
class _Fold:
    """One fold's ridge regressions: its records' inputs, clipped and standardised by the other
    folds' records (without the inputs constant there), and a row of coefficients (intercept
    first) per action those records showed whose fit succeeded (`actions`, sorted); every
    other action is predicted their mean reward. Predictions are clipped to [floor, ceiling],
    the rewards they earned."""
    inputs: np.ndarray
    actions: np.ndarray
    coefficients: np.ndarray
    mean: float
    floor: float
    ceiling: float


@dataclass(frozen=True)
class DirectMethod:
    """The direct method's models, cross-fitted: a record's prediction comes from the fold
    that left it out. Only the (record, action) pairs `predict` is asked for are computed: the
    records times a catalog's actions (10,000 may be) would not fit in memory."""
    fold: np.ndarray  # each record's fold
    position: np.ndarray  # each record's row among its fold's inputs
    folds: dict[int, _Fold]
    failed: int  # fits that failed numerically and predict their training records' mean

    def predict(self, records: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """q[j]: the predicted reward of action actions[j] for record records[j]."""
        q = np.empty(len(records))
        for k, f in self.folds.items():
            mine = np.flatnonzero(self.fold[records] == k)
            q[mine] = f.mean
            row = np.searchsorted(f.actions, actions[mine])
            fitted = row < len(f.actions)
            fitted[fitted] = f.actions[row[fitted]] == actions[mine][fitted]
            pairs, row = mine[fitted], row[fitted]
            for start in range(0, len(pairs), PAIRS_AT_ONCE):
                part = slice(start, start + PAIRS_AT_ONCE)
                c = f.coefficients[row[part]]
                q[pairs[part]] = c[:, 0] + np.einsum(
                    "ij,ij->i", f.inputs[self.position[records[pairs[part]]]], c[:, 1:])
            q[mine] = np.clip(q[mine], f.floor, f.ceiling)
        return q


def direct_method(features: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                  seed: int = 0, folds: int = FOLDS) -> DirectMethod:
    """Cross-fitted models of each action's reward: per fold, a ridge regression per action
    fitted on the other folds' records that showed it (an action they never showed gets their
    mean reward), on inputs clipped and standardised by those records, its predictions clipped
    to their rewards' range (module docstring). `actions` holds each record's logged action
    index; features are one row per record (an intercept is added)."""
    n = len(rewards)
    x = np.nan_to_num(features.reshape(n, -1))
    fold = np.random.default_rng(seed).permutation(n) % folds if n >= folds else np.zeros(n, int)
    position = np.zeros(n, np.int64)
    models: dict[int, _Fold] = {}
    failed = 0
    for k in range(folds):
        test, train = fold == k, fold != k
        if not test.any():
            continue
        if not train.any():  # too few records to hold any out: fit on all of them
            train = np.ones(n, bool)
        position[test] = np.arange(np.count_nonzero(test))
        y, shown = rewards[train], actions[train]
        x_train, x_test = _standardised(x[train], x[test])
        with np.errstate(all="ignore"):
            largest = np.max(np.abs(x_test), axis=0)  # bounds each fit's predictions
        order = np.argsort(shown, kind="stable")  # each action's records in the log's order
        names, starts = np.unique(shown[order], return_index=True)
        fits = {a: _ridge(x_train[rows], y[rows], largest)
                for a, rows in zip(names.tolist(), np.split(order, starts[1:]))}
        ok = {a: fit for a, fit in fits.items() if fit is not None}
        failed += len(fits) - len(ok)
        models[k] = _Fold(x_test, np.array(list(ok), np.int64),
                          np.array(list(ok.values())).reshape(len(ok), x_train.shape[1] + 1),
                          float(np.mean(y)), float(np.min(y)), float(np.max(y)))
    return DirectMethod(fold, position, models, failed)


def _standardised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both folds' inputs clipped to the training ones' TRIM..1-TRIM quantiles, centred and
    scaled by the clipped training ones; an input constant once clipped (one set in under
    TRIM of the records, or in none) is left out: it would be 0 in every record. The quantiles
    are taken inward: interpolated, those of 100 records or fewer lie between the most extreme
    value and the next, so one outlier would still set the scale."""
    with np.errstate(all="ignore"):  # inputs near the float maximum: _ridge refuses the result
        low = np.quantile(train, TRIM, axis=0, method="higher")
        high = np.quantile(train, 1 - TRIM, axis=0, method="lower")
        varies = low < high
        low, high = low[varies], high[varies]
        train, test = np.clip(train[:, varies], low, high), np.clip(test[:, varies], low, high)
        centre, scale = np.mean(train, axis=0), np.std(train, axis=0)
        # each input left varies, so its spread is above 0, or NaN where it overflows (1 here:
        # _ridge refuses the fits)
        scale = np.where(scale > 0, scale, 1.0)
        return (train - centre) / scale, (test - centre) / scale


def _ridge(x: np.ndarray, y: np.ndarray, largest: np.ndarray) -> np.ndarray | None:
    """The ridge regression of y on x: its intercept (free: an action's mean reward is not
    shrunk to 0), then its slopes. Solved, on x and y centred, in the smaller of its two equal
    forms: (x'x + RIDGE I) b = x'y over the inputs, or b = x'(xx' + RIDGE I)^-1 y over the
    records, so that a fit of a few records costs little however many inputs there are. None
    when the fit fails numerically, or when a prediction could overflow: `largest` (the
    magnitudes the inputs predicted from reach) bounds them."""
    with np.errstate(all="ignore"):
        centre, mean = np.mean(x, axis=0), float(np.mean(y))
        x, y = x - centre, y - mean
        dual = len(x) < x.shape[1]
        gram, moments = (x @ x.T, y) if dual else (x.T @ x, x.T @ y)
        gram[np.diag_indices_from(gram)] += RIDGE
        # LAPACK given a non-finite number prints to stderr before it raises
        if not all(np.all(np.isfinite(z)) for z in (gram, moments, largest, centre)):
            return None
        try:
            slopes = np.linalg.solve(gram, moments)  # gram is positive definite
        except np.linalg.LinAlgError:
            return None
        slopes = x.T @ slopes if dual else slopes
        intercept = mean - float(centre @ slopes)
        bound = abs(intercept) + float(np.abs(slopes) @ largest)
    return np.concatenate([[intercept], slopes]) if math.isfinite(bound) else None
