"""Autoscaling on Kairos's load (cluster/control/autoscaling.py): the policy from load histories
alone (bounds, sustained load, hysteresis, cool-down, which worker to drain, workers that join
or are drained unasked), the meter's rates, and the controller's round on a LocalBackend
(what it asks Ray's autoscaler for, and the drain it starts), all without Ray."""
from __future__ import annotations

import asyncio
from typing import Callable

import pytest

from kairos.cluster.control import controller as controller_module
from kairos.cluster.control.autoscaling import (Autoscaling, Limits, Load, Meter, Policy, Step,
                                                Worker)
from kairos.cluster.control.controller import Controller
from kairos.cluster.control.learner import Learner
from kairos.core.compiler import default_compiled

from tests.support.local_backend import LocalBackend, LocalShard
from tests.support.waiting import until

LIMITS = Limits(min_workers=1, max_workers=4, shard_rate=100.0, shard_resident=1000,
                shard_queue=50, down_share=0.6, up_after_s=30.0, down_after_s=300.0,
                cooldown_s=120.0)


def workers(*specs) -> list[Worker]:
    """(node, shards, resident) or (node, shards, resident, draining) per worker."""
    return [Worker(*spec) for spec in specs]


def run(policy: Policy, seconds: range, load: Load, ws: list[Worker]) -> list[tuple[int, Step]]:
    """One round per second over `seconds`; the steps taken, with their second."""
    return [(t, step) for t in seconds if (step := policy.decide(float(t), load, ws))]


TWO = workers(("w1", 1, 500), ("w2", 1, 100))  # with the head's 2 shards: 4 shards


# -- load ------------------------------------------------------------------------------------

def test_the_load_is_the_fullest_of_rate_residents_and_queue_per_shard():
    assert Load(shards=4, rate=200.0).share(LIMITS) == pytest.approx(0.5)
    assert Load(shards=4, rate=200.0, resident=6000).share(LIMITS) == pytest.approx(1.5)
    assert Load(shards=4, queued=400).share(LIMITS) == pytest.approx(2.0)
    assert Load(shards=4, rate=200.0).share(LIMITS, shards=2) == pytest.approx(1.0)
    assert Load(shards=0).share(LIMITS) == 0.0
    assert Load(shards=2, rate=1.0).share(LIMITS, shards=0) == float("inf")


def test_the_meter_measures_rates_over_its_window_and_survives_restarts_and_new_shards():
    meter = Meter(window_s=4.0)
    first = meter.sample(0.0, {"s0": {"decisions": 100, "events": 50, "resident": 7,
                                      "queued": 3}})
    assert first == Load(shards=1, rate=0.0, resident=7, queued=3)
    # s1 is new: nothing counted for it yet
    second = meter.sample(2.0, {"s0": {"decisions": 300, "events": 50, "resident": 9},
                                "s1": {"decisions": 1000}})
    assert second.rate == pytest.approx(100.0) and second.resident == 9
    # the health snapshot was not refreshed since: the rate is still measured from t=0
    assert meter.sample(3.0, {"s0": {"decisions": 300, "events": 50},
                              "s1": {"decisions": 1000}}).rate == pytest.approx(200 / 3)
    # past the window the first sample is dropped: measured from t=2 (s1 counted); s0
    # restarted and counts from zero
    fifth = meter.sample(6.0, {"s0": {"decisions": 40}, "s1": {"decisions": 1100}})
    assert fifth.rate == pytest.approx((40 + 100) / 4)


def test_limits_refuse_a_minimum_over_the_maximum_a_down_share_of_one_and_no_resource():
    with pytest.raises(ValueError, match="MIN_WORKERS \\(3\\) is more than .*MAX_WORKERS \\(2\\)"):
        Limits(min_workers=3, max_workers=2)
    with pytest.raises(ValueError, match="down share"):
        Limits(max_workers=2, down_share=1.0)
    assert not Limits(max_workers=0).enabled
    with pytest.raises(ValueError, match="KAIROS_AUTOSCALE_RESOURCE must name"):
        Autoscaling(LocalBackend(), Limits(max_workers=2), resource=" ")


