"""Deltas no outcome can make (a buggy shard's) are refused by the learner's merge, not
published to every shard: counts or a precision's diagonal taken back, a merged precision
matrix that is not positive definite. Finite, they passed the finiteness checks: a precision
taken to 1e-9 with a natural mean of 1e3 published a mean of -7e17, and an indefinite one a
covariance with negative variances."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from kairos.cluster.control.learner import Learner, save_models
from kairos.core import reference
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text, default_compiled
from kairos.core.models import COUNTS, DeltaOrigin, ModelDelta, ModelTable, diagonal

from tests.support.restored import restore_models


def diagonal_compiled():
    doc = yaml.safe_load(default_catalog_text())
    doc["models"]["posterior"] = "diagonal"
    return compiled_from_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture(params=["full", "diagonal"])
def any_posterior(request):
    return default_compiled() if request.param == "full" else diagonal_compiled()


def learnt(compiled, rows=(3, 5)) -> ModelDelta:
    """A delta of real updates: each model at `rows` learns a few outcomes and a value."""
    table = ModelTable(compiled)
    view = reference.ModelView(*table.kernel_arrays())
    learn = reference._learn_full if table.full else reference._learn_diagonal
    rng = np.random.default_rng(7)
    for m in rows:
        for y in (1.0, 0.0, 1.0):
            x = np.concatenate([[1.0], rng.normal(size=compiled.n_predictors - 1)])
            assert learn(view, m, x, y)
            (table.positives if y else table.negatives)[m] += 1.0
        table.value_count[m] += 1.0
        table.value_sum[m] += 12.5
    return table.take_delta()


def merged_with(compiled, delta: ModelDelta) -> tuple[ModelTable, int]:
    table = ModelTable(compiled)
    return table, table.merge(delta)


def assert_left_as_prior(table: ModelTable, compiled, row: int) -> None:
    prior = ModelTable(compiled)
    for name in ("mean", "precision", *COUNTS):
        np.testing.assert_array_equal(getattr(table, name)[row], getattr(prior, name)[row])


def test_a_real_delta_is_merged_whole(any_posterior):
    compiled = any_posterior
    table, refused = merged_with(compiled, learnt(compiled))
    assert refused == 0 and list(table.merged_rows) == [3, 5]



def test_a_count_below_zero_by_rounding_alone_is_merged(any_posterior):
    """A shard's delta is a later total less a mark sums of its own moved, each rounded: a
    value_sum of -1.1e-13 (a take while a sync was in flight) on a total of some thousand is
    rounding, not a value taken back; -1e-3 is not."""
    compiled = any_posterior
    table = ModelTable(compiled)
    table.merge(learnt(compiled))
    table.value_sum[3] = 1_000.0
    drifted = learnt(compiled)
    drifted.value_count[3], drifted.value_sum[3] = 0.0, -1.1e-13
    assert table.merge(drifted) == 0 and 3 in table.merged_rows
    taken = learnt(compiled)
    taken.value_count[3], taken.value_sum[3] = 0.0, -1e-3
    assert table.merge(taken) == 1 and 3 not in table.merged_rows
    # counts of outcomes grow by whole ones, exact: none is allowed below zero, however large
    # the total (1e-9 of two billion would let -2 through)
    table.positives[3] = 2e9
    fewer = learnt(compiled)
    fewer.positives[3] = -1.0
    assert table.merge(fewer) == 1 and 3 not in table.merged_rows

@pytest.mark.parametrize("name", COUNTS)
def test_counts_taken_back_are_refused(any_posterior, name):
    compiled = any_posterior
    delta = learnt(compiled)
    getattr(delta, name)[3] = -5.0
    table, refused = merged_with(compiled, delta)
    assert refused == 1 and table.refused == 1
    assert_left_as_prior(table, compiled, 3)
    assert list(table.merged_rows) == [5]  # the delta's other models are taken


def test_a_precision_taken_back_is_refused_though_it_stays_above_zero(any_posterior):
    compiled = any_posterior
    """The review's delta: the precision down to 1e-9 and a natural mean of 1e3, whose mean
    is then 1e12 a coefficient."""
    delta = learnt(compiled)
    prior = ModelTable(compiled).precision[3]
    delta.precision[3] = -(prior - 1e-9)
    delta.precision_mean[3] = 1e3
    table, refused = merged_with(compiled, delta)
    assert refused == 1
    assert_left_as_prior(table, compiled, 3)
    assert np.abs(table.mean).max() < 100.0


@pytest.mark.parametrize("upper_only", [False, True])
def test_a_precision_that_is_not_positive_definite_is_refused(upper_only):
    """A positive diagonal, and off its diagonal more than the diagonal can hold: the merged
    matrix has an eigenvalue of -180 and its inverse negative variances. Set in one triangle
    only, it would pass a Cholesky check that reads the other."""
    compiled = default_compiled()
    delta = learnt(compiled)
    bump = np.zeros_like(delta.precision[3])
    bump[0, 1] = 10.0 * 20.0
    if not upper_only:
        bump[1, 0] = bump[0, 1]
    delta.precision[3] += bump
    table, refused = merged_with(compiled, delta)
    assert refused == 1
    assert_left_as_prior(table, compiled, 3)
    assert (np.diagonal(table.covariance, axis1=1, axis2=2) > 0).all()


def test_the_learner_publishes_none_of_it():
    compiled = default_compiled()
    learner = Learner(compiled)
    first = learner.sync(compiled.version, None, -1)
    delta = learnt(compiled)
    delta.positives[3] = -5.0
    delta.precision[5, 0, 1] = delta.precision[5, 1, 0] = 1e4
    delta.origin = DeltaOrigin("kairos-shard-0000", "x", 1)
    published = learner.sync(compiled.version, delta, first.version)
    assert learner.refused == 2 and learner.status()["refused"] == 2
    for row in (3, 5):
        np.testing.assert_array_equal(published.precision[row], first.precision[row])
        assert published.positives[row] == first.positives[row] == 0.0


def test_a_saved_posterior_no_outcome_can_make_starts_again_from_its_prior():
    """Saved before deltas were checked so: those models start from their prior again."""
    compiled = default_compiled()
    learner = Learner(compiled)
    learner.models.merge(learnt(compiled, rows=(3, 4, 5)))
    learner.models.positives[3] = -1.0
    learner.models.precision[4, 0, 1] = learner.models.precision[4, 1, 0] = 1e4
    blob = save_models(learner)
    again = Learner(compiled)
    assert restore_models(again, blob)
    assert again.refused == 2
    for row in (3, 4):
        assert_left_as_prior(again.models, compiled, row)
    np.testing.assert_array_equal(again.models.precision[5], learner.models.precision[5])
    assert (diagonal(again.models.covariance) > 0).all()
