"""Off-policy estimates against known truth (bench/truth.py): logs that Kairos itself wrote
on synthetic customers whose true acceptance probabilities are known, replayed through a
candidate catalog whose true value on the same contexts is computed from the truth."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench import truth
from kairos.cluster.evidence import evaluation
from kairos.cluster.evidence.replay import for_replay, replay
from kairos.core.catalog import load_catalog

SEEDS = range(20)
N = 500  # logged decisions per seed
SAMPLES = 32  # the candidate's re-decisions per logged decision
TRUTH_SAMPLES = 16  # per context, for the true value (its Monte Carlo error: a few
# thousandths in accept rate, a tenth of the estimates' standard errors)


@pytest.fixture(scope="module")
def runs() -> list[tuple[dict, truth.TrueValue]]:
    candidate = for_replay(load_catalog(truth.candidate_catalog(), "candidate"))
    out = []
    for seed in SEEDS:
        records, true = truth.world(seed, N, TRUTH_SAMPLES)
        out.append((evaluation.evaluate(list(replay(records, candidate, SAMPLES, seed)), seed),
                    true))
    return out


@pytest.mark.parametrize("reward", ["accept", "value"])
def test_doubly_robust_interval_covers_the_truth_in_nine_seeds_of_ten(runs, reward):
    covered = [e["estimates"][reward]["dr"]["low"] <= getattr(t, reward)
               <= e["estimates"][reward]["dr"]["high"] for e, t in runs]
    assert sum(covered) >= 0.9 * len(runs), covered


@pytest.mark.parametrize("reward", ["accept", "value"])
@pytest.mark.parametrize("estimator", ["ips", "snips", "dr"])
def test_estimates_are_unbiased_within_their_error(runs, reward, estimator):
    """Averaged over the seeds, each estimator's error is within 3 standard errors of 0
    (the standard error of that average, from the spread over the seeds)."""
    errors = np.array([e["estimates"][reward][estimator]["value"] - getattr(t, reward)
                       for e, t in runs])
    assert abs(errors.mean()) < 3 * errors.std(ddof=1) / math.sqrt(len(errors)), errors


def test_the_candidate_differs_from_the_log_and_the_log_covers_it(runs):
    """The case is not trivial: the candidate often decides differently, and the log still
    covers it (an effective sample size above a tenth of the decisions)."""
    for e, _ in runs:
        assert 0.3 < e["differs"]["overall"] < 0.9
        assert e["overlap"]["ess"] > 0.1 * N
