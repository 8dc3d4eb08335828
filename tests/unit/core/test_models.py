"""Adaptive models: River-style learners, seeded exploration, statistics that merge."""
from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kairos.core import models, reference
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text
from kairos.core.errors import CatalogError
from kairos.core.models import BayesianLogit, ModelRemap, ModelTable, SplitMix64


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
    assert models.diagonal(table.precision)[m, 0] == small.prior_precision[apology, 0]
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


def full_view(mean, precision):
    """A one-model ModelView of the twin over a full posterior."""
    return reference.ModelView(mean[None].copy(), precision[None].copy(), np.zeros(1),
                               np.zeros(1), np.zeros(1), np.zeros(1), np.zeros((3, len(mean))),
                               np.linalg.inv(precision)[None])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12).flatmap(lambda n: st.tuples(
    arrays(np.float64, n, elements=st.floats(-5, 5, **finite)),
    arrays(np.float64, (n, n), elements=st.floats(-1, 1, **finite)),
    arrays(np.float64, n, elements=st.floats(0.05, 20, **finite)),
    arrays(np.float64, n, elements=st.floats(-10, 10, **finite)))), st.booleans())
def test_the_full_update_is_the_exact_one_example_map(model, y):
    """Under a full prior N(m, inv(P)) the new mean zeroes the gradient of prior times
    likelihood, P gains p(1-p) x x' at it, and the covariance kept by Sherman-Morrison is
    the inverse of that precision."""
    mean, a, diag, x = model
    precision = a @ a.T + np.diag(diag)  # positive definite
    mv = full_view(mean, precision)
    assert reference._learn_full(mv, 0, x, float(y))
    new_mean, z = mv.mean[0], float(mv.mean[0] @ x)
    gradient = precision @ (new_mean - mean) + (models.sigmoid(z) - y) * x
    scale = 1.0 + np.abs(precision @ mean).max() + abs(z) + np.abs(x).max()
    assert np.abs(gradient).max() <= 1e-8 * scale * (1.0 + np.abs(precision).max())
    p = models.sigmoid(z)
    np.testing.assert_allclose(mv.precision[0], precision + p * (1 - p) * np.outer(x, x),
                               rtol=1e-9, atol=1e-9 * (1.0 + np.abs(x).max() ** 2))
    np.testing.assert_allclose(mv.covariance[0] @ mv.precision[0], np.eye(len(x)),
                               atol=1e-8 * np.linalg.cond(mv.precision[0]))


def test_sherman_morrison_does_not_drift_over_many_updates():
    rng = np.random.default_rng(3)
    d = 20
    mv = full_view(np.zeros(d), np.eye(d))
    for _ in range(5000):
        x = np.concatenate([[1.0], rng.normal(size=d - 1)])
        reference._learn_full(mv, 0, x, float(rng.random() < 0.3))
    exact = np.linalg.inv(mv.precision[0])
    assert np.abs(mv.covariance[0] - exact).max() <= 1e-10 * np.abs(exact).max()


def correlated_rounds(table: ModelTable, compiled, rng, n: int) -> None:
    """Outcomes where two predictors always move together and only their sum matters."""
    mv = reference.ModelView(*table.kernel_arrays())
    for _ in range(n):
        x = np.zeros(compiled.n_predictors)
        x[0] = 1.0
        x[1] = x[2] = rng.normal()
        reference._learn_full(mv, 0, x, float(rng.random() < models.sigmoid(2.0 * x[1])))
        table.positives[0] += 1


