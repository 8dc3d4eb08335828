"""The outcome rate limit holds in every window of OUTCOME_RATE_WINDOW_S, wherever it starts:
fixed windows let twice the limit through around a window's turn (issue 18)."""
import math
import random
import time
from array import array
from bisect import bisect_right

from kairos.cluster.control.partitions import partition_of
from kairos.cluster.protocol import BUSY, INVALID, Outcome
from kairos.cluster.settings import OUTCOME_RATE_WINDOW_S, OUTCOMES_PER_CUSTOMER
from kairos.cluster.shard.outcomes import RATE_DROPPED_PER_CALL, RATE_REFUSAL, OutcomeRate
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.core.catalog import load_default_catalog
from kairos.core.compiler import compile_catalog

W, LIMIT = OUTCOME_RATE_WINDOW_S, OUTCOMES_PER_CUSTOMER


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def by_id(clock: Clock) -> OutcomeRate:
    """A rate that keeps its customers by id, not by digest, for these tests to read
    (test_forget_memory.py: the digest)."""
    rate = OutcomeRate(clock, bytes(32))
    rate._named = str
    return rate


def taken(rate: OutcomeRate, customer: str, n: int) -> int:
    return sum(rate.refusal(customer) is None for _ in range(n))


def latest(kept) -> float:
    return kept if isinstance(kept, float) else kept[-1]


def test_bursts_either_side_of_a_window_turn_take_the_limit_only():
    clock = Clock()
    rate = by_id(clock)
    rate.refusal("other")  # a fixed window would start here
    clock.now += W - 1  # its last second
    before = taken(rate, "c", 2 * LIMIT)
    clock.now += 1.01  # the next fixed window's first
    after = taken(rate, "c", 2 * LIMIT)
    assert (before, after) == (LIMIT, 0)
    why = rate.refusal("c")
    assert f"more than {LIMIT} {RATE_REFUSAL} {W:g} s" == why
    clock.now += W - 1.02  # the burst's outcomes are still within the last window
    assert rate.refusal("c") is not None
    clock.now += 0.01  # a whole window after the burst: it takes the limit again
    assert taken(rate, "c", 2 * LIMIT) == LIMIT


def most_in_a_window(times: list[float]) -> int:
    """The most of the ascending `times` within any W (two pointers)."""
    most = first = 0
    for last, t in enumerate(times):
        while t - times[first] >= W:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_an_outcome_is_refused_exactly_when_the_last_window_holds_the_limit():
    """Against the rule itself, with customers near the limit (five at about 0.6 of it
    together), a clock that steps back now and then (counted from the latest time read) and
    idle gaps of up to two windows; after each call, the customers kept are those with a time
    in the window, and those left behind it not dropped yet, the oldest, at most
    RATE_DROPPED_PER_CALL fewer than before the call, and none keeps more than the limit's."""
    rng = random.Random(18)
    clock = Clock()
    rate = by_id(clock)
    customers = "abcde"
    counted: dict[str, list[float]] = {c: [] for c in customers}
    now, refused = -math.inf, 0
    for _ in range(20_000):
        r = rng.random()
        clock.now += (-rng.uniform(0, 3) if r < 0.1 else rng.uniform(0, 2 * W) if r < 0.11
                      else 0.0 if r < 0.3 else rng.expovariate(0.6 * len(customers) * LIMIT / W))
        now = max(now, clock.now)
        left = [c for c, kept in rate._times.items() if latest(kept) <= now - W]
        customer = rng.choice(customers)
        times = counted[customer]
        full = len(times) - bisect_right(times, now - W) >= LIMIT
        assert (rate.refusal(customer) is not None) == full
        refused += full
        if not full:
            times.append(now)
        live = [c for c, ts in counted.items() if ts and ts[-1] > now - W]
        kept = list(rate._times)
        behind = len(kept) - len(live)
        assert sorted(kept[behind:]) == sorted(live)
        assert all(latest(rate._times[c]) <= now - W for c in kept[:behind])
        assert behind <= max(0, len(left) - RATE_DROPPED_PER_CALL)
        assert all(isinstance(ts, float) or len(ts) <= LIMIT for ts in rate._times.values())
    assert refused > 1000  # the limit is reached often, not once in a while
    for times in counted.values():  # so no window of W holds more than the limit
        assert most_in_a_window(times) <= LIMIT


def test_customers_that_left_the_window_are_dropped_a_few_a_call():
    """A burst of customers is dropped over the calls that follow, not by one call; those
    waiting to be dropped count nothing."""
    clock = Clock()
    rate = by_id(clock)
    for i in range(1000):
        rate.refusal(f"c{i}")
    taken(rate, "busy", 2 * LIMIT)
    clock.now += W / 2
    rate.refusal("late")
    assert len(rate._times) == 1002
    clock.now += W / 2  # c*'s and busy's outcomes leave the window; late's stays
    rate.refusal("next")
    assert len(rate._times) == 1002 - RATE_DROPPED_PER_CALL + 1
    assert isinstance(rate._times["busy"], array)  # not dropped yet: its times left
    assert rate.refusal("busy") is None and isinstance(rate._times["busy"], float)
    assert taken(rate, "busy", LIMIT) == LIMIT - 1  # none of the earlier counted
    for i in range(1000):
        rate.refusal("next")
    assert sorted(rate._times) == ["busy", "late", "next"]


def guesses(shard: Shard, n: int, when: float) -> list[str]:
    """The statuses of n outcomes of customer "c" naming made-up decisions: each is counted by
    the rate before its seal is checked (INVALID), until the rate refuses them (BUSY)."""
    replies, _ = shard.process([
        Outcome(partition=partition_of("c", 4), customer_id="c", action_id="service_menu",
                channel="web", outcome="accept", when=when, decision_id=f"guess-{i}.1.AAAAAAAA")
        for i in range(n)])
    return [r.status for r in replies]


def test_a_shards_outcome_rate_runs_on_its_steady_clock_not_its_wall_clock():
    """The wall clock stepped a window either way (NTP, a person) neither starts a new window
    (twice the limit let through) nor holds the old one; the steady clock's passing does."""
    wall, steady = Clock(), Clock()
    shard = Shard("s0", compile_catalog(load_default_catalog()), range(4), 4,
                  store=MemoryStore(), clock=wall, steady=steady)
    assert guesses(shard, LIMIT + 1, wall.now) == [INVALID] * LIMIT + [BUSY]
    wall.now += W  # stepped a window forward: no new window
    assert guesses(shard, 1, wall.now) == [BUSY]
    wall.now -= 2 * W  # and back: the window moves on all the same
    steady.now += W
    assert guesses(shard, LIMIT + 1, wall.now) == [INVALID] * LIMIT + [BUSY]


def test_a_shard_built_as_shardhost_builds_it_rates_outcomes_on_the_monotonic_clock():
    """ShardHost passes no clocks: a Shard's default steady clock must be the monotonic one,
    and reach the rate (were it the wall clock, a step forward would let a burst through)."""
    shard = Shard("s0", compile_catalog(load_default_catalog()), range(4), 4,
                  store=MemoryStore())
    assert shard.customers._rate._clock is time.monotonic
