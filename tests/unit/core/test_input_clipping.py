"""What one client can do to a `standardize` input's running mean and deviation, which
every customer's decisions share: one hostile value, or a stream of them, must not set the
scale for everyone."""
from __future__ import annotations

import math

import numpy as np

from kairos.cluster.control.learner import Learner
from kairos.core import _kernel, models
from kairos.core.catalog import MAX_NUMBER
from kairos.core.engine import DecisionEngine

from tests.unit.core.test_standardize import T0, compiled


def standardised(engine: DecisionEngine, value: float) -> float:
    """basket_value's input as a decision sees it now."""
    engine.decide("bob", "web", "hero", {"basket_value": value}, now=T0 + 10**6)
    return float(engine.workspace.predictors[0][
        engine.compiled.predictor_names.index("context.basket_value")])


def warmed(seed: int = 0, n: int = 1000) -> DecisionEngine:
    engine = DecisionEngine(compiled())
    for t, v in enumerate(np.random.default_rng(seed).normal(50.0, 10.0, n)):
        engine.decide("ana", "web", "hero", {"basket_value": float(v)}, now=T0 + t)
    return engine


def test_the_kernel_clips_with_the_twins_constants():
    assert _kernel.INPUT_CLIP == {"warmup": models.STANDARDIZE_WARMUP,
                                  "sds": models.STANDARDIZE_CLIP_SDS,
                                  "min_spread2": models.STANDARDIZE_MIN_SPREAD2,
                                  "max_count": models.STANDARDIZE_MAX_COUNT,
                                  "clipped_share": models.STANDARDIZE_CLIPPED_SHARE}


def test_one_input_at_the_bound_leaves_the_scale_as_it_was(impl):
    engine = warmed()
    before = standardised(engine, 30.0), standardised(engine, 70.0)
    assert before[0] < -1.8 and before[1] > 1.8
    engine.decide("mallory", "web", "hero", {"basket_value": MAX_NUMBER}, now=T0 + 5000)
    after = standardised(engine, 30.0), standardised(engine, 70.0)
    # it joined the statistics at 3 deviations above the mean, not at 1e12
    np.testing.assert_allclose(after, before, atol=0.05)


def test_a_stream_of_inputs_at_the_bound_moves_the_scale_a_bounded_little():
    engine = warmed()
    rng = np.random.default_rng(1)
    for t in range(4000):  # one decision in 20 is hostile, for as long as the honest ones
        v = MAX_NUMBER if t % 20 == 0 else float(rng.normal(50.0, 10.0))
        engine.decide("ana", "web", "hero", {"basket_value": v}, now=T0 + 2000 + t)
    low, high = standardised(engine, 30.0), standardised(engine, 70.0)
    # a 5% share inflates the deviation by at most (1 - e) / sqrt(1 - 10 e) = 1.34 and moves
    # the mean a fraction of one
    assert -2.1 < low < -1.2 and 1.0 < high < 2.1


def test_the_learner_clips_a_delta_that_carries_a_huge_sum_of_squares():
    """A shard that has not taken up the published statistics yet (new, restarted) lets an
    input in as it is, its own statistics still warming up: the learner holds the delta to
    what the published statistics let in."""
    c = compiled()
    learner = Learner(c)
    published = learner.sync(c.version, warmed().models.take_delta(), -1)
    fresh = DecisionEngine(c, seed=1)
    fresh.decide("mallory", "web", "hero", {"basket_value": MAX_NUMBER}, now=T0)
    j = c.predictor_names.index("context.basket_value")
    assert fresh.models.pending().inputs[2, j] == MAX_NUMBER ** 2
    before = published.inputs[:, j].copy()
    published = learner.sync(c.version, fresh.models.take_delta(), published.version)
    count, total, squares = published.inputs[:, j]
    mean, sd = total / count, math.sqrt(squares / count - (total / count) ** 2)
    old_mean = before[1] / before[0]
    old_sd = math.sqrt(before[2] / before[0] - old_mean ** 2)
    assert count == before[0] + 1
    assert abs(mean - old_mean) < 0.05 * old_sd and sd < 1.01 * old_sd
