"""An idle shard's tick loop (issue 17: idle CPU): it sleeps until its next timer or snapshot
is due instead of ticking every TICK_S, and keeps every promise of the tick: a timer armed
while it idles still fires within a tick of its due time, an idle shard's timer too, and a
partition is snapshotted SNAPSHOT_AFTER_S after its first change. Its store count waits for a
new Shard rather than looking for one twice a second, and still counts one at once."""
from __future__ import annotations

import asyncio
import time

import pytest

from kairos.cluster.shard import shard as shard_module
from kairos.cluster.shard import ticks
from kairos.cluster.shard.host import ShardHost
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.memory_store import MemoryStore

from tests.support.waiting import until

from . import test_shard_host as shard_host
from .test_shard import N_PARTITIONS, event

TICK_S = 0.05
AFTER = 1800.0  # cart_abandoned's delay in the default catalog
CART = dict(product_id="tv", category="electronics", price=199.0)
LATE_S = 0.25  # a tick, plus what a loaded test machine adds


@pytest.fixture
def long_quiet(monkeypatch):
    """Nothing without a due time wakes an idle shard within a test."""
    monkeypatch.setattr(ticks, "QUIET_TICK_S", 30.0)


def run(compiled, test, store=None, **options) -> None:
    shard_host.run(compiled, store or MemoryStore(), test, tick_s=TICK_S, **options)


def counting_ticks(monkeypatch) -> list[float]:
    """When each tick ran."""
    ran: list[float] = []
    tick = Shard.tick

    def counted(shard):
        ran.append(time.monotonic())
        return tick(shard)
    monkeypatch.setattr(Shard, "tick", counted)
    return ran


def cart(customer: str, due_in_s: float):
    """An add_to_cart whose cart_abandoned timer falls due `due_in_s` from now."""
    return event(customer, "add_to_cart", time.time() - AFTER + due_in_s, **CART)


def due(armed) -> float:
    """When `armed`'s timer falls due, by the event's own time: the test's clock read after
    `handle` returned is late by the call, on a loaded machine by more than the 10 ms slack it
    had (a shared test box saw the timer fire 0.8 ms 'before' a due time so read)."""
    return armed.time + AFTER


async def fired_at(host: ShardHost) -> float:
    while not host.shard.counts["timers_fired"]:
        await asyncio.sleep(0.005)
    return time.time()


def test_an_idle_shard_does_not_tick_every_tick(compiled, long_quiet, monkeypatch):
    ran = counting_ticks(monkeypatch)

    async def test(host):
        await asyncio.sleep(1.0)
        assert len(ran) <= 3  # 20 before: one every TICK_S

    run(compiled, test)


def test_a_timer_armed_while_the_shard_idles_fires_within_a_tick_of_due(compiled, long_quiet):
    async def test(host):
        await asyncio.sleep(0.3)  # idle by now: its loop sleeps
        armed = cart("ana", 0.4)
        await host.handle("a", 0, [armed], [0])
        assert 0 <= await fired_at(host) - due(armed) < LATE_S

    run(compiled, test)


def test_an_idle_shards_timer_fires_within_a_tick_of_due(compiled, long_quiet):
    async def test(host):
        armed = cart("ana", 0.8)
        await host.handle("a", 0, [armed], [0])
        await asyncio.sleep(0.4)  # no request since: the loop sleeps until the timer
        assert 0 <= await fired_at(host) - due(armed) < LATE_S

    run(compiled, test)


def test_a_burst_applied_after_a_tick_still_has_its_timer_fire_within_a_tick(compiled,
                                                                            long_quiet):
    """Admitted before a tick and applied, a round at a time, after it: the tick that found
    the queue's rounds not yet applied must not send the loop to sleep past the timer the
    last of them arms."""
    async def test(host):
        await asyncio.sleep(0.3)  # idle
        now = time.time()
        burst = [host.handle(f"s{i}", 0, [event(f"c{i}", "app_open", now)], [0])
                 for i in range(1500)]
        armed = cart("ana", 0.3)
        burst.append(host.handle("cart", 0, [armed], [0]))
        await asyncio.gather(*burst)
        assert await fired_at(host) - max(due(armed), time.time()) < LATE_S

    run(compiled, test, round_limit=1)


def test_an_idle_shard_passivates_residents_past_its_limit_at_the_tick_s_pace(compiled,
                                                                            long_quiet):
    """Past the resident limit a tick passivates its budget's worth (a home a millisecond
    here, as a directory store writes them); an idle shard goes on doing so every tick, not
    once a quiet second, so the overflow a next burst needs is freed as fast as before."""
    class Slow(MemoryStore):
        def put_many(self, homes, *args, **kwargs):
            homes = list(homes)
            time.sleep(0.001 * len(homes))
            return super().put_many(homes, *args, **kwargs)

    async def test(host):
        host.shard.residency.resident_limit = 50
        now = time.time()
        await host.handle("a", 0, [event(f"c{k}", "app_open", now) for k in range(200)],
                          [0] * 200)
        loaded = time.monotonic()
        await until(lambda: len(host.shard.residency.recent) <= 50, 10.0, "passivated")
        assert time.monotonic() - loaded < 4.0  # 150 homes, ~10 a tick: ~15 ticks

    run(compiled, test, Slow())


def test_an_idle_shard_snapshots_a_changed_partition_when_due(compiled, long_quiet,
                                                              monkeypatch):
    monkeypatch.setattr(ticks, "SNAPSHOT_AFTER_S", 0.5)
    monkeypatch.setattr(shard_module, "SNAPSHOT_AFTER_S", 0.5)

    async def test(host):
        sent = time.monotonic()  # the change is made after this, and before handle returns
        await host.handle("a", 0, [event("ana", "app_open", time.time())], [0])
        changed = time.monotonic()
        assert host.shard.dirty
        while host.shard.dirty:
            await asyncio.sleep(0.005)
        snapshotted = time.monotonic()
        assert snapshotted - sent >= 0.5 - 0.01 and snapshotted - changed < 0.5 + LATE_S

    run(compiled, test)


def test_a_shard_method_wakes_an_idle_loop(compiled, long_quiet, monkeypatch):
    ran = counting_ticks(monkeypatch)

    async def test(host):
        await asyncio.sleep(0.3)
        before = len(ran)
        called = time.monotonic()
        await host.run(Shard.stats)
        while len(ran) == before:
            await asyncio.sleep(0.005)
        assert ran[-1] - called < LATE_S

    run(compiled, test)


def test_a_shard_new_to_serving_has_its_store_counted_at_once(compiled):
    class Counted(MemoryStore):
        def __init__(self):
            super().__init__()
            self.counted: list[float] = []

        def count(self, partitions):
            self.counted.append(time.monotonic())
            return super().count(partitions)
    store = Counted()

    async def test(host):
        for _ in range(5):  # polled every 0.5 s, one in 3 would be counted this soon
            before = len(store.counted)
            await host.start(compiled, {p: 0 for p in range(N_PARTITIONS)}, [])
            started = time.monotonic()
            await until(lambda: len(store.counted) > before, 5.0, "a count")
            assert store.counted[-1] - started < 0.15

    run(compiled, test, store)
