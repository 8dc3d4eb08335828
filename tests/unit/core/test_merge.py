"""Profile merge against its oracle: splitting a journey between two profiles and merging
them gives the profile of one customer who saw the whole journey."""
from __future__ import annotations

import math
import random

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.workload import T0, random_event
from kairos.core.compiler import CLOCK_SLOT
from kairos.core.engine import DecisionEngine
from kairos.core.merge import KEEP, merge_profiles, slot_ops


def journey(compiled, seed: int, n: int) -> list[tuple[str, float, dict]]:
    """Events at distinct times (seconds apart, shuffled: late events happen too)."""
    rng = random.Random(seed)
    times = [T0 + rng.randrange(0, 40 * 86400) for _ in range(n)]
    events = []
    for t in sorted(set(times), key=lambda _: rng.random()):
        etype, attrs = random_event(compiled.catalog, rng, t)
        events.append((etype, t, attrs))
    return events


def interactions(compiled, seed: int, n: int) -> list[tuple[str, str, str, float]]:
    rng = random.Random(seed)
    offered = [(compiled.action_ids[a], compiled.channel_names[ch])
               for a, ch in zip(*np.nonzero(compiled.offered))]
    return [rng.choice(offered) + (rng.choice(["impression", "accept", "reject"]),
                                   T0 + 60.0 * k)
            for k in range(n)]


def apply(engine: DecisionEngine, customer_id: str, events) -> None:
    engine.apply([engine.encode_event(customer_id, *e) for e in events])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), n=st.integers(0, 40), outcomes=st.integers(0, 50),
       split=st.floats(0.0, 1.0))
def test_merging_split_journeys_equals_one_journey(compiled, seed, n, outcomes, split):
    engine = DecisionEngine(compiled, seed=1)
    rng = random.Random(seed)
    events = journey(compiled, seed, n)
    mine = [rng.random() < split for _ in events]
    apply(engine, "whole", events)
    apply(engine, "known", [e for e, m in zip(events, mine) if m])
    apply(engine, "anon", [e for e, m in zip(events, mine) if not m])
    shown = interactions(compiled, seed, outcomes)
    for action, channel, outcome, when in shown:
        who = "known" if rng.random() < split else "anon"
        engine.record_outcomes([("whole", action, channel, outcome, when, None),
                                (who, action, channel, outcome, when, None)])
    for c in ("whole", "known", "anon"):
        engine.activate([c])

    merge_profiles(compiled, engine.table, "known", "anon")

    t = engine.table
    whole, merged = t.values[t.index["whole"]], t.values[t.index["known"]]
    features = slot_ops(compiled) != KEEP
    features[CLOCK_SLOT] = True
    for s in np.flatnonzero(compiled.layout.view_kind != 0):
        features[s] = True  # decayed and time_since slots
    np.testing.assert_allclose(merged[features], whole[features], rtol=1e-9, atol=1e-12)
    last_times = [compiled.layout.slot[f.name] + 1 for f in compiled.catalog.features
                  if f.kind == "last"]
    np.testing.assert_array_equal(merged[last_times], whole[last_times])
    assert t.applied[t.index["known"]] == t.applied[t.index["whole"]] == len(events)
    assert engine.history("known") == engine.history("whole")


def test_the_known_customers_attributes_win_and_fill_from_the_other(compiled):
    engine = DecisionEngine(compiled, seed=1)
    attrs = [a for a in compiled.catalog.attributes if a.from_event is not None]
    by_type = {}
    for a in attrs:
        by_type.setdefault(a.type, a)
    attr = by_type.get("string") or attrs[0]
    slot = compiled.layout.slot[attr.name]
    engine.activate(["known", "anon"])
    t = engine.table
    t.values[t.index["known"], slot] = math.nan
    t.values[t.index["anon"], slot] = 7.0
    merge_profiles(compiled, t, "known", "anon")
    assert t.values[t.index["known"], slot] == 7.0
    t.values[t.index["known"], slot] = 3.0
    merge_profiles(compiled, t, "known", "anon")
    assert t.values[t.index["known"], slot] == 3.0


def test_a_merge_with_an_empty_profile_changes_nothing(compiled):
    engine = DecisionEngine(compiled, seed=1)
    apply(engine, "known", journey(compiled, 5, 30))
    engine.activate(["anon"])
    before = engine.table.export("known")
    merge_profiles(compiled, engine.table, "known", "anon")
    assert engine.table.export("known").equals(before)
