"""A standardised input's shared statistics forget: past STANDARDIZE_MAX_COUNT inputs they
are scaled down to that count (at the shard as an input joins, at the learner as a delta
merges), so what an attack did decays once it stops; and the learner bounds what one merge
can do without clipping an honest shard whose inputs differ from the others'."""
from __future__ import annotations

import math

import numpy as np

from kairos.core import models
from kairos.core.catalog import MAX_NUMBER
from kairos.core.engine import DecisionEngine
from kairos.core.models import (STANDARDIZE_MAX_COUNT, clipped_weight, forget, merged_inputs,
                                observed)

from tests.unit.core.test_standardize import T0, compiled

CAP = STANDARDIZE_MAX_COUNT


def spread(stats) -> tuple[float, float]:
    count, total, squares = stats[:3]
    mean = total / count
    return mean, math.sqrt(squares / count - mean * mean)


def joined(stats: list[float], values) -> list[float]:
    """The statistics (and the shard's count of inputs and of those clipped, when given)
    after these inputs joined them as a shard lets them in."""
    stats, clips = list(stats[:3]), list(stats[3:]) or [0.0, 0.0]
    for v in values:
        c = observed(v, *stats)
        w, *clips = clipped_weight(c != v, *clips)
        stats = list(forget(stats[0] + w, stats[1] + w * c, stats[2] + w * c * c))
    return stats + clips


def honest(rng, n: int) -> np.ndarray:
    return rng.normal(50.0, 10.0, n)


def test_a_burst_at_the_bound_fades_once_honest_inputs_follow():
    """20,000 inputs at the bound after 10,000 honest ones widened the deviation from 10 to
    804, still 236 after 500,000 more honest ones: now it is back within 5% after 20 caps."""
    rng = np.random.default_rng(5)
    stats = joined([0.0, 0.0, 0.0], honest(rng, 10_000))
    stats = joined(stats, [MAX_NUMBER] * 20_000)
    assert spread(stats)[1] > 50.0
    stats = joined(stats, honest(rng, 200_000))
    mean, sd = spread(stats)
    assert stats[0] == CAP and abs(mean - 50.0) < 1.0 and abs(sd - 10.0) < 0.5


def test_a_shards_statistics_forget_past_the_cap_and_its_delta_counts_what_it_let_in(impl):
    engine = DecisionEngine(compiled())
    j = engine.compiled.predictor_names.index("context.basket_value")
    engine.models.inputs[:, j] = (CAP, CAP * 50.0, CAP * (100.0 + 2500.0))
    engine.models.take_delta()
    engine.decide("ana", "web", "hero", {"basket_value": 60.0}, now=T0)
    count, total, squares = engine.models.inputs[:, j]
    r = CAP / (CAP + 1.0)
    assert count == CAP and total == (CAP * 50.0 + 60.0) * r
    assert squares == (CAP * 2600.0 + 3600.0) * r
    assert tuple(engine.models.pending().inputs[:, j]) == (1.0, 60.0, 3600.0)


def test_the_learner_forgets_past_the_cap_and_a_delta_counts_at_most_the_cap():
    base = np.array([[CAP], [CAP * 50.0], [CAP * 2600.0]])
    small = merged_inputs(base, np.array([[100.0], [5000.0], [260_000.0]]))
    assert small[0, 0] == CAP and spread(small[:, 0]) == spread(base[:, 0] * 1.01)
    # a delta of 3 caps' inputs of a level 10% higher moves the mean half way, not 3/4
    big = merged_inputs(base, np.array([[3 * CAP], [3 * CAP * 55.0], [3 * CAP * 3125.0]]))
    assert big[0, 0] == CAP and math.isclose(spread(big[:, 0])[0], 52.5)


def test_an_honest_shard_of_another_region_is_added_as_it_is():
    """Region B's inputs (500, sd 50) are part of the population: the learner's statistics are
    the pooled ones after one merge, not held to region A's window."""
    rng = np.random.default_rng(2)
    a = joined([0.0, 0.0, 0.0], honest(rng, 200))
    b = joined(list(a), rng.normal(500.0, 50.0, 200))  # as shard B let them in, on A's
    delta = np.array(b[:3]) - np.array(a[:3])
    out = merged_inputs(np.array(a[:3])[:, None], delta[:, None])[:, 0]
    np.testing.assert_allclose(out, b[:3], rtol=1e-12)


