"""A shard at its resident ceiling (the limit and its overflow): what it refuses CROWDED, what
it still serves, and how its sender's order and the ticks' budget answer the refusals."""
from __future__ import annotations

import asyncio
import types

from kairos.cluster.protocol import EventAck
from kairos.cluster.shard import passivation
from kairos.cluster.shard import shard as shard_module
from kairos.cluster.shard.dispatch import CROWDED
from kairos.cluster.shard.host import OVERTAKING
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.memory_store import MemoryStore

from .test_shard import T0, Clock, decide, event, forget, outcome, p_of, profile, shard, watch
from .test_passivation_pace import ticked
from .test_shard_host import app_open, run


async def cy_past_a_forget(host) -> tuple[list, list, list]:
    """With ana resident at a ceiling of one, the replies to three batches sent together: cy's
    first event (no room), ana's forget (which makes room), and cy's later event."""
    assert await host.handle("a", 0, [app_open("ana")], [0]) == [EventAck(sequence=1)]
    host.shard.residency.resident_limit, host.shard.residency.overflow = 1, 0
    return await asyncio.gather(
        host.handle("b", 0, [app_open("cy")], [0]),
        host.handle("c", 0, [forget("ana")], [0]),
        host.handle("b", 1, [app_open("cy", T0 + 1)], [0]))


def test_a_sessions_batches_queued_after_one_refused_crowded_are_refused_too(compiled):
    """A forget frees room between the two: without the refusal the customer's later event,
    queued before its sender heard, would be applied before the one refused."""
    async def test(host):
        refused, forgot, later = await cy_past_a_forget(host)
        assert refused[0].status == "busy" and forgot[0].status == "ok"
        assert later == [OVERTAKING] and host.queued == 0
        missing, = await host.handle("d", 0, [profile("cy")], [0])
        assert missing.status == "missing"  # nothing of cy's was applied
        assert await host.handle("b2", 0, [app_open("cy")], [0]) == [EventAck(sequence=1)]
    run(compiled, MemoryStore(), test, round_limit=1)


def test_requests_refused_crowded_are_counted_in_the_stats_and_among_the_rejected(compiled):
    async def test(host):
        assert host.shard.stats()["crowded"] == 0
        assert await host.handle("a", 0, [app_open("ana")], [0]) == [EventAck(sequence=1)]
        host.shard.residency.resident_limit, host.shard.residency.overflow = 1, 0
        refused = await host.handle("b", 0, [app_open("bob"), app_open("cy")], [0, 0])
        assert [r.status for r in refused] == ["busy"] * 2
        assert host.shard.stats()["crowded"] == 2 and host.rejected == 2
    run(compiled, MemoryStore(), test)


def crowded_shard(compiled, clock: Clock) -> Shard:
    """A shard at its ceiling (a limit of 2, no overflow) whose customer "w", watched by
    sink1, is passivated (it has a home)."""
    s = shard(compiled, clock=clock, resident_limit=2)
    assert s.process([watch("w", "sink1", "web"), event("w", "app_open", T0)])[0][1].status \
        == "ok"
    s.residency.overflow = 1
    for c in ("ana", "bob", "cy"):
        clock.now += 1
        assert s.process([event(c, "app_open", clock.now)])[0][0].status == "ok"
        s.passivate(clock.now)  # unbudgeted: those past the limit
    s.residency.overflow = 0
    assert sorted(s.residency.recent) == ["bob", "cy"]
    return s


def test_at_the_ceiling_requests_that_bring_in_no_customer_are_served(compiled):
    """A Decide, profile read or watch of a customer without a home makes no resident, and a
    watch's unregistration ends the watch whoever it names (its stream ends with it)."""
    clock = Clock()
    s = crowded_shard(compiled, clock)
    replies = s.process([decide("nobody"), profile("nobody"), watch("nobody", "sink1", "web"),
                         watch("w", "sink1", "web", active=False)])[0]
    assert [r.status for r in replies] == ["ok", "missing", "ok", "ok"]
    assert all(w.sink != "sink1" for w in s.watches.by_customer.get("w", {}))
    assert s.stats()["crowded"] == 0


def test_at_the_ceiling_requests_that_would_bring_a_customer_in_are_refused(compiled):
    clock = Clock()
    s = crowded_shard(compiled, clock)
    replies = s.process([decide("w"), profile("w"), watch("w", "sink2", "web"),
                         event("new", "app_open", clock.now),
                         decide("new2", record_impression=True)])[0]
    assert [r.status for r in replies] == ["busy"] * 5
    assert len(s.residency.recent) == 2 and s.stats()["crowded"] == 5


def test_a_routed_request_refused_crowded_still_confirms_its_partition_arriving(compiled):
    """Its sender routed it under the map that moves the partition here (handoff.py)."""
    clock = Clock()
    s = crowded_shard(compiled, clock)
    p = p_of("new")
    s.ownership.arriving[p] = 0  # adopted, not confirmed yet
    assert s.process([event("new", "app_open", clock.now)], routed=[0])[0][0].status == "busy"
    assert p not in s.ownership.arriving


