"""Which catalog versions (strata) uplift compares is decided by their groups' sizes alone: a
version with two decisions in each group is compared even when its control converted fewer
than twice (its value's variance then taken from the channel's), one with fewer is left out
and named. Leaving out versions by what they earned biased the value's uplift."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from kairos.cluster.evidence.uplift import Strata, difference, table, uplift
from tests.unit.evidence.test_uplift import record


def _strata(rng: np.random.Generator, versions: int, models: int, control: int, rate: float
            ) -> Strata:
    """Versions whose groups convert alike (no true effect), each conversion worth Exp(50)."""
    strata = {}
    for v in range(versions):
        groups = {}
        for held, n in ((False, models), (True, control)):
            accepted = rng.random(n) < rate
            values = np.where(accepted, rng.exponential(50.0, n), 0.0)
            groups[held] = [("a", float(a), float(x), None) for a, x in zip(accepted, values)]
        strata[f"v{v}"] = groups
    return strata


def test_with_no_true_effect_the_value_uplift_is_unbiased_and_its_interval_covers_it():
    """10 versions with 50 control decisions converting at 4 % (about a third of them with
    fewer than two conversions): the mean uplift over 300 logs is within four of its standard
    errors of 0 (keeping only versions whose control converted twice put it 17 below)."""
    rng = np.random.default_rng(11)
    estimates, covered = [], []
    for _ in range(300):
        d = difference(_strata(rng, 10, 500, 50, 0.04), 2, binary=False)
        estimates.append(d.uplift)
        covered.append(d.low <= 0.0 <= d.high)
    se = float(np.std(estimates, ddof=1)) / math.sqrt(len(estimates))
    assert abs(float(np.mean(estimates))) < 4 * se
    assert np.mean(covered) > 0.9


def test_a_small_version_without_conversions_is_compared_with_the_channels_variance():
    rng = np.random.default_rng(0)
    big = {False: [("a", 1.0, float(v), None) for v in rng.exponential(5, 2000)],
           True: [("a", 1.0, float(v), None) for v in rng.exponential(4, 200)]}
    small = {False: [("a", 0.0, 0.0, None)] * 3, True: [("a", 0.0, 0.0, None)] * 2}
    alone = difference({"v1": big}, 2, binary=False)
    both = difference({"v1": big, "v2": small}, 2, binary=False)
    assert both.left_out == ()
    assert math.isfinite(both.low) and both.low < both.uplift < both.high
    # v2 counts for its decisions, with its groups' variance no smaller than the channel's
    assert both.high - both.low > (alone.high - alone.low) * 2000 / 2205 * 0.99
    # with no conversion anywhere in a group, its variance is unknown, and so is the interval
    none = {v: {False: s[False], True: small[True]} for v, s in (("v1", big), ("v2", small))}
    assert math.isnan(difference(none, 2, binary=False).low)


def test_a_version_with_fewer_than_two_decisions_in_a_group_is_left_out_and_named():
    rng = np.random.default_rng(0)
    big = {False: [("a", 1.0, float(v), None) for v in rng.exponential(5, 2000)],
           True: [("a", 1.0, float(v), None) for v in rng.exponential(4, 200)]}
    tiny = {False: [("a", 1.0, 3.0, None)] * 3, True: [("a", 0.0, 0.0, None)]}
    alone = difference({"v1": big}, 2, binary=False)
    for column, binary in ((1, True), (2, False)):
        both = difference({"v1": big, "v2": tiny}, column, binary)
        assert both.left_out == ("v2",)
    both = difference({"v1": big, "v2": tiny}, 2, binary=False)
    assert (both.uplift, both.low, both.high) == (alone.uplift, alone.low, alone.high)


def test_the_report_names_the_versions_it_left_out():
    rng = np.random.default_rng(3)
    log = [record(i, "a", rng.random() < 0.5, i % 4 == 0) for i in range(400)]
    log += [dataclasses.replace(record(1000 + i, "a", False, i < 1), catalog_version="2")
            for i in range(5)]
    value = uplift(log)["channels"]["web/hero"]["value"]
    assert value["low"] < value["uplift"] < value["high"]
    assert value["left_out"] == ["2"]
    assert "; left out: 2)" in table(uplift(log))


def test_a_cell_names_a_few_left_out_versions_and_counts_the_rest():
    rng = np.random.default_rng(3)
    log = [record(i, "a", rng.random() < 0.5, i % 4 == 0) for i in range(400)]
    log += [dataclasses.replace(record(1000 + i, "a", True, False), catalog_version=f"v{i:02}")
            for i in range(37)]
    report = uplift(log)
    assert len(report["channels"]["web/hero"]["accept"]["left_out"]) == 37
    assert "; left out: 37 versions (v00, v01, v02, v03, v04, ...))" in table(report)
    assert "v05" not in table(report)
