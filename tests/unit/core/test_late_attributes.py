"""Attributes set `from` an event keep the newest value by event time, as `last` features do:
a late, older event (a CRM batch, a replay) must not re-grant a consent withdrawn since. Both
kernels, merges, and rows written before attributes kept a time."""
from __future__ import annotations

import math

import pytest

from kairos.cluster.storage import blocks
from kairos.core.engine import DecisionEngine
from kairos.core.merge import merge_profiles

T0 = 1_800_000_000.0
H = 3600.0


@pytest.fixture
def engine(impl, small) -> DecisionEngine:
    return DecisionEngine(small)


def apply(engine, customer, *events):
    engine.apply([engine.encode_event(customer, etype, t, attrs) for etype, t, attrs in events])


def attributes(engine, customer, now=T0 + 3 * H):
    return engine.profile(customer, now)["attributes"]


def time_of(engine, customer, name) -> float:
    t = engine.table
    return float(t.values[t.index[customer], engine.compiled.layout.slot[name] + 1])


def test_a_late_older_event_does_not_overwrite_a_newer_consent(engine):
    apply(engine, "c", ("add_to_cart", T0, {"amount": 40.0}),
          ("profile_updated", T0 + H, {"tier": "gold", "email_opt_in": False}),
          ("profile_updated", T0, {"tier": "none", "email_opt_in": True}))  # late: CRM batch
    assert attributes(engine, "c", T0 + H + 100) == {
        "tier": "gold", "marketing_opt_in": True, "email_opt_in": False, "member_since": None}
    decision = engine.decide("c", "email", now=T0 + H + 100, explain=True)
    assert [a.action_id for a in decision.actions] == []
    assert {d.action_id: d.reason for d in decision.explanation.dropped}["cart_reminder"] == \
        "NO_CONSENT"


def test_newer_and_equal_times_still_set_the_value(engine):
    apply(engine, "c", ("profile_updated", T0, {"tier": "silver", "email_opt_in": True}),
          ("profile_updated", T0 + H, {"tier": "gold", "email_opt_in": False}))
    assert attributes(engine, "c")["tier"] == "gold"
    # at the same time, the one applied last wins (the journal's order, replayed the same)
    apply(engine, "c", ("profile_updated", T0 + H, {"tier": "none", "email_opt_in": True}))
    assert attributes(engine, "c")["tier"] == "none"
    assert attributes(engine, "c")["email_opt_in"] is True


def test_each_attribute_keeps_the_time_of_its_own_value(engine):
    """An event that leaves an optional field out leaves that attribute's time as it was: a
    later event's tier does not make an older opt-in look newer than it is."""
    apply(engine, "c", ("profile_updated", T0 + H, {"tier": "gold", "email_opt_in": False}),
          ("profile_updated", T0 + 2 * H, {"tier": "silver"}),
          ("profile_updated", T0 + 1.5 * H, {"tier": "none", "email_opt_in": True}))
    assert attributes(engine, "c")["tier"] == "silver"
    assert attributes(engine, "c")["email_opt_in"] is True  # 1.5 h is newer than 1 h
    assert time_of(engine, "c", "email_opt_in") == T0 + 1.5 * H
    assert time_of(engine, "c", "tier") == T0 + 2 * H


def test_an_attribute_no_event_sets_has_no_time_slot(small):
    layout = small.layout
    assert layout.names[layout.slot["email_opt_in"] + 1] == ""
    assert layout.names[layout.slot["marketing_opt_in"] + 1] == "email_opt_in"


def merged(engine, known_events, anon_events):
    apply(engine, "known", *known_events)
    apply(engine, "anon", *anon_events)
    engine.activate(["known", "anon"])
    merge_profiles(engine.compiled, engine.table, "known", "anon")
    return attributes(engine, "known")


def test_a_merge_keeps_the_newer_attribute_whoever_had_it(engine):
    """The anonymous visitor opted out after the CRM's opt-in on the known customer: the
    opt-out is the customer's newest choice and survives the link."""
    got = merged(engine, [("profile_updated", T0, {"tier": "gold", "email_opt_in": True})],
                 [("profile_updated", T0 + H, {"tier": "silver", "email_opt_in": False})])
    assert (got["tier"], got["email_opt_in"]) == ("silver", False)
    assert time_of(engine, "known", "email_opt_in") == T0 + H


