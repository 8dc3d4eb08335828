"""Adaptive models: River-style learners, seeded exploration, statistics that merge."""
from __future__ import annotations

import doctest

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kairos.core import models
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text
from kairos.core.models import BayesianLogit, ModelTable, SplitMix64


def test_docstring_examples():
    assert doctest.testmod(models).failed == 0


def test_learns_a_separable_signal():
    rng = np.random.default_rng(0)
    model = BayesianLogit(3, seed=1)
    for _ in range(2000):
        x = np.array([1.0, rng.normal(), rng.normal()])
        model.learn_one(x, x[1] > 0)
    assert model.predict_one([1.0, 2.0, 0.0]) > 0.9
    assert model.predict_one([1.0, -2.0, 0.0]) < 0.1


def test_thompson_draws_are_seeded_and_shrink_with_data():
    a, b = BayesianLogit(2, seed=5), BayesianLogit(2, seed=5)
    x = [1.0, 1.0]
    assert [a.sample_one(x) for _ in range(5)] == [b.sample_one(x) for _ in range(5)]
    spread_before = np.std([a.sample_one(x) for _ in range(300)])
    for _ in range(500):
        a.learn_one(x, True).learn_one(x, False)
    spread_after = np.std([a.sample_one(x) for _ in range(300)])
    assert spread_after < spread_before / 3


def test_splitmix64_matches_its_reference_stream():
    # splitmix64 of seed 0: the first outputs published with the algorithm
    rng = SplitMix64(0)
    assert [rng.next_u64() for _ in range(3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4,
                                                 0x06C45D188009454F]


def test_a_new_action_starts_where_its_group_is(small):
    table = ModelTable(small)
    web = small.channel_index["web"]
    track = small.model_index(small.action_index["track_order"], web)
    apology = small.action_index["delivery_apology"]  # same group: serve
    table.mean[track, 0] = 2.0
    table.positives[track] = 10
    table.warm_start(small, [apology])
    m = small.model_index(apology, web)
    assert table.mean[m, 0] == 2.0
    assert table.precision[m, 0] == small.prior_precision[apology, 0]
    untouched = small.model_index(apology, small.channel_index["email"])
    assert table.mean[untouched, 0] == small.prior_mean[apology, 0]  # no peer learned there


finite = dict(allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 40).flatmap(lambda n: st.tuples(
    arrays(np.float64, n, elements=st.floats(-5, 5, **finite)),
    arrays(np.float64, n, elements=st.floats(0.01, 100, **finite)),
    arrays(np.float64, n, elements=st.floats(-10, 10, **finite)))), st.booleans())
def test_the_update_is_the_exact_one_example_map(model, y):
    """The new mean zeroes the gradient of the prior N(m, 1/q) times the example's likelihood
    (strictly convex: the only minimum), and the example's logit moves towards y, never past
    where one Newton step from the old mean would put it."""
    mean, precision, x = model
    learner = BayesianLogit(len(x), prior_mean=mean)
    learner.precision = precision.copy()
    learner.learn_one(x, y)
    z0, z = float(mean @ x), float(learner.mean @ x)
    gradient = precision * (learner.mean - mean) + (models.sigmoid(z) - y) * x
    assert np.abs(gradient).max() <= 1e-9 * (1.0 + np.abs(precision * mean).max() + abs(z))
    newton = float((x * x / precision).sum()) * (y - models.sigmoid(z0))
    assert min(0.0, newton) - 1e-9 <= z - z0 <= max(0.0, newton) + 1e-9


@settings(max_examples=500, deadline=None)
@given(st.floats(-800, 800, **finite), st.floats(0, 1e7, **finite), st.sampled_from([0.0, 1.0]))
def test_the_logit_solve_finds_the_root_anywhere(z0, s, y):
    z = models.one_example_logit(z0, s, y)
    assert abs(z - z0 + s * (models.sigmoid(z) - y)) <= 1e-9 * (1.0 + abs(z) + s)


def test_many_active_predictors_no_longer_overshoot():
    """64 active predictors: one Newton step from the mean moved the logit by 32 on a single
    accept (p 0.5 -> 1 - 1e-14); the MAP moves it to the root of z = 64 (1 - sigmoid(z))."""
    learner = BayesianLogit(64).learn_one(np.ones(64), True)
    z = float(learner.mean.sum())
    assert 3.0 < z < 4.0 and learner.predict_one(np.ones(64)) < 0.99


def test_the_intercept_and_the_weights_have_priors_of_their_own():
    compiled = compiled_from_text(default_catalog_text().replace(
        "    retain: {base_rate: 0.08}", "    retain: {base_rate: 0.08, predictor_precision: 4.0}"))
    sell = compiled.action_index[next(a.id for a in compiled.catalog.actions
                                      if a.group == "sell")]
    retain = compiled.action_index[next(a.id for a in compiled.catalog.actions
                                        if a.group == "retain")]
    assert compiled.prior_precision[sell, 0] == compiled.prior_precision[retain, 0] == 20.0
    assert (compiled.prior_precision[sell, 1:] == 20.0).all()
    assert (compiled.prior_precision[retain, 1:] == 4.0).all()
