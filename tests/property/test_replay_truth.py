"""Off-policy estimates against known truth (bench/truth.py, bench/coverage.py): logs that
Kairos itself wrote on synthetic customers whose true acceptance probabilities are known,
replayed through a candidate catalog whose true value on the same contexts is computed from
the truth."""
from __future__ import annotations

import math

import pytest

from bench import coverage, truth

SEEDS = range(20)
N = coverage.N


@pytest.fixture(scope="module")
def runs() -> list[tuple[dict, truth.TrueValue]]:
    return coverage.estimates(SEEDS)


@pytest.mark.parametrize("reward", coverage.REWARDS)
def test_doubly_robust_interval_covers_the_truth_in_nine_seeds_of_ten(runs, reward):
    covered = coverage.covered(runs, reward)
    assert sum(covered) >= 0.9 * len(runs), covered


@pytest.mark.parametrize("reward", coverage.REWARDS)
@pytest.mark.parametrize("estimator", coverage.ESTIMATORS)
def test_estimates_are_unbiased_within_their_error(runs, reward, estimator):
    """Averaged over the seeds, each estimator's error is within 3 standard errors of 0
    (the standard error of that average, from the spread over the seeds)."""
    errors = coverage.errors(runs, reward, estimator)
    assert abs(errors.mean()) < 3 * errors.std(ddof=1) / math.sqrt(len(errors)), errors


def test_the_candidate_differs_from_the_log_and_the_log_covers_it(runs):
    """The case is not trivial: the candidate often decides differently, and the log still
    covers it (an effective sample size above a tenth of the decisions)."""
    for e, _ in runs:
        assert 0.3 < e["differs"]["overall"] < 0.9
        assert e["overlap"]["ess"] > 0.1 * N