def test_a_level_shift_is_followed_within_a_dozen_caps():
    """The same input in cents from now on (100 x): the statistics follow it, as fast as
    clipped values joining at a lower weight past a 10% share let them (4 caps without)."""
    rng = np.random.default_rng(3)
    stats = joined([0.0, 0.0, 0.0], honest(rng, 20_000))
    stats = joined(stats, rng.normal(5000.0, 1000.0, 12 * int(CAP)))
    assert abs(models.standardized(5000.0, *stats[:3])) < 0.5


def test_one_huge_early_input_leaves_later_deltas_their_precision(impl):
    """A shard's first input of 1e12 (in its warm-up, let in as it is) went into its delta and
    also stayed in the running total each later delta was a difference of: their squares
    rounded away against 1e24 and every later delta reported a negative variance."""
    engine = DecisionEngine(compiled())
    j = engine.compiled.predictor_names.index("context.basket_value")
    engine.decide("mallory", "web", "hero", {"basket_value": 1e12}, now=T0)
    assert engine.models.take_delta().inputs[2, j] == 1e24
    rng = np.random.default_rng(1)
    for t, v in enumerate(honest(rng, 500)):
        engine.decide("ana", "web", "hero", {"basket_value": float(v)}, now=T0 + t)
    taken = engine.models.take_delta().inputs[:, j]
    assert taken[0] == 500.0 and abs(spread(taken)[1] - 10.0) < 1.0
    # and a delta rebased by an adopt keeps its inputs
    engine.decide("ana", "web", "hero", {"basket_value": 60.0}, now=T0)
    engine.models.adopt(engine.models)
    assert tuple(engine.models.take_delta().inputs[:, j]) == (1.0, 60.0, 3600.0)


def test_the_learner_refuses_a_delta_variance_below_zero():
    """Sums whose squares are short of their mean's square (rounding, or a hostile shard)
    are not added as they are: the merged variance is held at 0, not below."""
    base = np.array([[100.0], [5000.0], [100.0 * 2600.0]])
    count, total, squares = merged_inputs(base, np.array([[100.0], [5000.0], [0.0]]))[:, 0]
    assert (count, total) == (200.0, 10_000.0) and squares / count - 50.0 ** 2 == 0.0


def test_a_burst_widens_the_deviation_by_a_bounded_factor_per_cap():
    """With the count pinned at the cap each clipped value widened the variance by 1 + 8 / cap:
    40,000 at the bound after honest inputs took the deviation from 10 to 1.5e11. Past a 10%
    share of clipped values they join at a lower weight; a steady 5% joins as before."""
    rng = np.random.default_rng(0)
    warm = joined([0.0, 0.0, 0.0], honest(rng, 10_000))
    assert spread(joined(warm, [MAX_NUMBER] * 40_000))[1] < 500.0
    for share, most in ((0.05, 14.0), (0.2, 60.0)):
        values = honest(rng, 50_000)
        values[rng.random(len(values)) < share] = MAX_NUMBER
        assert spread(joined(warm, values))[1] < most


def test_a_shard_weighs_clipped_inputs_as_the_twin_helpers_do(impl):
    engine = DecisionEngine(compiled())
    j = engine.compiled.predictor_names.index("context.basket_value")
    engine.models.inputs[:, j] = start = (CAP, CAP * 50.0, CAP * 2600.0)
    values = [MAX_NUMBER if t % 3 else 55.0 for t in range(60)]
    for t, v in enumerate(values):
        engine.decide("ana", "web", "hero", {"basket_value": v}, now=T0 + t)
    expected = joined(list(start), values)
    assert list(engine.models.inputs[:, j]) == expected[:3]
    assert list(engine.models.input_clips[:, j]) == expected[3:] == [60.0, 40.0]
    assert engine.models.pending().inputs[0, j] < 60.0  # its delta has the weights too
