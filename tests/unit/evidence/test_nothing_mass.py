"""Showing nothing earns 0 wherever it is shown, so the candidate's share of it is known in
every decision, whether or not the log showed nothing there. Counted as unseen, a candidate
that shows nothing in half the contexts of a log that never did was warned of (mass 0.48),
its intervals widened to [0, 0.64] around 0.14, and SNIPS, normalised over the weights only,
read 0.27 for a truth of 0.15 (review rev44 d-evidence finding 4)."""
from __future__ import annotations

import pytest

from kairos.cluster.evidence import evaluation
from kairos.cluster.evidence.replay import NOTHING

from tests.unit.evidence.segments import segments_log

TRUTH = {"accept": 0.15, "value": 1.5}  # A to segment 0, nothing to segment 1


@pytest.fixture(scope="module")
def evidence():
    """The log shows A or B at random (0.5 each), never nothing."""
    return evaluation.evaluate(segments_log(
        lambda rng, segment: "A" if rng.random() < 0.5 else "B", 0.5,
        lambda segment: {"A": 1.0} if segment == 0 else {NOTHING: 1.0},
        value_bound=lambda logged: 1e9))


def test_showing_nothing_is_seen(evidence):
    assert evidence["overlap"]["unseen_mass"] == 0.0
    assert not any("seen" in w for w in evidence["overlap"]["warnings"])


@pytest.mark.parametrize("reward", ["accept", "value"])
@pytest.mark.parametrize("name", ["ips", "snips", "dr"])
def test_the_intervals_are_not_widened_and_snips_counts_nothing_as_0(evidence, reward, name):
    e = evidence["estimates"][reward][name]
    assert e["high"] - e["low"] < 0.35 * TRUTH[reward], e  # it was 4 x the truth
    assert abs(e["value"] - TRUTH[reward]) < 0.15 * TRUTH[reward], e
