"""The embedded default catalog: a realistic omnichannel retailer that fits the budgets."""
from __future__ import annotations

import random

from kairos.core.engine import DecisionEngine

from bench.kernel import bytes_per_customer
from bench.workload import T0, random_context, random_event


def test_size_and_scope(compiled):
    cat = compiled.catalog
    assert len(cat.actions) >= 30
    assert {"sell", "serve", "retain"} <= set(compiled.group_names)
    assert {"web", "app", "call_center", "email", "push", "store"} <= set(compiled.channel_names)
    assert len(cat.events) >= 12


def test_a_customer_fits_in_one_kib(compiled):
    assert bytes_per_customer(compiled, 20_000) <= 1024


def test_random_traffic_decides_on_every_channel(impl, compiled):
    engine = DecisionEngine(compiled)
    rng = random.Random(3)
    events = []
    for i in range(200):
        etype, attrs = random_event(compiled.catalog, rng, T0)
        events.append(engine.encode_event(f"c{i % 20}", etype, T0 - rng.uniform(0, 3e5), attrs))
    engine.apply(events)
    shown = set()
    for i in range(20):
        for channel in compiled.channel_names:
            decision = engine.decide(f"c{i}", channel,
                                     context=random_context(compiled.catalog, rng, T0), now=T0,
                                     explain=True)
            shown.update(a.action_id for a in decision.actions)
            assert len(decision.explanation.dropped) + len(decision.actions) == \
                len(compiled.action_ids)
    assert len(shown) >= 5
