"""Adaptive models: River-style learners, seeded exploration, statistics that merge."""
from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kairos.core import models, reference
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text
from kairos.core.errors import CatalogError
from kairos.core.models import BayesianLogit, ModelRemap, ModelTable
from kairos.core.sampling import SplitMix64


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


def tilted_moments(z0: float, s: float, y: bool) -> tuple[float, float]:
    """Mean and variance of the logit's exact one-example posterior, N(z0, s) times the probit
    likelihood Phi(t k z), by summing over a grid 16 deviations either side (independent of
    the closed form under test)."""
    sd = math.sqrt(s)
    z = np.linspace(z0 - 16 * sd, z0 + 16 * sd, 40_001)
    t = 1.0 if y else -1.0
    log_w = -0.5 * ((z - z0) / sd) ** 2 + np.log(np.vectorize(
        lambda v: 0.5 * math.erfc(-v / math.sqrt(2)))(t * math.sqrt(math.pi / 8) * z)
        + 1e-300)
    w = np.exp(log_w - log_w.max())
    mean = float((w * z).sum() / w.sum())
    return mean, float((w * (z - mean) ** 2).sum() / w.sum())


def surprise(z0: float, s: float, y: bool) -> float:
    """How many predictive deviations the answer lies from what the logit expected (u)."""
    return abs(z0) / math.sqrt(s + 1 / models.PROBIT_SCALE2) if (z0 > 0) != y else 0.0


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 12).flatmap(lambda n: st.tuples(
    arrays(np.float64, n, elements=st.floats(-2, 2, **finite)),
    arrays(np.float64, n, elements=st.floats(0.1, 10, **finite)),
    arrays(np.float64, n, elements=st.floats(-3, 3, **finite)))), st.booleans())
def test_the_update_moves_the_logit_to_its_posterior_mean(model, y):
    """The example's logit moves to the mean of its exact one-example posterior (under the
    probit likelihood), each weight along x_i / q_i, and each precision gains x_i^2 w."""
    mean, precision, x = model
    z0, s = float(mean @ x), float((x * x / precision).sum())
    assume(s > 1e-6 and surprise(z0, s, y) < 10)
    learner = BayesianLogit(len(x), prior_mean=mean)
    learner.precision = precision.copy()
    learner.learn_one(x, y)
    expected, _ = tilted_moments(z0, s, y)
    assert float(learner.mean @ x) == pytest.approx(expected, rel=1e-6, abs=1e-6 * (1 + s))
    r, w = models.one_example_step(z0, s, float(y))
    np.testing.assert_allclose(learner.mean, mean + r * x / precision, rtol=1e-12)
    np.testing.assert_allclose(learner.precision, precision + x * x * w, rtol=1e-12)


@settings(max_examples=500, deadline=None)
@given(st.floats(-800, 800, **finite), st.floats(0, 1e7, **finite), st.booleans())
def test_the_step_is_sound_anywhere(z0, s, y):
    """Finite for any logit a model can hold: the mean moves towards the answer (not at all
    where the model was sure of it), and the precision gains at most the probit's curvature."""
    r, w = models.one_example_step(z0, s, float(y))
    assert math.isfinite(r) and (r >= 0.0 if y else r <= 0.0)
    assert 0.0 <= w <= models.PROBIT_SCALE2


def test_the_mills_moments_are_continuous_where_their_series_take_over():
    u = models.MILLS_ASYMPTOTIC
    above, below = models.mills_moments(u + 1e-9), models.mills_moments(u - 1e-9)
    for a, b in zip(above, below):
        assert a == pytest.approx(b, rel=1e-7)


@pytest.mark.parametrize("u", [-35.0, -40.0, -1e2, -1e3, -1e4, -1e5, -1e8, -3e8, -1e12])
def test_the_mills_moments_keep_their_digits_far_in_the_tail(u):
    """1 - h of a normal cut at a = -u is 1/a^2 - 6/a^4 + ...: computed as 1 - v (v + u) it
    lost its digits (half wrong at -1e4, h past 1 from -1e5, 0 from -3e8)."""
    v, h, rest = models.mills_moments(u)
    a = -u
    assert v >= a and h <= 1.0 and rest == pytest.approx(1.0 - h, abs=1e-15)
    assert rest * a * a == pytest.approx(1.0 - 6.0 / a**2 + 50.0 / a**4,
                                         rel=600.0 / a**6 + 1e-14)
    r, w = models.one_example_step(-a * math.sqrt(1.0 + models.PROBIT_SCALE2)
                                   / math.sqrt(models.PROBIT_SCALE2), 1.0, 1.0)
    assert r > 0.0 and 0.0 < w <= models.PROBIT_SCALE2


