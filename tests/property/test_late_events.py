"""Property: the values events set by replacement (`last` features, attributes `from` an event)
do not depend on the order events arrive in: a journey applied shuffled, late events and all,
leaves them as the same journey applied in time order, on the kernel and its twin alike, and
so does one split between two profiles that are then merged."""
from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.workload import T0, random_event
from kairos.core import _kernel, reference
from kairos.core.compiler import default_compiled
from kairos.core.engine import DecisionEngine
from kairos.core.merge import merge_profiles
from kairos.core.state import ProfileTable

COMPILED = default_compiled()


def replaced_slots(c) -> list[int]:
    """The slots of `last` features and `from` attributes, each with its time slot."""
    names = [f.name for f in c.catalog.features if f.kind == "last"] + \
        [a.name for a in c.catalog.attributes if a.from_event is not None]
    return sorted(s for n in names for s in (c.layout.slot[n], c.layout.slot[n] + 1))


def applied(module, c, events) -> np.ndarray:
    table = ProfileTable(c, 1)
    row = np.array([table.row("c")], np.int64)
    view = module.StateView(table.values, table.ring_action, table.ring_channel,
                            table.ring_outcome, table.ring_time, table.ring_head)
    cat = module.CatalogView(c)
    for e in events:  # one call each: the order they arrive in
        module.apply_events(cat, view, row, np.array([e.event_type], np.int32),
                            np.array([e.time]), e.fields[None, :])
    return table.values[0]


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 60),
       spread_s=st.sampled_from([60.0, 3600.0, 40 * 86400.0]))
def test_replaced_values_do_not_depend_on_arrival_order(seed, n, spread_s):
    rng = random.Random(seed)
    engine = DecisionEngine(COMPILED)
    times = rng.sample(range(int(spread_s)), min(n, int(spread_s)))  # distinct: no ties
    events = []
    for t in times:
        etype, attrs = random_event(COMPILED.catalog, rng, T0 + t)
        events.append(engine.encode_event("c", etype, T0 + t, attrs))
    in_order = sorted(events, key=lambda e: e.time)
    slots = replaced_slots(COMPILED)
    expected = applied(reference, COMPILED, in_order)[slots]
    for module in (_kernel, reference):
        got = applied(module, COMPILED, events)[slots]
        np.testing.assert_array_equal(got, expected, err_msg=module.IMPLEMENTATION)



@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(0, 40), split=st.floats(0.0, 1.0))
def test_merging_split_journeys_keeps_the_newest_replaced_values(seed, n, split):
    """A journey split between a known customer and an anonymous one, shuffled, then merged:
    the replaced values are those of one customer who saw it all (core/merge.py)."""
    rng = random.Random(seed)
    engine = DecisionEngine(COMPILED)
    for t in rng.sample(range(40 * 86400), n):
        etype, attrs = random_event(COMPILED.catalog, rng, T0 + t)
        engine.apply([engine.encode_event(who, etype, T0 + t, attrs)
                      for who in ("whole", "known" if rng.random() < split else "anon")])
    engine.activate(["whole", "known", "anon"])
    merge_profiles(COMPILED, engine.table, "known", "anon")
    t, slots = engine.table, replaced_slots(COMPILED)
    np.testing.assert_array_equal(t.values[t.index["known"]][slots],
                                  t.values[t.index["whole"]][slots])
