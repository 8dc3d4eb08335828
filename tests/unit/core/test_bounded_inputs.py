"""A `standardize` input whose context field declares both a min and a max joins its running
statistics unclipped: the clip would narrow a sparse input (a flag set in under 10% of
decisions) until its deviation is the floor and its every 1 reads in the thousands."""
from __future__ import annotations

import math

import numpy as np

from kairos.core.engine import DecisionEngine

from tests.unit.core.test_standardize import STANDARDIZED, T0, compiled

FIELD = "basket_value: {type: float}"


def declared(bounds: str):
    return compiled(STANDARDIZED.replace(FIELD, "basket_value: {type: float, %s}" % bounds))


def test_only_both_declared_bounds_turn_the_clip_off():
    j = compiled().predictor_names.index("context.basket_value") - 1
    assert compiled().predictor_clip[j] == 1
    assert declared("min: 0").predictor_clip[j] == 1
    assert declared("max: 1").predictor_clip[j] == 1
    assert declared("min: 0, max: 1").predictor_clip[j] == 0


def test_a_sparse_bounded_flag_keeps_its_deviation(impl):
    c = declared("min: 0, max: 1")
    engine = DecisionEngine(c)
    j = c.predictor_names.index("context.basket_value")
    flags = np.random.default_rng(0).random(5_000) < 0.05
    for t, flag in enumerate(flags):
        engine.decide("ana", "web", "hero", {"basket_value": float(flag)}, now=T0 + t)
    count, total, squares = engine.models.inputs[:, j]
    mean = total / count
    # clipped, every 1 narrowed the window the next was clipped to and the deviation fell
    # toward the clip's floor (0.084 here for 0.222, the mean a third of the rate; 0.054 after
    # 20,000 and 0.007 after 100,000, a 1 standardised to some 140, and still falling)
    rate = flags.mean()
    np.testing.assert_allclose(mean, rate, rtol=0.1)
    np.testing.assert_allclose(math.sqrt(squares / count - mean * mean),
                               math.sqrt(rate * (1.0 - rate)), rtol=0.05)
