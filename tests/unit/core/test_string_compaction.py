"""The engine's string table keeps only what the catalog and the resident profiles use
(DecisionEngine.compact_strings, StringTable.compact): compaction changes no profile a person
reads and no rule's result, and drops the strings nobody holds. On both kernels."""
from __future__ import annotations

import random

import pytest

from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import CompiledCatalog, compiled_from_text
from kairos.core.engine import DecisionEngine

T0 = 1_800_000_000.0
STAGES = ("ELIGIBILITY", "APPLICABILITY", "SUITABILITY")




def free_text_catalog() -> CompiledCatalog:
    """The default catalog with two more free-text slots besides home_store (`last` features
    of fields without declared values), compiled with a string table of its own."""
    text = default_catalog_text().replace("\nfeatures:\n", "\nfeatures:\n"
                                          "  last_store_visited: {kind: last, event: store_visit, "
                                          "field: store_id}\n"
                                          "  last_carrier: {kind: last, event: delivery_update, "
                                          "field: carrier}\n", 1)
    return compiled_from_text(text, "free-text.yaml", strict=True)


@pytest.fixture
def engine(impl) -> DecisionEngine:
    return DecisionEngine(free_text_catalog(), capacity=64)


def profiles(engine: DecisionEngine) -> dict[str, dict]:
    return {c: engine.profile(c, T0 + 10) for c in engine.table.ids if c is not None}


def live_texts(engine: DecisionEngine) -> set[str]:
    """The free text the residents' profiles show (attributes and features)."""
    return {v for p in profiles(engine).values()
            for v in [*p["attributes"].values(), *p["features"].values()] if isinstance(v, str)}


def updated(engine: DecisionEngine, customer: str, t: float, **fields) -> None:
    engine.apply([engine.encode_event(customer, "profile_updated", t, fields)])


@pytest.mark.parametrize("seed", range(6))
def test_compaction_keeps_every_residents_profile_and_only_their_strings(engine, seed):
    rng = random.Random(seed)
    strings = engine.compiled.strings
    catalog = list(strings.strings)
    pool = [f"store-{i}" for i in range(20)]  # some text many customers share

    def text() -> str:
        return rng.choice(pool) if rng.random() < 0.3 else \
            "".join(rng.choice("abcé€😀 ") for _ in range(rng.randint(0, 40)))

    customers = [f"c{i}" for i in range(rng.randint(5, 60))]
    for step in range(rng.randint(50, 400)):
        c = rng.choice(customers)
        if rng.random() < 0.1 and c in engine.table:
            engine.table.evict(c)  # its strings are dead now (a passivation, a move)
        elif rng.random() < 0.2:  # string fields `last` features read
            engine.apply([engine.encode_event(c, "store_visit", T0 + step,
                                              {"store_id": text(), "curbside": False})])
        elif rng.random() < 0.2:
            engine.apply([engine.encode_event(c, "delivery_update", T0 + step,
                                              {"order_id": "o-1", "status": "shipped",
                                               "carrier": text()})])
        else:
            updated(engine, c, T0 + step, home_store=text(), tier=rng.choice(["gold", "none"]))
        if rng.random() < 0.05:
            engine.compact_strings()  # compactions in between: codes renumbered again
    before, texts = profiles(engine), live_texts(engine)
    engine.compact_strings()
    assert profiles(engine) == before
    assert strings.strings[:len(catalog)] == catalog  # the catalog's codes never move
    assert set(strings.strings[len(catalog):]) == texts - set(catalog)
    assert all(strings.codes[s] == code for code, s in enumerate(strings.strings))
    # a string dropped and sent again is a new string like any other
    updated(engine, customers[0], T0 + 1000, home_store="dropped, then back")
    assert engine.profile(customers[0], T0 + 1000)["attributes"]["home_store"] == \
        "dropped, then back"


def test_an_overflowed_value_reads_the_same_after_compaction_and_room_comes_back(engine):
    strings = engine.compiled.strings
    strings.limit = strings.fixed + 3
    for i in range(5):
        updated(engine, f"c{i}", T0, home_store=f"store-{i}")
    shown = {c: p["attributes"]["home_store"] for c, p in profiles(engine).items()}
    assert shown == {"c0": "store-0", "c1": "store-1", "c2": "store-2", "c3": "<other>",
                     "c4": "<other>"}  # the last resort: the table is full
    for c in ("c0", "c1"):
        engine.table.evict(c)
    engine.compact_strings()
    assert {c: p["attributes"]["home_store"] for c, p in profiles(engine).items()} == \
        {c: shown[c] for c in ("c2", "c3", "c4")}
    updated(engine, "c5", T0, home_store="store-5")  # room again: two strings were dropped
    assert engine.profile("c5", T0)["attributes"]["home_store"] == "store-5"


def stage_drops(engine: DecisionEngine, customer: str, store: str) -> dict[str, str]:
    decision = engine.decide(customer, "store", "kiosk", {"store_id": store}, T0 + 10,
                             explain=True)
    return {d.action_id: d.reason for d in decision.explanation.dropped if d.reason in STAGES}


def test_rules_give_the_same_results_after_compaction(engine):
    """Rules compare strings with catalog literals (tier in [...], last_viewed_category ==
    action.category) and with another string's code (context.store_id == home_store, the
    context coded by the table as it is then): renumbering changes none of them."""
    rng = random.Random(7)
    customers = [f"c{i}" for i in range(40)]
    for i in range(500):  # strings nobody holds any more, before the residents': theirs move
        updated(engine, "flood", T0, home_store=f"junk-{i}")
    for i, c in enumerate(customers):
        updated(engine, c, T0, home_store=f"store-{i % 7}", marketing_opt_in=True,
                tier=rng.choice(["none", "silver", "gold", "platinum"]))
        engine.apply([engine.encode_event(c, "page_view", T0 + 1, {
            "category": rng.choice(["apparel", "electronics", "home"])})] +
            [engine.encode_event(c, "store_visit", T0 + 2, {"store_id": f"visit-{i}",
                                                             "curbside": False})])
    stores = [f"store-{i}" for i in range(8)]
    before = {(c, s): stage_drops(engine, c, s) for c in customers for s in stores}
    assert any("store_event_invite" not in d for d in before.values())
    assert any(d.get("store_event_invite") == "SUITABILITY" for d in before.values())
    engine.compact_strings()
    strings = engine.compiled.strings
    assert len(strings.strings) == strings.fixed + 7 + 40 + 1  # stores, visits, the flood's last
    assert {(c, s): stage_drops(engine, c, s) for c in customers for s in stores} == before