# -- the policy ------------------------------------------------------------------------------

def test_the_first_round_takes_the_serving_workers_within_the_bounds():
    for seen, desired in ((0, 1), (2, 2), (6, 4)):
        policy = Policy(LIMITS)
        ws = [Worker(f"w{i}", 1, 0) for i in range(seen)]
        assert policy.decide(0.0, Load(shards=seen + 2, rate=100.0 * (seen + 2) * 0.8), ws) \
            is None
        assert policy.desired == desired


def test_a_worker_is_added_only_after_the_load_stays_at_capacity_for_up_after_s():
    policy = Policy(LIMITS)
    over, fine = Load(shards=4, rate=450.0), Load(shards=4, rate=300.0)
    assert run(policy, range(0, 20), over, TWO) == []
    assert policy.decide(20.0, fine, TWO) is None  # a dip starts the wait again
    assert run(policy, range(21, 51), over, TWO) == []
    assert policy.decide(51.0, over, TWO) == Step(desired=3)
    assert policy.desired == 3


def test_after_a_step_the_cool_down_holds_the_next_and_no_step_up_before_the_worker_joins():
    policy = Policy(LIMITS)
    over = Load(shards=4, rate=1000.0)
    assert run(policy, range(0, 31), over, TWO) == [(30, Step(desired=3))]
    # the third worker has not joined: however long the load stays high, no fourth
    assert run(policy, range(31, 400), over, TWO) == []
    three = TWO + [Worker("w3", 1, 0)]
    # it joined at 400 (cool-down long over): the load has been high since 151
    assert policy.decide(400.0, Load(shards=5, rate=1000.0), three) == Step(desired=4)
    # at the maximum: never more
    four = three + [Worker("w4", 1, 0)]
    assert run(policy, range(401, 1000), Load(shards=6, rate=5000.0), four) == []
    assert policy.desired == LIMITS.max_workers


def test_a_worker_is_removed_only_when_the_others_would_stay_under_the_down_share():
    policy = Policy(LIMITS)
    # 4 shards at 0.5 of capacity; without w2's shard, 200/3 per shard = 0.67 > 0.6: keep
    assert run(policy, range(0, 1000), Load(shards=4, rate=200.0, resident=600), TWO) == []
    assert policy.desired == 2
    # at 160/s, 160/3 per shard = 0.53 < 0.6: after down_after_s, drain the emptiest worker
    steps = run(policy, range(1000, 1400), Load(shards=4, rate=160.0, resident=600), TWO)
    assert steps == [(1300, Step(desired=1, drain="w2"))]


def test_never_below_the_minimum_and_a_pending_worker_is_given_up_without_a_drain():
    policy = Policy(LIMITS)
    one = workers(("w1", 1, 0))
    assert run(policy, range(0, 2000), Load(shards=3), one) == []
    assert policy.desired == LIMITS.min_workers
    policy = Policy(LIMITS)
    assert run(policy, range(0, 31), Load(shards=3, rate=900.0), one) == [(30, Step(desired=2))]
    # the second worker never came, and the load went: the request drops, nothing to drain
    steps = run(policy, range(31, 600), Load(shards=3, rate=10.0), one)
    assert steps == [(331, Step(desired=1))]


def test_the_worker_drained_first_is_the_one_with_the_fewest_customers_to_move():
    ws = workers(("w1", 2, 900), ("w2", 1, 900), ("w3", 1, 50), ("w4", 1, 50, True))
    assert Policy.victim([w for w in ws if not w.draining]).node == "w3"
    tied = workers(("b", 2, 10), ("a", 2, 10), ("c", 1, 10))
    assert Policy.victim(tied).node == "c"
    assert Policy.victim([]) is None


