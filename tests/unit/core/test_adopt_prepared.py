"""A whole published table prepared off the event loop (ModelTable.adopting, Adopting.prepare,
adopt_prepared) gives the table `adopt` gave before it was split, array for array, whatever
the kernels learn between its steps; one the table moved on from is dropped."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import compiled_from_text
from kairos.core.engine import DecisionEngine
from kairos.core.models import COUNTS, DELTA_STATS, _within, inverse, per_model

STATS = ("mean", "precision", *COUNTS)
TABLE = (*STATS, "inputs", "inputs_added", "input_clips", "covariance")
T0 = 1_700_000_000.0


def adopt_before(table, published) -> None:
    """ModelTable.adopt as it was before a whole table could be prepared apart: the oracle."""
    unsent = table._pending()
    rows = getattr(published, "rows", None)
    if rows is None:
        before = table.precision
        for name in STATS:
            setattr(table, name, getattr(published, name).copy())
        if before.shape != table.precision.shape:
            before = np.full_like(table.precision, np.nan)
        changed = np.flatnonzero(~per_model(table.precision == before).all(axis=1))
        table._mark()
    else:
        before = table.precision[rows]
        for name in STATS:
            getattr(table, name)[rows] = getattr(published, name)
        changed = rows[~per_model(table.precision[rows] == before).all(axis=1)]
        table._mark_rows(rows)
        unsent = _within(unsent, rows)
    table.inputs = published.inputs.copy()
    if table.full:
        table.covariance[changed] = inverse(table.precision[changed])
    table.version = published.version
    table.published_by = getattr(published, "incarnation", None)
    table.merge(unsent)
    table._mark_as(unsent)


def compiled_of(posterior: str):
    text = default_catalog_text()
    if posterior == "diagonal":
        text = text.replace("  prior: {base_rate: 0.04",
                            "  posterior: diagonal\n  prior: {base_rate: 0.04")
    compiled = compiled_from_text(text)
    assert compiled.full_posterior == (posterior == "full")
    return compiled


def lesson(compiled, rng, n: int, at: float, models: int | None = None) -> list[tuple]:
    """`n` outcomes (accepts, ignores, converts with a value) over the offered models (the
    first `models` of them only, if given)."""
    offered = [(compiled.action_ids[a], compiled.channel_names[ch])
               for a, ch in zip(*np.nonzero(compiled.offered))][:models]
    out = []
    for k in range(n):
        action, channel = offered[int(rng.integers(len(offered)))]
        outcome = ("accept", "ignore", "convert")[int(rng.integers(3))]
        value = (float(rng.integers(1, 50)),) if outcome == "convert" else ()
        out.append((f"c{int(rng.integers(6))}", action, channel, outcome, at + k, None, *value))
    return out


def published_of(engine: DecisionEngine, version: int, rows=None) -> SimpleNamespace:
    m = engine.models
    stats = {name: getattr(m, name).copy() if rows is None else getattr(m, name)[rows].copy()
             for name in STATS}
    return SimpleNamespace(**stats, inputs=m.inputs.copy() + 1.0, version=version,
                           incarnation="learner-2", rows=rows)


def assert_same(a, b) -> None:
    for name in TABLE:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=name)
    for name in DELTA_STATS:
        np.testing.assert_array_equal(getattr(a._taken, name), getattr(b._taken, name),
                                      err_msg=f"mark's {name}")
    assert (a.version, a.published_by, a.refused) == (b.version, b.published_by, b.refused)


def engines(compiled, *histories: list[tuple]) -> list[DecisionEngine]:
    """Two engines that learnt the same outcomes, each history taken (sent) after it but the
    last (a history a call: the same split teaches the same)."""
    out = []
    for _ in range(2):
        engine = DecisionEngine(compiled, capacity=16, seed=3)
        for k, history in enumerate(histories):
            if history:
                engine.record_outcomes(history)
            if k < len(histories) - 1:
                engine.models.take_delta()
        out.append(engine)
    return out


@pytest.mark.parametrize("posterior", ["full", "diagonal"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("order", ["before_prepare", "after_prepare", "both", "none",
                                   "both_then_sent"])
def test_a_prepared_whole_table_is_the_one_adopt_gave(posterior, seed, order):
    """The shard learnt (some sent, some pending), the learner's table has more; while the
    table is prepared the kernels learn on (before the thread reads the table, after, or
    both; and then that learning may be taken, so the adopt does not merge it back and
    invert those models anew). The published models are the shard's own where only it
    taught them (the kernels' covariance kept), including models that learnt while it was
    prepared: what the thread read then was not what the swap finds."""
    compiled = compiled_of(posterior)
    rng = np.random.default_rng(seed)
    sent, pending = lesson(compiled, rng, 60, T0), lesson(compiled, rng, 30, T0 + 100)
    early, late = lesson(compiled, rng, 15, T0 + 200, 12), lesson(compiled, rng, 15, T0 + 300, 12)
    extra = lesson(compiled, rng, 80, T0 + 400)
    during = {"before_prepare": (early, []), "after_prepare": ([], late), "both": (early, late),
              "none": ([], []), "both_then_sent": (early, late)}[order]
    sent_meanwhile = order.endswith("sent")
    learner = engines(compiled, sent, pending, *during, extra)[0]
    published = published_of(learner, version=7, rows=None)
    oracle, shard = engines(compiled, sent, pending)

    for history in during:
        if history:
            oracle.record_outcomes(history)
    if sent_meanwhile:
        oracle.models.take_delta()
    adopt_before(oracle.models, published)
    oracle._bind_models()

    whole = shard.models.adopting(published)
    if during[0]:
        shard.record_outcomes(during[0])
    whole.prepare()
    if during[1]:
        shard.record_outcomes(during[1])
    if sent_meanwhile:
        shard.models.take_delta()
    assert shard.adopt_prepared(whole)
    assert_same(oracle.models, shard.models)
    # they go on alike: the kernels learn into the new arrays, and the same is pending
    after = lesson(compiled, rng, 20, T0 + 500)
    oracle.record_outcomes(after)
    shard.record_outcomes(after)
    assert_same(oracle.models, shard.models)
    a, b = oracle.models.take_delta(), shard.models.take_delta()
    for name in DELTA_STATS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("posterior", ["full", "diagonal"])
@pytest.mark.parametrize("seed", range(3))
def test_adopt_gives_the_table_it_gave_before_whole_or_rows(posterior, seed):
    compiled = compiled_of(posterior)
    rng = np.random.default_rng(10 + seed)
    sent, pending = lesson(compiled, rng, 60, T0), lesson(compiled, rng, 30, T0 + 100)
    learner = engines(compiled, sent, pending + lesson(compiled, rng, 80, T0 + 400))[0]
    n = len(learner.models.positives)
    some = np.sort(rng.choice(n, size=n // 3, replace=False))
    for rows in (None, some):
        published = published_of(learner, version=9, rows=rows)
        oracle, shard = engines(compiled, sent, pending)
        adopt_before(oracle.models, published)
        shard.adopt_models(published)
        assert_same(oracle.models, shard.models)


def test_a_prepared_table_the_models_moved_on_from_is_dropped():
    """Another version adopted meanwhile, another learner's, or another table (a switch, a
    rebuild): adopt_prepared takes nothing and says so."""
    compiled = compiled_of("full")
    rng = np.random.default_rng(5)
    sent = lesson(compiled, rng, 40, T0)
    learner = engines(compiled, sent + lesson(compiled, rng, 40, T0 + 100))[0]
    published = published_of(learner, version=7)

    shard = engines(compiled, sent)[0]
    whole = shard.models.adopting(published)
    whole.prepare()
    shard.adopt_models(published_of(learner, version=8, rows=np.array([0, 1])))
    kept = {name: getattr(shard.models, name).copy() for name in TABLE}
    assert not shard.adopt_prepared(whole)
    assert shard.models.version == 8
    for name in TABLE:
        np.testing.assert_array_equal(getattr(shard.models, name), kept[name])

    shard = engines(compiled, sent)[0]
    whole = shard.models.adopting(published)
    whole.prepare()
    shard.models.published_by = "learner-1"  # whose version it holds changed
    assert not shard.adopt_prepared(whole) and shard.models.version == 0

    shard, other = engines(compiled, sent)
    whole = other.models.adopting(published)
    whole.prepare()
    assert not shard.adopt_prepared(whole) and shard.models.version == 0
