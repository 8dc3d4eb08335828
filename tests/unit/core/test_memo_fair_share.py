"""The decision memo's fair share per channel: when full, a channel holding the most lets its
oldest decision go (its own when the new decision's channel is one), so one channel flooding
Decides pushes out its own decisions, not the other channels' (whose outcomes then still learn
from the decision's inputs), and a channel alone still fills the whole memo."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from kairos.core.decision import Learned
from kairos.core.engine import DecisionEngine, _Memo, _Remembered

T0 = 1_800_000_000.0
CAPACITY = 40  # a memo_capacity small enough to flood in a unit test


@pytest.fixture
def engine(compiled, monkeypatch) -> DecisionEngine:
    monkeypatch.setattr("kairos.core.engine.DECISION_CACHE_SIZE", CAPACITY)
    engine = DecisionEngine(compiled)
    assert engine.memo_capacity == CAPACITY
    return engine


def decided(engine: DecisionEngine, channel: str, placement: str, customers: range,
            prefix: str = "c") -> list[str]:
    return [engine.decide(f"{prefix}{i}", channel, placement, {}, now=T0).decision_id
            for i in customers]


def kept(engine: DecisionEngine, decision_ids: list[str]) -> list[bool]:
    return [engine.inputs_of(d) is not None for d in decision_ids]


def test_a_flooding_channel_pushes_out_its_own_decisions_not_another_channels(engine):
    app = [engine.decide(f"a{i}", "app", "home", {}, now=T0) for i in range(5)]
    web = decided(engine, "web", "hero", range(3 * CAPACITY))  # a decide-only key's flood
    assert engine.remembered == CAPACITY
    assert kept(engine, [d.decision_id for d in app]) == [True] * 5
    assert kept(engine, web) == [False] * (len(web) - CAPACITY + 5) + [True] * (CAPACITY - 5)
    # so their outcomes learn from the inputs the decisions saw, not the profile as it is now
    assert engine.record_outcomes([(d.customer_id, d.actions[0].action_id, "app", "accept",
                                    T0, d.decision_id) for d in app]) == [Learned.DECISION] * 5


def test_a_channel_alone_fills_the_whole_memo_and_then_lets_its_oldest_go(engine):
    web = decided(engine, "web", "hero", range(CAPACITY + 7))
    assert engine.remembered == CAPACITY
    assert kept(engine, web) == [False] * 7 + [True] * CAPACITY


def test_a_channel_below_its_share_takes_it_back_from_the_largest(engine):
    """Past the flood, the other channel's decisions push the flooding one's out, until both
    hold half."""
    web = decided(engine, "web", "hero", range(CAPACITY))
    app = decided(engine, "app", "home", range(CAPACITY), prefix="a")
    assert engine.remembered == CAPACITY
    assert kept(engine, web) == [False] * (CAPACITY // 2) + [True] * (CAPACITY // 2)
    assert kept(engine, app) == [False] * (CAPACITY // 2) + [True] * (CAPACITY // 2)


def test_forget_drops_the_customers_decisions_on_every_channel(engine):
    ana = [engine.decide("ana", channel, placement, {}, now=T0).decision_id
           for channel, placement in (("web", "hero"), ("app", "home"), ("push", "notification"))]
    bob = decided(engine, "app", "home", range(3), prefix="bob")
    engine.forget("ana")
    assert kept(engine, ana) == [False] * 3 and kept(engine, bob) == [True] * 3
    assert engine.remembered == 3
    # the channels' orders lost ana's ids too: a flood past capacity lets go of none of them
    web = decided(engine, "web", "hero", range(2 * CAPACITY))
    assert engine.remembered == CAPACITY and kept(engine, bob) == [True] * 3
    assert sum(kept(engine, web)) == CAPACITY - 3


def test_forget_decisions_drops_those_of_the_customers_named_and_counts_them(engine):
    decided(engine, "web", "hero", range(6))
    decided(engine, "app", "home", range(6))
    assert engine.forget_decisions(lambda customer_id: int(customer_id[1:]) % 2 == 0) == 6
    assert engine.remembered == 6
    assert {m.customer_id for m in engine._remembered.values()} == {"c1", "c3", "c5"}
    assert engine.forget_decisions(lambda customer_id: False) == 0


# -- the rule against a reference model ------------------------------------------------------

def entry(customer: int, channel: int) -> _Remembered:
    return _Remembered(f"c{customer}", channel, np.zeros(1), (), ())


# (step, channel, customer, decisions): mostly bursts of decisions on one channel, so that the
# memo is full and its channels' sizes differ by more than one, or tie
STEPS = st.lists(st.tuples(st.sampled_from(("keep",) * 8 + ("drop", "drop", "clear")),
                           st.integers(0, 3), st.integers(0, 5), st.integers(1, 6)),
                 max_size=40)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 12), channels=st.integers(1, 4), steps=STEPS)
# one that let go for another channel's decision may no longer hold the most: (4, 4, 1) then
# channel 2's decisions make (4, 3, 2) and (4, 3, 3), where channel 0 lets go, not 2
@example(9, 3, [("keep", 0, 0, 4), ("keep", 1, 0, 4), ("keep", 2, 0, 1), ("keep", 2, 0, 2)])
# nor one a drop took from: (4, 4) less customer 1's two, then (4, 2, 2) and channel 1's
# decision makes (4, 3, 2), where channel 0 lets go, not 1
@example(8, 3, [("keep", 0, 0, 4), ("keep", 1, 1, 2), ("keep", 1, 2, 2), ("drop", 0, 1, 1),
                ("keep", 2, 3, 2), ("keep", 1, 2, 1)])
def test_the_memo_keeps_the_fair_share_rule_over_any_interleaving(capacity, channels, steps):
    """The memo against a list of (id, channel, customer) in the order kept: never over its
    capacity; what it lets go is the oldest of a channel that holds the most once the new
    decision is in, and that decision's own channel's oldest when it holds as many; nothing
    else goes but what a drop or a clear names."""
    memo, model, ids = _Memo(capacity, channels), [], itertools.count()
    for step, channel, customer, decisions in steps:
        channel %= channels
        for decision_id in (f"d{next(ids)}" for _ in range(decisions if step == "keep" else 0)):
            memo.keep(decision_id, entry(customer, channel))
            model.append((decision_id, channel, customer))
            if len(model) > capacity:
                held = {c: sum(m[1] == c for m in model) for c in range(channels)}
                most = max(held.values())
                lost = [m for m in model if memo.get(m[0]) is None]
                assert len(lost) == 1
                gone = lost[0]
                assert held[gone[1]] == most
                assert gone == next(m for m in model if m[1] == gone[1])  # its channel's oldest
                if held[channel] == most:
                    assert gone[1] == channel
                model.remove(gone)
            assert len(memo) == len(model) <= capacity
        if step == "drop":
            assert memo.drop(f"c{customer}".__eq__) == sum(m[2] == customer for m in model)
            model = [m for m in model if m[2] != customer]
        elif step == "clear":
            memo.clear()
            model = []
        assert len(memo) == len(model) <= capacity
        assert {d: (m.channel, m.customer_id) for d, m in memo.items()} == \
            {d: (c, f"c{who}") for d, c, who in model}