def test_a_merge_keeps_the_known_customers_newer_attribute(engine):
    got = merged(engine, [("profile_updated", T0 + H, {"tier": "gold", "email_opt_in": False})],
                 [("profile_updated", T0, {"tier": "silver", "email_opt_in": True})])
    assert (got["tier"], got["email_opt_in"]) == ("gold", False)


def test_a_merge_keeps_an_event_set_value_over_a_default(engine):
    """The known customer never had an opt-in event: its default has no time, and the
    anonymous profile's event-set value is newer; the other way round it stays."""
    got = merged(engine, [("add_to_cart", T0, {"amount": 1.0})],
                 [("profile_updated", T0 - H, {"tier": "gold", "email_opt_in": True})])
    assert (got["tier"], got["email_opt_in"]) == ("gold", True)
    engine.table.evict("anon")
    engine.activate(["anon"])
    merge_profiles(engine.compiled, engine.table, "known", "anon")
    assert attributes(engine, "known")["email_opt_in"] is True


def written_before(engine, customer) -> dict:
    """The customer's block as code from before attributes kept a time wrote it: the same
    slots, names and meanings, without the attributes' time slots."""
    block = blocks.export_block(engine, [customer])
    attribute_times = {f"{a.name}@time" for a in engine.compiled.catalog.attributes}
    keep = [k for k, key in enumerate(block["slots"]) if key not in attribute_times]
    assert len(keep) < len(block["slots"])
    n = blocks.MEANING_BYTES
    block["slots"] = [block["slots"][k] for k in keep]
    block["string_columns"] = [block["string_columns"][k] for k in keep]
    block["meanings"] = b"".join(block["meanings"][k * n:k * n + n] for k in keep)
    block["values"] = block["values"][:, keep]
    return block


def test_a_profile_written_before_loads_its_values_as_of_its_newest_event(engine):
    """Upgrading: a stored profile keeps its attributes, each timed at the profile's clock (the
    newest event it had), so a late, older event (a stale consent) changes none of them, and
    a newer one does."""
    apply(engine, "c", ("profile_updated", T0 + H, {"tier": "gold", "email_opt_in": False}),
          ("page_view", T0 + 2 * H, {"category": "shoes"}))
    block = written_before(engine, "c")
    before = engine.profile("c", T0 + 3 * H)
    fresh = DecisionEngine(engine.compiled)
    blocks.import_block(fresh, blocks.unpack(blocks.pack(block)))
    assert fresh.profile("c", T0 + 3 * H) == before
    assert time_of(fresh, "c", "email_opt_in") == T0 + 2 * H
    apply(fresh, "c", ("profile_updated", T0 + 1.5 * H, {"tier": "silver", "email_opt_in": True}))
    assert (attributes(fresh, "c")["tier"], attributes(fresh, "c")["email_opt_in"]) == \
        ("gold", False)
    apply(fresh, "c", ("profile_updated", T0 + 2.5 * H, {"tier": "silver"}))
    assert attributes(fresh, "c")["tier"] == "silver"
    assert time_of(fresh, "c", "tier") == T0 + 2.5 * H


def test_profiles_written_before_merge_by_their_newest_events(engine):
    """Two rows from before, their attributes timed at their clocks: the newer one's win, and
    fill what the other never had."""
    apply(engine, "known", ("profile_updated", T0, {"tier": "gold"}))
    apply(engine, "anon", ("profile_updated", T0 + H, {"tier": "silver", "email_opt_in": True}))
    fresh = DecisionEngine(engine.compiled)
    for customer in ("known", "anon"):
        blocks.import_block(fresh, written_before(engine, customer))
    t, slot = fresh.table, fresh.compiled.layout.slot["email_opt_in"]
    t.values[t.index["known"], slot] = math.nan  # an attribute it never had
    merge_profiles(fresh.compiled, t, "known", "anon")
    got = attributes(fresh, "known")
    assert (got["tier"], got["email_opt_in"]) == ("silver", True)
    assert time_of(fresh, "known", "tier") == T0 + H