def test_workers_that_join_unasked_are_wanted_and_a_hand_drain_is_one_fewer():
    policy = Policy(LIMITS)
    quiet = Load(shards=4, rate=200.0, resident=600)  # neither up nor down
    policy.decide(0.0, quiet, TWO)
    assert policy.desired == 2
    three = TWO + [Worker("w3", 1, 0)]
    policy.decide(1.0, quiet, three)
    assert policy.desired == 3  # joined: counted as wanted
    drained = workers(("w1", 1, 500), ("w2", 1, 100), ("w3", 0, 0, True))
    policy.decide(2.0, quiet, drained)
    assert policy.desired == 2  # `kairos drain w3`: one fewer, so the autoscaler removes it
    policy.decide(3.0, quiet, drained)
    assert policy.desired == 2  # counted once


def test_a_restarted_controller_counts_a_node_drained_before_as_gone_once():
    policy = Policy(LIMITS)  # its first round: w3 was drained by the previous incarnation
    ws = workers(("w1", 1, 500), ("w2", 1, 100), ("w3", 0, 0, True))
    policy.decide(0.0, Load(shards=4, rate=200.0, resident=600), ws)
    assert policy.desired == 2


def test_the_policys_own_drain_is_not_counted_again_when_it_shows_as_draining():
    policy = Policy(LIMITS)
    low = Load(shards=4, rate=10.0)
    steps = run(policy, range(0, 301), low, TWO)
    assert steps == [(300, Step(desired=1, drain="w2"))]
    after = workers(("w1", 1, 500), ("w2", 0, 0, True))
    policy.decide(301.0, low, after)
    assert policy.desired == 1


# -- on a controller (LocalBackend) -------------------------------------------------------------

class Counting(LocalBackend):
    """A LocalBackend whose shards' health reports `decisions` counters the test sets."""

    def __init__(self, nodes):
        super().__init__(nodes)
        self.local_learner = Learner(default_compiled())
        self.counters: dict[str, int] = {}

    def shard(self, name: str) -> "CountedShard":
        return CountedShard(self, name)


class CountedShard(LocalShard):
    async def health(self):
        return {**await super().health(), "started": True,
                "decisions": self._backend.counters.get(self.name, 0)}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    monkeypatch.setattr(controller_module, "RETIRE_GRACE_S", 0.0)
    monkeypatch.setattr(controller_module, "DRAIN_UNREADY_S", 0.0)


async def controlling(nodes: list[str], shards: int,
                      partitions: int = 16) -> tuple[Counting, Controller]:
    """A controller over `nodes` with `shards` shards, its backend's local controller."""
    backend = Counting(nodes)
    ctl = backend.local_controller = Controller(backend, n_partitions=partitions,
                                                home_node="head")
    await ctl.start(shards)
    return backend, ctl


async def scaled(nodes: list[str]) -> tuple[Counting, Controller, Autoscaling, Callable]:
    """A controller with a shard per node, its autoscaling (up or down after 2 s of load, 3 s
    apart, 1 to 2 workers) and `rounds(n, per_shard_per_s)`: n control rounds a second apart,
    each shard counting that many decisions a second; the steps taken."""
    limits = Limits(min_workers=1, max_workers=2, shard_rate=100.0, up_after_s=2.0,
                    down_after_s=2.0, cooldown_s=3.0)
    backend, ctl = await controlling(nodes, len(nodes), partitions=32)
    clock = Clock()
    scaling = Autoscaling(backend, limits, clock, resource="kairos_worker")

    async def rounds(n: int, per_shard_per_s: int, drains: bool = False) -> list[Step]:
        steps = []
        for _ in range(n):
            clock.now += 1.0
            for name in ctl.shards:
                backend.counters[name] = backend.counters.get(name, 0) + per_shard_per_s
            await ctl.reconcile()
            if step := await scaling.round(ctl):
                steps.append(step)
            if drains and scaling.drain is not None:  # each drain done before the next round
                await until(lambda: scaling.drain.done(), 10, "the drain")
        return steps
    return backend, ctl, scaling, rounds