def test_a_tick_after_refusals_passivates_past_its_budget_down_to_the_limit(
        compiled, monkeypatch):
    """With no budget a tick writes one home; after requests were refused CROWDED it may take
    PASSIVATE_CROWDED_S, here enough for every resident past the limit."""
    monkeypatch.setattr(shard_module, "PASSIVATE_BUDGET_S", 0.0)
    monkeypatch.setattr(shard_module, "TICK_S", 3600.0)
    clock = Clock()
    s = shard(compiled, clock=clock, resident_limit=10)
    s.residency.overflow = 5
    s.process([event(f"c{i}", "app_open", T0) for i in range(15)])  # none idle
    assert ticked(s) == 1  # none refused yet
    s.process([event("d", "app_open", T0)])
    assert [r.status for r in s.process([event("e", "app_open", T0)])[0]] == ["busy"]
    assert ticked(s) == 5 and len(s.engine.table) == 10
    s.process([event(f"f{i}", "app_open", T0) for i in range(5)])
    assert ticked(s) == 1  # none refused since the last tick


def test_a_request_refused_crowded_refuses_its_senders_later_requests_for_that_customer_only(
        compiled):
    """The sender's next batch, sent before it heard, holds other customers' requests too
    (a client's holds up to 512): those are served."""
    async def test(host):
        assert await host.handle("a", 0, [app_open("ana")], [0]) == [EventAck(sequence=1)]
        host.shard.residency.resident_limit, host.shard.residency.overflow = 1, 0
        refused, later = await asyncio.gather(
            host.handle("b", 0, [app_open("cy")], [0]),
            host.handle("b", 1, [app_open("cy", T0 + 1), app_open("ana", T0 + 1)], [0, 0]))
        assert refused == [CROWDED] and later == [OVERTAKING, EventAck(sequence=2)]
        assert host.rejected == 2  # the refusal and the request held back
    run(compiled, MemoryStore(), test, round_limit=1)


def test_an_outcome_past_its_rate_holds_back_only_that_customers_later_requests(compiled):
    """Another customer's events pipelined in the same session are served; the outcome
    refused and the one held back after it are counted among the rejected."""
    def guess(i: int):
        return outcome("mallory", "nope", f"guess{i}")

    async def test(host):
        await host.handle("g", 0, [guess(i) for i in range(60)], [0] * 60)
        assert host.rejected == 0
        first, second = await asyncio.gather(
            host.handle("g", 1, [app_open("carol"), guess(60)], [0, 0]),
            host.handle("g", 2, [app_open("alice"), app_open("bob"), guess(61)], [0] * 3))
        assert [r.status for r in first] == ["ok", "busy"]
        assert second[:2] == [EventAck(sequence=1)] * 2 and second[2] == OVERTAKING
        assert host.rejected == 2
    run(compiled, MemoryStore(), test, round_limit=2)


def test_a_customer_refused_crowded_is_refused_for_the_rest_of_its_round(compiled):
    """At the default round limit the three batches share a round, and the forget between
    frees room: the later event of the customer refused must not be applied before the
    refused one. Within one batch too."""
    async def test(host):
        refused, forgot, later = await cy_past_a_forget(host)
        assert refused == [CROWDED] and forgot[0].status == "ok" and later == [CROWDED]
        missing, = await host.handle("d", 0, [profile("cy")], [0])
        assert missing.status == "missing"  # nothing of cy's was applied
        assert await host.handle("a2", 0, [app_open("ana")], [0]) == [EventAck(sequence=1)]
        host.shard.residency.resident_limit = 1
        replies = await host.handle("e", 0, [app_open("dan"), forget("ana"),
                                             app_open("dan", T0 + 1)], [0] * 3)
        assert [r.status for r in replies] == ["busy", "ok", "busy"]
    run(compiled, MemoryStore(), test)


class CountedStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    def get(self, partition: int, customer_id: str) -> bytes | None:
        self.gets += 1
        return super().get(partition, customer_id)


def test_at_the_ceiling_a_customers_home_is_looked_up_once_until_the_next_tick(compiled):
    """Each refused request read the customer's whole home from the store again."""
    clock = Clock()
    store = CountedStore()
    s = shard(compiled, clock=clock, resident_limit=2, store=store)
    s.residency.overflow = 10
    for i in range(10):
        assert s.process([event(f"h{i}", "app_open", T0)])[0][0].status == "ok"
    s.passivate(T0)  # unbudgeted: those past the limit
    s.residency.overflow = 0
    store.gets = 0
    for _ in range(3):  # rounds
        assert {r.status for r in s.process([decide(f"h{i % 8}") for i in range(80)])[0]} \
            == {"busy"}
    assert store.gets == 8
    s.tick()  # forgets and handoffs may have removed homes since
    assert s.process([decide("h0")])[0][0].status == "busy" and store.gets == 9


def test_a_crowded_tick_passivates_for_a_fixed_time_however_long_a_tick(compiled, monkeypatch):
    """Passivation runs on the event loop: half of a long tick held every request that
    long. A home takes 10 ms to write here (on a clock of the test's), so 50 ms writes five."""
    monkeypatch.setattr(shard_module, "PASSIVATE_BUDGET_S", 0.0)
    monkeypatch.setattr(shard_module, "TICK_S", 60.0)
    now = [0.0]
    monkeypatch.setattr(passivation, "time",
                        types.SimpleNamespace(perf_counter=lambda: now[0]))

    class SlowStore(MemoryStore):
        def put_many(self, homes, unless_fenced=None, lsn=None):
            homes = list(homes)
            now[0] += 0.01 * len(homes)
            return super().put_many(homes, unless_fenced, lsn)
    s = shard(compiled, clock=Clock(), resident_limit=10, store=SlowStore())
    s.residency.overflow = 20
    s.process([event(f"c{i}", "app_open", T0) for i in range(30)])
    s.residency.overflow = 0
    assert s.process([event("new", "app_open", T0)])[0][0] == CROWDED
    assert 1 < ticked(s) <= 5
