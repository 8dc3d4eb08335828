"""A binary reward that few or no logged decisions earned: its interval is at least Wilson's
over the effective sample size, not the normal one's width of 0 (estimators.py), and the
report warns of it (evaluation.py)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bench import truth
from kairos.cluster.evidence import estimators, evaluation
from kairos.cluster.evidence.replay import for_replay, replay
from kairos.core.catalog import load_catalog

NONE = np.zeros(40)


@pytest.mark.parametrize("estimate", [
    lambda w, r: estimators.ips(w, r, binary=True),
    lambda w, r: estimators.snips(w, r, binary=True),
    lambda w, r: estimators.doubly_robust(w, r, np.zeros(40), np.zeros(40), binary=True)])
def test_no_positive_gives_wilsons_interval_over_the_effective_sample_size(estimate):
    """No accept in 40 decisions of weight 1: z^2 / (40 + z^2) = 3.8415 / 43.8415 = 0.08762
    (the normal interval was [0, 0]). Weights 2, 2, 0, 0 (ten times): ESS 40^2 / 80 = 20, so
    3.8415 / 23.8415 = 0.16113."""
    e = estimate(np.ones(40), NONE)
    assert (e.value, e.low, e.high) == pytest.approx((0.0, 0.0, 0.08762), abs=1e-5)
    e = estimate(np.tile([2.0, 2.0, 0.0, 0.0], 10), NONE)
    assert e.ess == pytest.approx(20.0)
    assert (e.low, e.high) == pytest.approx((0.0, 0.16113), abs=1e-5)


@pytest.mark.parametrize("estimate", [
    lambda w, r: estimators.ips(w, r, binary=True),
    lambda w, r: estimators.snips(w, r, binary=True),
    lambda w, r: estimators.doubly_robust(w, r, np.zeros(len(r)), np.zeros(len(r)),
                                          binary=True)])
def test_mass_the_log_cannot_see_widens_the_floor(estimate):
    """The candidate puts 99 % of its mass on an action the log never showed: every weight is
    0.01 and the ESS stays 1000, so Wilson's floor alone said [0, 0.0038] with no accept, and
    SNIPS's said [0.996, 1] with every seen decision accepted. The unseen 99 % may earn
    anything: the interval spans [0.0038 x 0.01, 0.0038 + m] and [0.996 x (1 - m), about 1],
    m the 99 % less its slack (estimators.unseen_mass: 0.981)."""
    weights = np.full(1000, 0.01)
    unseen = estimators.unseen_mass(weights)
    assert 0.98 < unseen < 0.99
    e = estimate(weights, np.zeros(1000))
    assert e.ess == pytest.approx(1000.0)
    assert e.low <= 0.0 and e.high == pytest.approx(0.0038268 + unseen, abs=1e-6)
    e = estimate(weights, np.ones(1000))
    assert e.low <= 0.996 * (1 - unseen) + 1e-5 and e.high > 0.999


def test_one_positive_takes_the_wider_of_the_two_intervals():
    """One accept in 40 (weight 1): IPS 0.025, standard error sqrt(0.975 / 39 / 40) = 0.025,
    t's [0.025 - 2.0227 * 0.025, ...] = [-0.0256, 0.0756] (39 degrees of freedom); Wilson's
    centre
    (1 + 1.9207) / 43.8415 = 0.06662, half-width 1.96 * sqrt(0.975 + 0.9604) / 43.8415 =
    0.06219: [0.0044, 0.1288]. The interval spans both, from 0: no accept rate is below it."""
    e = estimators.ips(np.ones(40), np.eye(1, 40)[0], binary=True)
    assert e.standard_error == pytest.approx(0.025)
    assert (e.low, e.high) == pytest.approx((0.0, 0.12881), abs=1e-5)


def test_many_positives_keep_the_normal_interval():
    rewards = np.tile([0.0, 1.0], 50)
    assert estimators.ips(np.ones(100), rewards, binary=True) == \
        estimators.ips(np.ones(100), rewards)


def test_a_log_without_accepts_has_an_accept_interval_and_a_warning():
    log = [dataclasses.replace(r, outcomes=()) for r in truth.log(
        4, truth.customers(np.random.default_rng(4), 40), learn=False)]
    logging = for_replay(load_catalog(truth.logging_catalog(), "logging"))
    evidence = evaluation.evaluate(list(replay(log, logging, 8)))
    n = evidence["evaluated"]
    for e in evidence["estimates"]["accept"].values():
        assert e["value"] == 0.0 and e["low"] == 0.0
        assert 0.0 < e["high"] == pytest.approx(3.8415 / (e["ess"] + 3.8415), abs=1e-4)
    # the report's own warnings, not the overlap's; a log without values is not warned of
    # for the value (it would be, always)
    assert evidence["warnings"] == [f"only 0 of the {n} evaluated decisions were accepted: "
                                    f"the accept rate's estimates rest on too few of them"]
    assert not any("only" in w for w in evidence["overlap"]["warnings"])


def test_a_log_with_few_conversion_values_is_warned_of():
    log = truth.log(4, truth.customers(np.random.default_rng(4), 40), learn=False)
    valued = [r for r in log if any(o.value > 0 for o in r.outcomes)][:3]
    log = valued + [dataclasses.replace(r, outcomes=()) for r in log if r not in valued]
    logging = for_replay(load_catalog(truth.logging_catalog(), "logging"))
    evidence = evaluation.evaluate(list(replay(log, logging, 8)))
    earned = sum(r.value > 0 for r in replay(log, logging, 8))
    assert 0 < earned < evaluation.FEW_POSITIVES
    assert f"only {earned} of the {evidence['evaluated']} evaluated decisions reported a " \
           f"conversion value: the value per decision's estimates rest on too few of them" \
           in evidence["warnings"]