def test_the_round_asks_the_autoscaler_then_drains_the_emptiest_worker_when_load_falls():
    async def main():
        backend, ctl, scaling, rounds = await scaled(["head", "w1"])

        assert await rounds(1, 50) == []
        assert backend.requests == [[{"kairos_worker": 1}]]  # the worker there is, asked for
        assert await rounds(3, 150) == [Step(desired=2)]
        assert backend.requests[-1] == [{"kairos_worker": 1}] * 2
        backend.node_names.append("w2")  # Ray's autoscaler added it: it gets a shard
        await rounds(1, 150)
        assert "w2" in ctl.placement.values()
        assert await rounds(10, 1) == [Step(desired=1, drain="w1")]
        await until(lambda: scaling.drain.done(), 10, "the drain of w1")
        assert scaling.drain.exception() is None
        assert backend.requests[-1] == [{"kairos_worker": 1}]
        assert "w1" in ctl.nodes.draining and "w1" not in ctl.placement.values()
        await rounds(1, 1)  # drained: nothing put back on it while it waits to be removed
        assert "w1" not in ctl.placement.values() and "w1" in ctl.nodes.draining
        backend.node_names.remove("w1")  # the autoscaler removed the idle node
        await rounds(5, 1)
        assert backend.requests[-1] == [{"kairos_worker": 1}]  # w2 stays: the minimum
        assert sum(len(ctl.map.partitions_of(s)) for s in ctl.shards) == 32
    asyncio.run(main())


def test_autoscaling_off_asks_for_nothing():
    async def main():
        backend, ctl = await controlling(["head", "w1"], 1)
        scaling = Autoscaling(backend, Limits(max_workers=0))
        assert await scaling.round(ctl) is None
        assert backend.requests == []
    asyncio.run(main())


def test_a_step_up_takes_back_a_worker_it_drained_that_has_not_left():
    policy = Policy(LIMITS)
    low, high = Load(shards=4, rate=10.0), Load(shards=3, rate=400.0)
    assert run(policy, range(0, 301), low, TWO) == [(300, Step(desired=1, drain="w2"))]
    drained = workers(("w1", 2, 600), ("w2", 0, 0, True, True))
    # without taking it back, a request for two units is met by w1 and the drained w2: the
    # autoscaler adds nothing, and no step up comes while the asked-for worker has not joined
    assert run(policy, range(421, 452), high, drained) == [
        (451, Step(desired=2, reuse="w2"))]
    hand_drained = workers(("w1", 2, 600), ("w2", 0, 0, True))  # `kairos drain`: left alone
    policy = Policy(LIMITS)
    assert run(policy, range(0, 31), high, hand_drained) == [(30, Step(desired=2))]


def test_the_round_takes_back_a_drained_worker_the_autoscaler_has_not_removed():
    async def main():
        backend, ctl, scaling, rounds = await scaled(["head", "w1", "w2"])
        [step] = await rounds(10, 1, drains=True)
        drained = step.drain
        assert step.desired == 1 and drained in ("w1", "w2")
        assert drained in ctl.nodes.released and drained not in ctl.placement.values()
        assert await rounds(5, 300, drains=True) == [Step(desired=2, reuse=drained)]
        assert backend.requests[-1] == [{"kairos_worker": 1}] * 2
        assert drained not in ctl.nodes.draining and drained not in ctl.nodes.released
        assert drained in ctl.placement.values()  # the control loop gave it shards again
        assert sum(len(ctl.map.partitions_of(s)) for s in ctl.shards) == 32
    asyncio.run(main())


def test_a_node_is_released_for_taking_back_only_once_its_drain_is_done(monkeypatch):
    async def main():
        backend = Counting(["head", "w1", "w2"])
        ctl = backend.local_controller = Controller(backend, n_partitions=16,
                                                    home_node="head")
        await ctl.start(3)

        async def fails(*args, **kwargs):
            raise RuntimeError("a shard did not answer")
        with monkeypatch.context() as patched:
            patched.setattr(ctl, "_rebalance", fails)
            with pytest.raises(RuntimeError):
                await ctl.release_node("w1")
        # still holding its shards: a step up must not take it back (the loop finishes it)
        assert "w1" in ctl.nodes.draining and "w1" not in ctl.nodes.released
        await ctl.release_node("w1")
        assert "w1" in ctl.nodes.released
        await ctl.drain_node("w1")  # an operator's drain of it: theirs to remove
        assert "w1" not in ctl.nodes.released
    asyncio.run(main())
