"""Every interval lies where its estimand does: 0 or more, and for the accept rate at most 1
(estimators._widened). The normal interval of a log with a few heavy weights passed both
bounds: [-0.511, 1.511] for an accept rate (review of cluster/evidence/, finding 6)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from kairos.cluster.evidence import estimators, evaluation, report
from kairos.cluster.evidence.replay import Replayed


def heavy_log(seed: int) -> list[Replayed]:
    """40 customers; the log shows `a` with probability 0.05, else `b`, and the candidate
    always shows `a`: the few decisions that showed `a` weigh 20 each."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(40):
        logged = "a" if rng.random() < 0.05 else "b"
        rows.append(Replayed(f"d{i}", "v", "web", "hero", logged, 0.05 if logged == "a" else 0.95,
                             float(rng.random() < 0.5), 0.0, {"x": float(rng.normal())},
                             {"a": 1.0}, customer=f"c{i}"))
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_the_accept_rates_intervals_lie_within_0_and_1(seed):
    """(A log in which the log never showed `a` has no SNIPS estimate: NaN, left out.)"""
    estimates = evaluation.evaluate(heavy_log(seed))["estimates"]["accept"]
    known = {name: e for name, e in estimates.items() if not math.isnan(e["value"])}
    assert {"ips", "dr"} <= set(known)
    for name, e in known.items():
        assert 0.0 <= e["low"] <= e["high"] <= 1.0, (name, e)


def test_the_log_the_review_quoted_is_clipped_not_shifted():
    """Seed 2 is the review's: IPS 0.5 in [-0.511, 1.511], which says nothing within [0, 1]."""
    e = evaluation.evaluate(heavy_log(2))["estimates"]["accept"]["ips"]
    assert (e["value"], e["low"], e["high"]) == pytest.approx((0.5, 0.0, 1.0))


@pytest.mark.parametrize("estimate", [
    lambda w, r: estimators.ips(w, r),
    lambda w, r: estimators.snips(w, r),
    lambda w, r: estimators.doubly_robust(w, r, np.zeros(len(r)), np.zeros(len(r)))])
def test_a_values_interval_does_not_go_below_0(estimate):
    """One value of 100 among 40 decisions: the mean 2.5, its standard error 2.5, so the
    normal interval reached about -2.6; no value is below 0, nor is what the candidate earns."""
    rewards = np.zeros(40)
    rewards[3] = 100.0
    e = estimate(np.ones(40), rewards)
    assert e.low == 0.0 and e.high > e.value > 0.0


def test_a_doubly_robust_estimate_below_0_is_0_in_0_0():
    """A model that guessed far too high on the logged actions takes DR's every term below 0:
    the estimand cannot be, so it and its interval are 0 ([0, 0])."""
    e = estimators.doubly_robust(np.ones(40), np.zeros(40), np.full(40, 5.0),
                                 np.linspace(0.0, 1.0, 40))
    assert (e.value, e.low, e.high) == (0.0, 0.0, 0.0)


def accepting_log(seed: int) -> list[Replayed]:
    """`heavy_log`, but 9 in 10 decisions accepted: IPS's rate passes 1."""
    rng = np.random.default_rng(seed)
    return [dataclasses.replace(r, accept=float(rng.random() < 0.9)) for r in heavy_log(seed)]


@pytest.mark.parametrize("seed", range(4))
def test_each_estimate_lies_in_its_interval_and_the_report_draws_it(seed, tmp_path):
    """Clipped alone, the interval left an IPS rate of 1.5 outside [0, 1], and the report's
    plot refused its negative error bar: `kairos replay` ended in a traceback."""
    evidence = evaluation.evaluate(accepting_log(seed))
    for reward in evidence["estimates"].values():
        for name, e in reward.items():
            if not math.isnan(e["value"]):
                assert e["low"] <= e["value"] <= e["high"], (name, e)
    pytest.importorskip("matplotlib")
    evidence.update(log="log.jsonl", candidate={"name": "c", "version": "1"}, samples=64,
                    candidate_error=0.0625, models="priors")  # what `kairos replay` adds
    written = report.write(evidence, tmp_path)
    assert (tmp_path / "replay.png").exists() and written
