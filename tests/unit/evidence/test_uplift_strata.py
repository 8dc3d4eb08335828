"""A catalog version too small to compare (no conversion among a handful of decisions) is left
out of the channel's value uplift, and named, instead of making its interval unknown."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from kairos.cluster.evidence.uplift import difference, table, uplift
from tests.unit.evidence.test_uplift import record


def test_a_small_version_without_conversions_is_left_out_of_the_value_interval():
    rng = np.random.default_rng(0)
    big = {False: [("a", 1.0, float(v)) for v in rng.exponential(5, 2000)],
           True: [("a", 1.0, float(v)) for v in rng.exponential(4, 200)]}
    small = {False: [("a", 0.0, 0.0)] * 3, True: [("a", 0.0, 0.0)] * 2}
    alone = difference({"v1": big}, 2, binary=False)
    both = difference({"v1": big, "v2": small}, 2, binary=False)
    assert math.isfinite(alone.low) and alone.low < alone.uplift < alone.high
    assert (both.uplift, both.low, both.high) == (alone.uplift, alone.low, alone.high)
    assert both.left_out == ("v2",)
    # the accept rate compares the small version: it has two decisions in each group
    assert difference({"v1": big, "v2": small}, 1, binary=True).left_out == ()


def test_the_report_names_the_versions_it_left_out():
    rng = np.random.default_rng(3)
    log = [record(i, "a", rng.random() < 0.5, i % 4 == 0) for i in range(400)]
    log += [dataclasses.replace(record(1000 + i, "a", False, i < 2), catalog_version="2")
            for i in range(5)]
    value = uplift(log)["channels"]["web/hero"]["value"]
    assert value["low"] < value["uplift"] < value["high"]
    assert value["left_out"] == ["2"]
    assert "; left out: 2)" in table(uplift(log))
