"""Decide context strings do not grow the string table (hardening item 9), on both kernels.

A free-text context value such as `store_id` lives as long as its request: it needs a code only
to be compared, never a place in the table that profiles share.
"""
from __future__ import annotations

import pytest

from kairos.core.compiler import default_compiled
from kairos.core.engine import DecisionEngine

T0 = 1_800_000_000.0


@pytest.fixture
def engine(impl) -> DecisionEngine:
    return DecisionEngine(default_compiled())


def test_distinct_context_strings_leave_the_string_table_as_it_was(engine):
    strings = engine.compiled.strings
    before = len(strings.strings)
    for i in range(100_000):
        engine.encode_request("c", "store", "kiosk", {"store_id": f"store-{i}"}, now=T0)
    assert len(strings.strings) == before and len(strings.codes) == before


def store_invite_reason(engine, context) -> str | None:
    decision = engine.decide("c", "store", "kiosk", context, now=T0 + 60, explain=True)
    if "store_event_invite" in [a.action_id for a in decision.actions]:
        return "SELECTED"
    return {d.action_id: d.reason for d in decision.explanation.dropped}["store_event_invite"]


def test_context_strings_compare_as_before(engine):
    """`context.store_id == home_store` holds for the customer's own store only, whether the
    request's string is one the table knows or not."""
    engine.apply([engine.encode_event("c", "profile_updated", T0,
                                      {"home_store": "S1", "marketing_opt_in": True}),
                  engine.encode_event("c", "store_visit", T0,
                                      {"store_id": "S1", "curbside": False})])
    own = store_invite_reason(engine, {"store_id": "S1"})
    assert own != "SUITABILITY"
    assert store_invite_reason(engine, {}) == own  # no store given passes too
    for other in ("S2", "never seen", "<other>"):
        assert store_invite_reason(engine, {"store_id": other}) == "SUITABILITY"


def test_unknown_context_strings_equal_themselves_and_no_other(engine):
    ctx = engine.encode_context({"store_id": "x-1", "device": "mobile"})
    again = engine.encode_context({"store_id": "x-1"})
    c = engine.compiled
    store, device = c.context_index["store_id"], c.context_index["device"]
    assert ctx[store] == ctx[store] and ctx[store] not in c.strings.codes.values()
    assert ctx[device] == c.strings.codes["mobile"]
    assert again[store] == ctx[store]  # a request's own codes; only ever compared within it
