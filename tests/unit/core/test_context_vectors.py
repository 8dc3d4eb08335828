"""A `vector` context field: many numeric features in one key, read only by predictors."""
from __future__ import annotations

import numpy as np
import pytest

from kairos.core.catalog import load_catalog
from kairos.core.compiler import compile_catalog
from kairos.core.engine import DECISION_CACHE_SIZE, DECISION_MEMO_BYTES, DecisionEngine
from kairos.core.errors import CatalogError, InputError

from tests.conftest import DATA

T0 = 1_800_000_000.0
SMALL = (DATA / "small.yaml").read_text()
WITH_VECTOR = SMALL.replace(
    "context:\n", "context:\n  pixels: {type: vector, size: 4, min: -10, max: 10}\n").replace(
    "    - {name: orders, transform: log1p}\n",
    "    - {name: pixels, source: context, transform: scale, scale: 2}\n"
    "    - {name: orders, transform: log1p}\n")


def compiled(text: str = WITH_VECTOR):
    return compile_catalog(load_catalog(text, "small.yaml"))


def test_a_vector_gives_one_model_input_per_number(impl):
    c = compiled()
    assert c.predictor_names[:6] == ["bias", "context.pixels[0]", "context.pixels[1]",
                                     "context.pixels[2]", "context.pixels[3]", "orders"]
    engine = DecisionEngine(c)
    values = [1.0, -2.0, 0.0, 8.0]
    for given in (values, np.array(values), np.array(values, "<f8").tobytes()):
        engine.decide("ana", "web", "hero", {"pixels": given, "basket_value": 40.0}, now=T0)
        assert engine.workspace.predictors[0][1:5].tolist() == [0.5, -1.0, 0.0, 4.0]


def test_keys_after_a_vector_still_reach_their_rules(impl):
    """basket_value sits after the vector's four slots: cart_reminder's value reads it."""
    engine = DecisionEngine(compiled())
    engine.apply([engine.encode_event("ana", "add_to_cart", T0, {"amount": 10.0})])
    decision = engine.decide("ana", "web", "hero", {"pixels": [0.0] * 4, "basket_value": 40.0},
                             now=T0 + 10, explain=True)
    winner = decision.explanation.winners[0]
    assert (winner.action_id, winner.value) == ("cart_reminder", 20.0)


@pytest.mark.parametrize("value, reason", [
    ([1.0, 2.0, 3.0], "expected 4 numbers, got 3"),
    (b"\x00" * 24, "expected 4 numbers packed in 32 bytes, got 24 bytes"),
    ([1.0, 2.0, 3.0, 11.0], "every number must be between -10 and 10"),
    ([1.0, float("nan"), 0.0, 0.0], "every number must be between -10 and 10"),
    (["a", "b", "c", "d"], "expected 4 numbers"),
    ("1234", "expected 4 numbers, got str"),
])
def test_a_vector_of_the_wrong_size_or_out_of_bounds_is_refused(value, reason):
    engine = DecisionEngine(compiled())
    with pytest.raises(InputError) as exc:
        engine.decide("ana", "web", "hero", {"pixels": value}, now=T0)
    assert (exc.value.field, exc.value.reason) == ("context.pixels", reason)


@pytest.mark.parametrize("change, message", [
    (("    value: 8\n", "    value: \"context.pixels * 2\"\n"),
     "context.pixels is a vector: only predictors read it"),
    (("    - {group: retain, weight: 2.0}",
      "    - {group: retain, weight: 2.0, when: {pixels: 1}}"),
     "'pixels' is a vector: only predictors read it"),
    (("    - {name: orders, transform: log1p}\n", "    - {name: pixels, source: context, "
                                                   "equals: 1}\n"),
     "'pixels' is a vector: no indicator of it"),
    (("pixels: {type: vector, size: 4, min: -10, max: 10}", "pixels: {type: vector}"),
     "a vector needs 'size' (how many numbers it holds)"),
    (("pixels: {type: vector, size: 4, min: -10, max: 10}", "pixels: {type: vector, size: 2000}"),
     "must be at most 1023, got 2000"),
    (("  pixels: {type: vector, size: 4, min: -10, max: 10}",
      "  pixels: {type: vector, size: 1019}"),
     "at most 1023 predictor inputs (a vector counts its size), got 1024"),
])
def test_a_vector_is_for_predictors_only(change, message):
    with pytest.raises(CatalogError) as exc:
        compiled(WITH_VECTOR.replace(*change))
    assert message in str(exc.value)


def test_events_take_no_vectors():
    with pytest.raises(CatalogError) as exc:
        compiled(SMALL.replace("      amount: {type: float}\n  purchase:",
                               "      amount: {type: vector, size: 2}\n  purchase:"))
    assert "expected one of string, int, float, bool, timestamp, got 'vector'" in str(exc.value)


def test_the_decision_memo_keeps_fewer_decisions_of_wide_models():
    """A decision's inputs are kept for its outcome: 8 bytes per input, DECISION_MEMO_BYTES in
    all, so a 1,000-number vector keeps about 8,000 decisions rather than 100,000."""
    assert DecisionEngine(compiled()).memo_capacity == DECISION_CACHE_SIZE
    wide = DecisionEngine(compiled(WITH_VECTOR.replace("size: 4, min: -10, max: 10",
                                                       "size: 1000")))
    assert wide.memo_capacity == DECISION_MEMO_BYTES // (8 * wide.compiled.n_predictors) < 9000
    for i in range(wide.memo_capacity + 10):
        wide.decide(f"c{i}", "web", "hero", {"pixels": [0.0] * 1000}, now=T0)
    assert wide.remembered == wide.memo_capacity
