"""The outcome rate limit holds in every window of OUTCOME_RATE_WINDOW_S, wherever it starts:
fixed windows let twice the limit through around a window's turn (issue 18)."""
import random

from kairos.cluster.settings import OUTCOME_RATE_WINDOW_S, OUTCOMES_PER_CUSTOMER
from kairos.cluster.shard.outcomes import RATE_REFUSAL, OutcomeRate

W, LIMIT = OUTCOME_RATE_WINDOW_S, OUTCOMES_PER_CUSTOMER


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def taken(rate: OutcomeRate, customer: str, n: int) -> int:
    return sum(rate.refusal(customer) is None for _ in range(n))


def test_bursts_either_side_of_a_window_turn_take_the_limit_only():
    clock = Clock()
    rate = OutcomeRate(clock)
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


def test_an_outcome_is_refused_exactly_when_the_last_window_holds_the_limit():
    """Against the rule itself over random arrivals, some bursty, a few customers, and a
    clock that steps back now and then (counted from the latest time read)."""
    rng = random.Random(18)
    clock = Clock()
    rate = OutcomeRate(clock)
    counted: dict[str, list[float]] = {}
    latest = clock.now
    for _ in range(20_000):
        clock.now += rng.choice((0.0, 0.0, rng.expovariate(LIMIT / W), rng.uniform(0, W / 4),
                                 -rng.uniform(0, 5)))
        latest = max(latest, clock.now)
        customer = rng.choice("abc")
        times = counted.setdefault(customer, [])
        full = sum(t > latest - W for t in times) >= LIMIT
        assert (rate.refusal(customer) is not None) == full
        if not full:
            times.append(latest)
    for times in counted.values():  # so no window of W holds more than the limit
        assert max(sum(start <= t < start + W for t in times) for start in times) <= LIMIT


def test_customers_without_an_outcome_in_the_last_window_are_not_kept():
    clock = Clock()
    rate = OutcomeRate(clock)
    for i in range(1000):
        rate.refusal(f"c{i}")
    taken(rate, "busy", 2 * LIMIT)
    clock.now += W / 2
    rate.refusal("late")
    assert len(rate._counts) == 1002
    clock.now += W / 2  # c*'s and busy's outcomes leave the window; late's stays
    rate.refusal("next")
    assert sorted(rate._counts) == ["late", "next"]
    assert all(isinstance(t, float) for t in rate._counts.values())  # one each