def test_shards_deltas_add_up_to_the_learners_full_posterior():
    """Two shards learn apart from one published base; the learner's merge is the sum of
    their natural parameters, and a shard that adopts it keeps its unsent learning."""
    compiled = compiled_from_text(default_catalog_text())
    assert compiled.full_posterior  # "auto" with the default catalog's 11 inputs
    rng = np.random.default_rng(1)
    learner, shards = ModelTable(compiled), [ModelTable(compiled), ModelTable(compiled)]
    for shard in shards:
        correlated_rounds(shard, compiled, rng, 200)
    deltas = [shard.take_delta() for shard in shards]
    assert learner.merge(deltas[0] + deltas[1]) == 0
    base = ModelTable(compiled)
    np.testing.assert_allclose(learner.precision[0], base.precision[0] + deltas[0].precision[0]
                               + deltas[1].precision[0])
    np.testing.assert_allclose(learner.precision[0] @ learner.mean[0],
                               base.precision[0] @ base.mean[0]
                               + deltas[0].precision_mean[0] + deltas[1].precision_mean[0])
    np.testing.assert_allclose(learner.covariance[0] @ learner.precision[0],
                               np.eye(compiled.n_predictors), atol=1e-9)
    np.testing.assert_array_equal(learner.mean[1:], base.mean[1:])  # untouched, bit for bit
    correlated_rounds(shards[0], compiled, rng, 10)
    unsent = shards[0].pending()
    learner.version = 1
    shards[0].adopt(learner)
    np.testing.assert_allclose(shards[0].precision[0], learner.precision[0] + unsent.precision[0])
    np.testing.assert_allclose(shards[0].pending().precision, unsent.precision, atol=1e-12)


def test_a_full_posterior_learns_correlated_predictors_as_one():
    """x1 == x2 always: the full posterior learns their sum, 2, and not each weight apart."""
    compiled = compiled_from_text(default_catalog_text())
    table = ModelTable(compiled)
    correlated_rounds(table, compiled, np.random.default_rng(2), 3000)
    w1, w2 = table.mean[0, 1], table.mean[0, 2]
    assert abs((w1 + w2) - 2.0) < 0.3
    variance_of_sum = table.covariance[0, 1, 1] + table.covariance[0, 2, 2] + \
        2 * table.covariance[0, 1, 2]
    assert variance_of_sum < 0.1 * (table.covariance[0, 1, 1] + table.covariance[0, 2, 2])


def test_a_catalog_switch_keeps_the_marginal_of_the_shared_predictors():
    compiled = compiled_from_text(default_catalog_text())
    table = ModelTable(compiled)
    correlated_rounds(table, compiled, np.random.default_rng(4), 500)
    text = default_catalog_text().replace("    - {name: orders, transform: log1p}\n", "")
    new = compiled_from_text(text.replace("version: ", "version: x", 1))
    carried = ModelRemap(compiled, new).table(table)
    kept = [compiled.predictor_names.index(n) for n in new.predictor_names]
    np.testing.assert_allclose(carried.covariance[0], table.covariance[0][np.ix_(kept, kept)],
                               rtol=1e-9)
    np.testing.assert_allclose(carried.mean[0], table.mean[0, kept])
    diagonal_text = text.replace("  prior: {base_rate: 0.04", "  posterior: diagonal\n"
                                 "  prior: {base_rate: 0.04")
    flat = compiled_from_text(diagonal_text.replace("version: ", "version: y", 1))
    assert not flat.full_posterior
    carried = ModelRemap(compiled, flat).table(table)
    np.testing.assert_allclose(1.0 / carried.precision[0],
                               np.diagonal(table.covariance[0])[kept], rtol=1e-9)


def test_the_posterior_option_and_its_limit():
    vector = default_catalog_text().replace(
        "context:\n", "context:\n  embedding: {type: vector, size: SIZE, min: -1, max: 1}\n", 1
    ).replace("  predictors:\n", "  predictors:\n    - {name: embedding, source: context}\n", 1)
    assert not compiled_from_text(vector.replace("SIZE", "30")).full_posterior  # 40 inputs
    full = vector.replace("SIZE", "30").replace("  prior: {base_rate: 0.04",
                                                "  posterior: full\n  prior: {base_rate: 0.04")
    assert compiled_from_text(full).full_posterior
    with pytest.raises(CatalogError, match=r"models\.posterior: a full posterior takes at most "
                                           r"63 predictor inputs, got 90"):
        compiled_from_text(full.replace("size: 30", "size: 80"))


def test_an_input_read_twice_is_two_predictors_and_a_value_alone_is_learning():
    text = default_catalog_text().replace(
        "    - {name: orders, transform: log1p}\n",
        "    - {name: orders, transform: log1p}\n    - {name: orders}\n")
    compiled = compiled_from_text(text)
    assert "orders:log1p:1" in compiled.predictor_names
    assert "orders:identity:1" in compiled.predictor_names
    table = ModelTable(compiled)
    table.value_count[3] += 1
    table.value_sum[3] += 20.0
    assert table.take_delta().learned() and not table.take_delta().learned()
