"""The `standardize` transform: inputs by the running mean and deviation of what decisions saw
before, from statistics that add across shards."""
from __future__ import annotations

import numpy as np
import pytest

from kairos.cluster.control.learner import Learner
from kairos.core.catalog import load_catalog
from kairos.core.compiler import compile_catalog
from kairos.core.engine import DecisionEngine
from kairos.core.errors import CatalogError

from tests.conftest import DATA

T0 = 1_800_000_000.0
SMALL = (DATA / "small.yaml").read_text()
STANDARDIZED = SMALL.replace(
    "    - {name: basket_value, source: context, transform: log1p}",
    "    - {name: basket_value, source: context, transform: standardize}")


def compiled(text: str = STANDARDIZED):
    return compile_catalog(load_catalog(text, "small.yaml"))


def online(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each value by the mean and (population) deviation of the values before it as they
    entered the statistics, and those: as they are for the first 32, then clipped to 3
    deviations of the mean; centred only while those have no spread."""
    out = np.empty_like(values)
    kept = np.empty_like(values)
    for n, v in enumerate(values):
        seen = kept[:n]
        mean = seen.mean() if n else 0.0
        sd = seen.std() if n > 1 else 0.0
        out[n] = (v - mean) / sd if sd > 0 else v - mean
        kept[n] = np.clip(v, mean - 3 * sd, mean + 3 * sd) if n >= 32 else v
    return out, kept


def test_each_decision_sees_the_input_standardised_by_those_before_it(impl):
    c = compiled()
    engine = DecisionEngine(c)
    j = c.predictor_names.index("context.basket_value")
    values = np.random.default_rng(0).lognormal(4.0, 1.0, 300)
    seen = []
    for t, v in enumerate(values):
        engine.decide("ana", "web", "hero", {"basket_value": float(v)}, now=T0 + t)
        seen.append(engine.workspace.predictors[0][j])
    np.testing.assert_allclose(seen, np.clip(online(values)[0], -c.predictor_limit,
                                             c.predictor_limit), rtol=1e-9, atol=1e-9)
    assert engine.models.inputs[0, j] == len(values)


def test_a_missing_input_is_zero_and_not_counted(impl):
    c = compiled()
    engine = DecisionEngine(c)
    j = c.predictor_names.index("context.basket_value")
    engine.decide("ana", "web", "hero", {}, now=T0)
    assert engine.workspace.predictors[0][j] == 0.0 and engine.models.inputs[0, j] == 0


def test_statistics_from_every_shard_add_up_at_the_learner(impl):
    c = compiled()
    learner = Learner(c)
    shards = [DecisionEngine(c, seed=s) for s in range(2)]
    rng = np.random.default_rng(1)
    # shards whose inputs differ (a region each): the learner adds them as each let them in
    values = [rng.normal(50.0, 10.0, 200), rng.normal(80.0, 5.0, 100)]
    for shard, vs in zip(shards, values):
        for t, v in enumerate(vs):
            shard.decide("ana", "web", "hero", {"basket_value": float(v)}, now=T0 + t)
    published = None
    for shard in shards:
        published = learner.sync(c.version, shard.models.take_delta(), -1)
    j = c.predictor_names.index("context.basket_value")
    both = np.concatenate([online(vs)[1] for vs in values])  # as each shard let them in
    count, total, squares = published.inputs[:, j]
    assert count == len(both)
    assert total / count == pytest.approx(both.mean())
    assert squares / count - (total / count) ** 2 == pytest.approx(both.var())
    shards[0].decide("ana", "web", "hero", {"basket_value": 60.0}, now=T0 + 1000)
    shards[0].adopt_models(published)
    assert shards[0].models.inputs[0, j] == len(both) + 1  # the unsent decision is kept
    assert shards[0].models.pending().inputs[0, j] == 1


def test_an_indicator_cannot_be_standardised():
    with pytest.raises(CatalogError, match="takes no transform"):
        compiled(SMALL.replace("    - {name: tier, equals: gold}",
                               "    - {name: tier, equals: gold, transform: standardize}"))
