"""Each catalog text is compiled once per process; what the callers share is read-only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kairos.core.compiler import COMPILED_CACHE_SIZE, compiled_from_text
from kairos.core.engine import DecisionEngine
from kairos.core.errors import CatalogError

SMALL = (Path(__file__).parent / "data" / "small.yaml").read_text(encoding="utf-8")
T = 1_800_000_000.0


def variant(n: int, text: str = SMALL) -> str:
    return text.replace('version: "t1"', f'version: "cache-{n}"')


def test_one_text_is_compiled_once():
    a, b = compiled_from_text(variant(0)), compiled_from_text(variant(0))
    assert a is not b and a.version == b.version == "cache-0"
    assert a.lever is b.lever and a.code is b.code and a.layout is b.layout


def test_the_arrays_are_read_only():
    c = compiled_from_text(variant(1))
    with pytest.raises(ValueError, match="read-only"):
        c.lever[0] = 2.0
    with pytest.raises(ValueError, match="read-only"):
        c.layout.defaults[0] = 1.0


def test_each_caller_has_its_own_string_table(impl):
    free = variant(2, SMALL.replace("category: {type: string, values: [shoes, bags, hats]}\n"
                                    "      price", "category: {type: string}\n      price"))
    a, b = compiled_from_text(free), compiled_from_text(free)
    assert a.strings is not b.strings and a.strings.strings == b.strings.strings
    engine = DecisionEngine(a)
    engine.apply([engine.encode_event("c", "page_view", T, {"category": "free text"})])
    assert "free text" not in b.strings.codes
    assert "free text" not in compiled_from_text(free).strings.codes
    assert engine.profile("c", T)["features"]["last_category"] == "free text"


def test_errors_are_raised_every_time_naming_the_source():
    bad = SMALL.replace("kairos_catalog: 1", "kairos_catalog: 2")
    for source in ("first.yaml", "second.yaml"):
        with pytest.raises(CatalogError, match=f"^{source}:1:17: kairos_catalog: "):
            compiled_from_text(bad, source)


def test_the_least_recently_used_text_is_dropped():
    first = compiled_from_text(variant(100))
    for n in range(101, 101 + COMPILED_CACHE_SIZE):
        compiled_from_text(variant(n))
    assert compiled_from_text(variant(100)).lever is not first.lever


def test_a_compiled_catalog_decides_like_a_fresh_one(impl, small):
    shared = DecisionEngine(compiled_from_text(SMALL), seed=3)
    fresh = DecisionEngine(small, seed=3)
    for engine in (shared, fresh):
        engine.apply([engine.encode_event("c", "purchase", T, {"amount": 30.0,
                                                                "category": "shoes"})])
    a, b = (e.decide("c", "web", now=T + 60, explain=True) for e in (shared, fresh))
    assert a.actions == b.actions and a.explanation == b.explanation
    assert np.array_equal(shared.table.values[:1], fresh.table.values[:1], equal_nan=True)
