"""The decision memo: the most recent decisions, as one LRU keeps them, except that a channel
holding no more than its floor (capacity // (2 x the catalog's channels)) loses no decision to
another channel's new one. So ordinary traffic keeps the last decisions whatever their
channels, and one channel flooding Decides leaves every other channel its floor of its most
recent decisions (whose outcomes then still learn from the decision's inputs)."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from kairos.core.decision import Learned
from kairos.core.engine import DecisionEngine
from kairos.core.memo import Memo, Remembered

T0 = 1_800_000_000.0
CAPACITY = 48  # a memo_capacity small enough to flood in a unit test
FLOOR = 4  # 48 // (2 x the default catalog's 6 channels)


@pytest.fixture
def engine(compiled, monkeypatch) -> DecisionEngine:
    monkeypatch.setattr("kairos.core.engine.DECISION_CACHE_SIZE", CAPACITY)
    engine = DecisionEngine(compiled)
    assert engine.memo_capacity == CAPACITY and len(compiled.channel_names) == 6
    return engine


WHERE = {"web": "hero", "app": "home", "push": "notification"}


def decided(engine: DecisionEngine, channel: str, customers: range, prefix: str = "c"
            ) -> list[str]:
    return [engine.decide(f"{prefix}{i}", channel, WHERE[channel], {}, now=T0).decision_id
            for i in customers]


def kept(engine: DecisionEngine, decision_ids: list[str]) -> list[bool]:
    return [engine.inputs_of(d) is not None for d in decision_ids]


def test_a_flood_leaves_every_other_channel_its_floor_of_its_latest_decisions(engine):
    app = [engine.decide(f"a{i}", "app", "home", {}, now=T0) for i in range(10)]
    push = decided(engine, "push", range(2), prefix="p")
    web = decided(engine, "web", range(3 * CAPACITY))  # a decide-only key's flood
    assert engine.remembered == CAPACITY
    # app held more than its floor: its oldest went down to it; push held less: all kept
    assert kept(engine, [d.decision_id for d in app]) == [False] * 6 + [True] * FLOOR
    assert kept(engine, push) == [True] * 2
    assert kept(engine, web) == [False] * (len(web) - CAPACITY + 6) + [True] * (CAPACITY - 6)
    # so their outcomes learn from the inputs the decisions saw, not the profile as it is now
    assert engine.record_outcomes([(d.customer_id, d.actions[0].action_id, "app", "accept",
                                    T0, d.decision_id) for d in app[6:]]) \
        == [Learned.DECISION] * FLOOR


def test_ordinary_traffic_keeps_the_latest_decisions_whatever_their_channels(engine):
    """Twelve web decisions to one push, as the LRU did: push holds about 4 of the last 48, its
    floor, and a push decision found oldest at the floor stays until push's next decision,
    which takes its place (no channel's past pins the memo)."""
    made: list[str] = []
    pushes: list[str] = []
    waited = 0  # times a push decision stayed past the last 48
    for i in range(13 * 12):
        channel = "push" if i % 13 == 12 else "web"
        made += decided(engine, channel, range(i, i + 1))
        pushes += made[-1:] if channel == "push" else []
        if len(made) > CAPACITY:
            held = kept(engine, made)
            assert held[-CAPACITY + 1:] == [True] * (CAPACITY - 1)
            older = [d for d, k in zip(made[:-CAPACITY + 1], held) if k]
            before = [d for d in pushes if d not in made[-CAPACITY + 1:]][-1:]
            assert older in ([made[-CAPACITY]], before)
            waited += older != [made[-CAPACITY]]
    assert waited > 0


def test_a_channel_alone_fills_the_whole_memo_and_then_lets_its_oldest_go(engine):
    web = decided(engine, "web", range(CAPACITY + 7))
    assert engine.remembered == CAPACITY
    assert kept(engine, web) == [False] * 7 + [True] * CAPACITY


def test_a_channel_below_its_floor_makes_room_from_its_own_oldest(engine):
    """Its decisions are the oldest: its next one lets its oldest go, not another channel's
    newer one, so a quiet channel's decisions age out as its new ones come."""
    push = decided(engine, "push", range(3), prefix="p")
    web = decided(engine, "web", range(CAPACITY + 10))
    more = decided(engine, "push", range(2), prefix="q")
    assert kept(engine, push + more) == [False, False, True, True, True]
    assert sum(kept(engine, web)) == CAPACITY - 3


def test_forget_drops_the_customers_decisions_on_every_channel(engine):
    ana = [engine.decide("ana", channel, placement, {}, now=T0).decision_id
           for channel, placement in WHERE.items()]
    bob = decided(engine, "app", range(3), prefix="bob")
    engine.forget("ana")
    assert kept(engine, ana) == [False] * 3 and kept(engine, bob) == [True] * 3
    assert engine.remembered == 3
    # and their counts: app holds 3, under its floor, so a flood past capacity keeps them
    web = decided(engine, "web", range(2 * CAPACITY))
    assert engine.remembered == CAPACITY and kept(engine, bob) == [True] * 3
    assert sum(kept(engine, web)) == CAPACITY - 3


def test_forget_decisions_drops_those_of_the_customers_named_and_counts_them(engine):
    decided(engine, "web", range(6))
    decided(engine, "app", range(6))
    assert engine.forget_decisions(lambda customer_id: int(customer_id[1:]) % 2 == 0) == 6
    assert engine.remembered == 6
    assert {m.customer_id for m in engine._remembered.values()} == {"c1", "c3", "c5"}
    assert engine.forget_decisions(lambda customer_id: False) == 0


def test_decisions_held_out_of_the_memo_are_remembered_only_when_named(engine):
    """A full memo: the decisions made with remember False push nothing out; those named
    after are remembered in the order made, each pushing out the oldest; the rest are gone."""
    web = decided(engine, "web", range(CAPACITY))
    views = [engine.encode_request(f"v{i}", "app", "home", None, T0) for i in range(5)]
    held = [d.decision_id for d in engine.decide_encoded(views, remember=False)]
    assert engine.remembered == CAPACITY and kept(engine, web + held) == \
        [True] * CAPACITY + [False] * 5
    engine.remember_held({held[3], held[1]})
    assert kept(engine, held) == [False, True, False, True, False]
    assert kept(engine, web) == [False] * 2 + [True] * (CAPACITY - 2)
    engine.remember_held(set(held))  # held no more
    assert kept(engine, held) == [False, True, False, True, False]


@pytest.mark.parametrize("channel", [6, -1])
def test_a_channel_code_not_the_memos_is_refused_with_the_memo_unchanged(channel):
    memo = Memo(4, 6)
    memo.keep("d0", entry(0, 5))
    with pytest.raises(ValueError, match="channel code"):
        memo.keep("d1", entry(1, channel))
    assert len(memo) == 1 and memo.get("d1") is None and dict(memo.items()).keys() == {"d0"}


def test_memo_capacity_is_the_memos_own(engine, monkeypatch):
    """Not computed again from the settings: a memo made at 48 holds 48 after they change."""
    monkeypatch.setattr("kairos.core.engine.DECISION_CACHE_SIZE", 10)
    assert engine.memo_capacity == CAPACITY
    decided(engine, "web", range(CAPACITY + 1))
    assert engine.remembered == CAPACITY


# -- the rule against a reference model ------------------------------------------------------

def entry(customer: int, channel: int) -> Remembered:
    return Remembered(f"c{customer}", channel, np.zeros(1), (), ())


# (step, channel, customer, decisions): mostly bursts of decisions on one channel, so that the
# memo is full and channels sit below, at and above their floors
STEPS = st.lists(st.tuples(st.sampled_from(("keep",) * 8 + ("drop", "drop", "clear")),
                           st.integers(0, 3), st.integers(0, 5), st.integers(1, 8)),
                 max_size=40)


@settings(max_examples=400, deadline=None)
@given(capacity=st.integers(1, 16), channels=st.integers(1, 4), steps=STEPS)
# floor 2: channel 0 at 3 loses its oldest to channel 1 (a floor of 4 would keep it), then at 2
# keeps them (a floor of 1, or at-or-below taken as above, would not)
@example(8, 2, [("keep", 0, 0, 3), ("keep", 1, 0, 5), ("keep", 1, 0, 1), ("keep", 1, 0, 1)])
# channel 0 at 1 of a floor of 2: its own next decision lets its oldest go, not channel 1's
@example(8, 2, [("keep", 0, 0, 1), ("keep", 1, 0, 7), ("keep", 0, 0, 1)])
# channel 0's two, at the floor, are set aside for channel 1's; its next lets its oldest go,
# older than any not set aside (a memo that only moved them to its newest end would not)
@example(8, 2, [("keep", 0, 0, 2), ("keep", 1, 0, 6), ("keep", 1, 0, 1), ("keep", 0, 0, 1)])
# channel 1's two then channel 0's two are set aside; a drop makes room, both channels pass
# their floor by a keep that lets nothing go: channel 2's next decisions let go of channel 1's
# oldest (set aside first), then channel 0's
@example(12, 3, [("keep", 1, 0, 2), ("keep", 0, 0, 2), ("keep", 2, 1, 8), ("keep", 2, 2, 1),
                 ("drop", 0, 1, 1), ("keep", 0, 0, 1), ("keep", 1, 0, 1), ("keep", 2, 2, 7)])
# a channel over its floor whose set-aside decision is older than the new decision's own
# set-aside one lets it go first (taking the new decision's own first would not)
@example(6, 3, [("keep", 1, 0, 1), ("keep", 0, 0, 1), ("keep", 2, 1, 4), ("keep", 2, 1, 1),
                ("drop", 0, 1, 1), ("keep", 1, 0, 1), ("keep", 2, 2, 3), ("keep", 0, 0, 1)])
# a drop that leaves a channel's set-aside decisions with no channel over its floor: the
# memo's account of those channels follows each drop (none left stale by a delete)
@example(4, 2, [("keep", 1, 1, 1), ("keep", 0, 0, 3), ("keep", 0, 1, 1), ("drop", 0, 0, 1),
                ("keep", 1, 0, 1), ("drop", 0, 0, 1), ("keep", 0, 0, 3)])
def test_the_memo_keeps_the_rule_over_any_interleaving(capacity, channels, steps):
    """The memo against a list of (id, channel, customer) in the order made: when full, the
    oldest goes whose channel holds more than the floor, counting the new decision, or is the
    new decision's own; nothing else goes but what a drop or a clear names."""
    memo, model, ids = Memo(capacity, channels), [], itertools.count()
    floor = capacity // (2 * channels)
    for step, channel, customer, decisions in steps:
        channel %= channels
        for decision_id in (f"d{next(ids)}" for _ in range(decisions if step == "keep" else 0)):
            memo.keep(decision_id, entry(customer, channel))
            model.append((decision_id, channel, customer))
            if len(model) > capacity:
                held = Counter(c for _, c, _ in model)
                model.remove(next(m for m in model if held[m[1]] > floor or m[1] == channel))
            assert {d: (m.channel, m.customer_id) for d, m in memo.items()} == \
                {d: (c, f"c{who}") for d, c, who in model}
        if step == "drop":
            assert memo.drop(f"c{customer}".__eq__) == sum(m[2] == customer for m in model)
            model = [m for m in model if m[2] != customer]
        elif step == "clear":
            memo.clear()
            model = []
        assert len(memo) == len(model) <= capacity
        assert {d: (m.channel, m.customer_id) for d, m in memo.items()} == \
            {d: (c, f"c{who}") for d, c, who in model}