def test_many_active_predictors_move_the_logit_to_its_posterior_mean():
    """64 active predictors: one Newton step from the mean moved the logit by 32 on a single
    accept (p 0.5 -> 1 - 1e-14); the update moves it to the posterior mean of N(0, 64) times
    the accept's likelihood, about 6.3."""
    learner = BayesianLogit(64).learn_one(np.ones(64), True)
    z = float(learner.mean.sum())
    assert z == pytest.approx(tilted_moments(0.0, 64.0, True)[0], rel=1e-6)
    assert 6.0 < z < 6.5


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
                               np.zeros((3, len(mean))), np.zeros((2, len(mean))),
                               np.linalg.inv(precision)[None])


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 12).flatmap(lambda n: st.tuples(
    arrays(np.float64, n, elements=st.floats(-2, 2, **finite)),
    arrays(np.float64, (n, n), elements=st.floats(-1, 1, **finite)),
    arrays(np.float64, n, elements=st.floats(0.1, 10, **finite)),
    arrays(np.float64, n, elements=st.floats(-3, 3, **finite)))), st.booleans())
def test_the_full_update_matches_the_logits_posterior_moments(model, y):
    """Under a full prior N(m, inv(P)) the example's logit takes the mean and the variance of
    its exact one-example posterior (probit likelihood), the mean moves along S x only, and
    the covariance kept by Sherman-Morrison is the inverse of the new precision."""
    mean, a, diag, x = model
    precision = a @ a.T + np.diag(diag)  # positive definite
    covariance = np.linalg.inv(precision)
    z0, s = float(mean @ x), float(x @ covariance @ x)
    assume(s > 1e-6 and surprise(z0, s, y) < 10)
    mv = full_view(mean, precision)
    assert reference._learn_full(mv, 0, x, float(y))
    expected_mean, expected_var = tilted_moments(z0, s, y)
    assert float(mv.mean[0] @ x) == pytest.approx(expected_mean, rel=1e-6, abs=1e-6 * (1 + s))
    assert float(x @ mv.covariance[0] @ x) == pytest.approx(expected_var, rel=1e-5,
                                                            abs=1e-9 * s)
    step = covariance @ x
    moved = mv.mean[0] - mean
    np.testing.assert_allclose(moved, (moved @ x) / s * step, atol=1e-9 * (1 + np.abs(moved).max()))
    identity = mv.covariance[0] @ mv.precision[0]
    np.testing.assert_allclose(identity, np.eye(len(x)), atol=1e-6 * np.linalg.cond(precision))


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


def test_a_switch_that_adds_a_reader_of_an_input_keeps_the_first_readers_weight():
    """Models are carried across by predictor name: the first reader of `orders` keeps its name
    when a second one comes (it was renamed, and its learned weight restarted at the prior)."""
    compiled = compiled_from_text(default_catalog_text())
    table = ModelTable(compiled)
    correlated_rounds(table, compiled, np.random.default_rng(5), 200)
    table.mean[:, compiled.predictor_names.index("orders")] = 0.75  # a weight it learned
    text = default_catalog_text().replace(
        "    - {name: orders, transform: log1p}\n",
        "    - {name: orders, transform: log1p}\n    - {name: orders, transform: scale, "
        "scale: 10}\n")
    new = compiled_from_text(text.replace("version: ", "version: x", 1))
    assert new.predictor_names[:3] == ["bias", "orders", "orders:scale:10"]
    remap = ModelRemap(compiled, new)
    old_col = compiled.predictor_names.index("orders")
    assert remap.cols[1] == old_col and remap.cols[2] == -1
    carried = remap.table(table)
    np.testing.assert_array_equal(carried.mean[:, 1], table.mean[:, old_col])
    assert carried.covariance[0, 1, 1] == pytest.approx(table.covariance[0, old_col, old_col],
                                                        rel=1e-9)


def test_an_input_read_twice_is_two_predictors_and_a_value_alone_is_learning():
    text = default_catalog_text().replace(
        "    - {name: orders, transform: log1p}\n",
        "    - {name: orders, transform: log1p}\n    - {name: orders}\n")
    compiled = compiled_from_text(text)
    assert "orders" in compiled.predictor_names  # the first reader, log1p
    assert "orders:identity:1" in compiled.predictor_names
    table = ModelTable(compiled)
    table.value_count[3] += 1
    table.value_sum[3] += 20.0
    assert table.take_delta().learned() and not table.take_delta().learned()


def test_a_shard_hands_over_only_learning_a_journal_sync_covered(small):
    """What a table learnt after a sync started waits for the next one, and nothing goes once
    a sync failed (the shard is rebuilt and its client sends the round again)."""
    table, told = ModelTable(small), []
    table.positives[0] += 1  # a round's learning, journaled
    table.written()
    table.when_synced(lambda: told.append("covered"))
    table.sync_started()
    table.positives[1] += 1  # the next round, applied while the disk works
    table.written()
    assert table.take_synced() is None and not told
    table.sync_finished(ok=True, idle=False)
    first = table.take_synced()
    assert told == ["covered"] and first.positives.tolist()[:2] == [1, 0]
    assert table.take_synced() is None  # the second round waits for its sync
    table.sync_started()
    table.sync_finished(ok=True, idle=True)  # nothing written meanwhile: all of it is durable
    table.positives[2] += 1  # learnt without a journal write (no sync comes for it)
    assert table.take_synced().positives.tolist()[:3] == [0, 1, 1]
    table.positives[3] += 1
    table.written()
    table.sync_started()
    table.sync_finished(ok=False, idle=True)
    assert table.take_synced() is None
