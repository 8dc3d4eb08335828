"""Passivation's pace: a tick passivates what its budget allows and leaves the rest to later
ticks (memory bounded past the resident limit all the same), and does not walk residents it
can only keep."""
from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc

import pytest

from kairos.cluster.shard import passivation
from kairos.cluster.shard import shard as shard_module
from kairos.cluster.settings import SHARD_ROUND_LIMIT
from kairos.cluster.shard.passivation import VISITS_TIMED
from kairos.cluster.shard.residency import WAKE_TICKS, overflow_of
from kairos.cluster.shard.timers import WAKE_LIMIT
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.directory_store import DirectoryStore
from tests.unit.shard.test_shard import (N_PARTITIONS, T0, Clock, _catalog_v2, event, p_of,
                                         profile, shard)

IDLE_S = 900.0


def applied(s: Shard, customers: list[str]) -> list[int]:
    return [r.value["events_applied"] for r in s.process([profile(c) for c in customers])[0]]


def ticked(s: Shard) -> int:
    """A tick; how many it passivated."""
    before = s.counts["passivations"]
    s.tick()
    return s.counts["passivations"] - before


def test_a_tick_passivates_one_home_past_its_budget_and_the_rest_go_on_later_ticks(
        compiled, tmp_path, monkeypatch):
    """With no budget (PASSIVATE_BUDGET_S 0) a tick still writes one home, the least it
    writes: customers that fell idle together leave one a tick, not a chunk (8) nor all at
    once. Events acknowledged meanwhile, for one already in its home and one still waiting
    in memory, survive a crash after the last tick."""
    monkeypatch.setattr(shard_module, "PASSIVATE_BUDGET_S", 0.0)
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock, idle_s=IDLE_S)
    s.residency.chunk = 8
    customers = [f"c{i}" for i in range(30)]
    s.process([event(c, "app_open", T0) for c in customers])
    clock.now = T0 + IDLE_S + 1
    assert [ticked(s) for _ in range(10)] == [1] * 10
    assert len(s.engine.table) == 20
    first, waiting = customers[0], customers[-1]  # least recent first
    assert first not in s.engine.table and waiting in s.engine.table
    s.process([event(first, "page_view", clock.now, category="home"),
               event(waiting, "page_view", clock.now, category="home")])
    assert [ticked(s) for _ in range(20)] == [1] * 19 + [0]  # the two are not idle again yet
    assert sorted(s.engine.table.index) == sorted([first, waiting])
    s.close()  # a crash: no snapshot since
    again = Shard(s.name, compiled, list(s.owned), N_PARTITIONS, store=s.store, clock=clock)
    again.recover()
    assert applied(again, customers) == [2] + [1] * 28 + [2]


def test_with_budget_to_spare_a_tick_passivates_every_idle_customer_in_chunks(
        compiled, tmp_path, monkeypatch):
    """One home first, to learn the store's pace, then chunks of at most `chunk`."""
    monkeypatch.setattr(shard_module, "PASSIVATE_BUDGET_S", 3600.0)
    store, sizes = DirectoryStore(tmp_path), []
    written = store.put_many

    def put_many(homes, unless_fenced=None, lsn=None):
        homes = list(homes)
        sizes.append(len(homes))
        written(homes, unless_fenced=unless_fenced)
    monkeypatch.setattr(store, "put_many", put_many)
    clock = Clock()
    s = shard(compiled, store=store, clock=clock, idle_s=IDLE_S)
    s.residency.chunk = 8
    customers = [f"c{i}" for i in range(30)]
    s.process([event(c, "app_open", T0) for c in customers])
    clock.now = T0 + IDLE_S + 1
    assert ticked(s) == 30 and sizes == [1, 8, 8, 8, 5]
    assert len(s.engine.table) == 0 and applied(s, customers) == [1] * 30


def test_past_the_resident_limit_and_its_overflow_new_customers_wait_for_the_budget(
        compiled, tmp_path, monkeypatch):
    """Residents past the limit go least recent first; at the limit and its overflow, a
    request that would bring another customer in answers Busy (its sender retries) until a
    tick has passivated some, and residents' requests are served: a tick after such refusals
    has half a tick's budget (test_crowded.py), others one home. What was acknowledged
    survives a crash."""
    monkeypatch.setattr(shard_module, "PASSIVATE_BUDGET_S", 0.0)
    # time for every home past the limit: the crowded tick's budget is PASSIVATE_CROWDED_S
    # (50 ms), capped at half a tick, which five fsynced homes passed on a loaded machine
    monkeypatch.setattr(shard_module, "TICK_S", 3600.0)
    monkeypatch.setattr(shard_module, "PASSIVATE_CROWDED_S", 1800.0)
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock, resident_limit=10)
    s.residency.chunk, s.residency.overflow = 2, 5
    customers = [f"c{i}" for i in range(30)]
    answers = []
    for c in customers:  # none idle
        clock.now += 1
        answers.append(s.process([event(c, "app_open", clock.now)])[0][0].status)
    assert answers == ["ok"] * 15 + ["busy"] * 15
    assert len(s.engine.table) == 15
    assert s.process([event("c0", "page_view", clock.now, category="home")])[0][0].status == "ok"
    assert ticked(s) == 5 and "c1" not in s.engine.table  # the least recent
    assert [s.process([event(c, "app_open", clock.now)])[0][0].status
            for c in customers[15:21]] == ["ok"] * 5 + ["busy"]
    assert [ticked(s) for _ in range(3)] == [5, 0, 0]
    assert len(s.engine.table) == 10
    s.close()  # a crash: no snapshot since
    again = Shard(s.name, compiled, list(s.owned), N_PARTITIONS, store=s.store, clock=clock,
                  resident_limit=5)
    again.residency.overflow = 0
    again.recover()  # replays every acknowledged event, past the overflow too
    assert len(again.engine.table) == 20
    again.residency.overflow = 15
    assert applied(again, customers[:20]) == [2] + [1] * 19


class Visits(dict):
    """A residency's recency order, counting the entries its walks visit."""

    visited = 0

    def items(self):
        for item in super().items():
            self.visited += 1
            yield item


def test_residents_kept_for_their_timers_are_not_walked_again_every_tick(compiled):
    """All idle but one, each waiting for a cart timer longer than the idle time: a walk that
    finds only those before one not idle waits for that one to be idle, and one that finds
    only those to the end waits for the idle time (events and fires move them); once the
    timers fired, they are passivated as any idle customer."""
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=IDLE_S)
    customers = [f"c{i}" for i in range(20)]
    s.process([event(c, "add_to_cart", T0, product_id="tv", category="electronics",
                     price=1.0) for c in customers])
    clock.now = T0 + 10
    s.process([event("bob", "app_open", clock.now)])
    s.residency.recent = recent = Visits(s.residency.recent)
    clock.now = T0 + IDLE_S + 1
    assert s.passivate(clock.now) == 0 and recent.visited == 21  # bob is not idle yet
    for _ in range(3):
        clock.now += 1
        assert s.passivate(clock.now) == 0
    assert recent.visited == 21
    clock.now = T0 + 10 + IDLE_S
    assert s.passivate(clock.now) == 1 and recent.visited == 42  # bob, then the kept ones
    for _ in range(3):
        clock.now += 1
        assert s.passivate(clock.now) == 0
    clock.now = T0 + 1800 + 1  # the cart timers fire
    s.tick()
    assert s.counts["timers_fired"] == 20 and len(s.timers) == 0
    clock.now += IDLE_S
    assert s.passivate(clock.now) == 20 and recent.visited == 42 + 20


@pytest.mark.parametrize("with_timer", [False, True])
def test_the_shards_stats_count_its_sleepers(compiled, with_timer):
    """A customer passivated with an armed timer stays in memory (its due time, to wake it):
    the stats say how many, apart from the timers armed in memory."""
    clock = Clock()
    s = shard(compiled, clock=clock, resident_limit=1)
    attrs = dict(product_id="tv", category="electronics", price=1.0)
    s.process([event("ana", "add_to_cart" if with_timer else "app_open", T0,
                     **(attrs if with_timer else {}))])
    clock.now += 1
    s.process([event("bob", "app_open", clock.now)])
    assert s.passivate(clock.now) == 1
    assert (s.stats()["sleepers"], s.stats()["timers"]) == (int(with_timer), 0)


def settings_with(**overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **{f"KAIROS_{k}": v for k, v in overrides.items()}}
    code = "import kairos.cluster.settings as s; print(s.RESIDENT_OVERFLOW)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True)


def test_the_overflow_is_a_share_of_the_resident_limit_and_never_above_it():
    assert settings_with(RESIDENT_LIMIT="50000").stdout.split() == ["2500"]
    assert settings_with().stdout.split() == ["100000"]
    refused = settings_with(RESIDENT_LIMIT="50000", RESIDENT_OVERFLOW="50001")
    assert refused.returncode != 0 and "KAIROS_RESIDENT_OVERFLOW must be" in refused.stderr
    assert overflow_of(10) == 10


def test_an_overflow_past_the_limit_is_refused_naming_the_limit_exactly():
    refused = settings_with(RESIDENT_LIMIT="1234567", RESIDENT_OVERFLOW="1234568")
    assert "KAIROS_RESIDENT_OVERFLOW must be >= 0 and <= 1234567 (KAIROS_RESIDENT_LIMIT), got " \
        "'1234568'" in refused.stderr


def test_residents_up_to_the_overflow_fit_the_profile_table_as_made(compiled):
    """The table reserves the limit's overflow: reaching it never copies the table to grow it,
    after a catalog switch either."""
    clock = Clock()
    s = shard(compiled, clock=clock, resident_limit=10)
    rows = s.engine.table.capacity
    s.process([event(f"c{i}", "app_open", T0) for i in range(20)])  # none idle
    assert len(s.engine.table) == 20 and s.engine.table.capacity == rows
    s.commit(s.prepare(_catalog_v2()))
    assert s.engine.table.capacity == rows


def test_a_walk_over_kept_residents_stops_at_its_budget_and_the_next_carries_on(
        compiled, monkeypatch):
    """Residents kept for their timers cost a visit each: a tick past its budget stops
    within VISITS_TIMED of them, the next tick goes on from there, and once the pass has seen
    them all the walks wait for the idle time."""
    monkeypatch.setattr(shard_module, "PASSIVATE_BUDGET_S", 0.0)
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=IDLE_S)
    customers = [f"c{i}" for i in range(1000)]
    s.process([event(c, "add_to_cart", T0, product_id="tv", category="electronics",
                     price=1.0) for c in customers])
    s.residency.recent = recent = Visits(s.residency.recent)
    clock.now = T0 + IDLE_S + 1
    walked = []
    for _ in range(6):
        before = recent.visited
        assert ticked(s) == 0
        walked.append(recent.visited - before)
    assert walked == [VISITS_TIMED] * 3 + [1000 - 3 * (VISITS_TIMED - 1) + 1, 0, 0]
    clock.now += IDLE_S / 2
    assert ticked(s) == 0 and recent.visited == sum(walked)


def test_customers_a_failed_write_left_are_passivated_on_the_next_tick(compiled, monkeypatch):
    monkeypatch.setattr(shard_module, "PASSIVATE_BUDGET_S", 3600.0)
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=IDLE_S)
    clock.now = T0 - 100
    s.process([event("zoe", "app_open", clock.now)])
    clock.now = T0
    s.process([event(f"c{i}", "app_open", T0) for i in range(3)])
    clock.now = T0 + IDLE_S - 50
    assert ticked(s) == 1  # the store's pace is known: the next chunk takes all three
    written, fails = s.store.put_many, [ConnectionError("a store blip")]

    def put_many(homes, unless_fenced=None, lsn=None):
        if fails:
            raise fails.pop()
        return written(homes, unless_fenced=unless_fenced)
    monkeypatch.setattr(s.store, "put_many", put_many)
    clock.now = T0 + IDLE_S + 1
    with pytest.raises(ConnectionError):
        s.tick()
    clock.now += 0.1
    assert ticked(s) == 3 and len(s.engine.table) == 0


def test_customers_kept_for_a_handoff_are_passivated_once_it_thaws(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=IDLE_S)
    s.process([event("ana", "app_open", T0)])
    p = p_of("ana")
    s.freeze([p], 2)
    clock.now = T0 + IDLE_S + 1
    assert ticked(s) == 0  # kept: its new owner writes it
    s.thaw([p], 2)  # the handoff failed: it is this shard's again
    clock.now += 0.1
    assert ticked(s) == 1 and "ana" not in s.engine.table


U = 1 / 1024  # seconds: a unit that adds up exactly


class Watch:
    """A residency's clock, advanced by what its store and walks are made to cost."""

    now = 0.0

    def perf_counter(self) -> float:
        return self.now


class SlowWalk(dict):
    """A recency order whose every visited entry costs `cost` on `watch`."""

    cost, watch = 0.0, Watch()

    def items(self):
        for item in super().items():
            self.watch.now += self.cost
            yield item


def test_chunks_are_sized_by_the_stores_smoothed_pace_apart_from_the_walk(
        compiled, monkeypatch):
    """The pace counts what writing took, not the walk before it, and one fast chunk moves it
    by a quarter of its difference: the next chunk does not overrun the budget fourfold."""
    watch = Watch()
    monkeypatch.setattr(passivation, "time", watch)
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=IDLE_S)
    s.process([event(f"c{i}", "app_open", T0) for i in range(200)])
    s.residency.recent = recent = SlowWalk(s.residency.recent)
    recent.watch = watch
    sizes, per_home = [], []
    written = s.store.put_many

    def put_many(homes, unless_fenced=None, lsn=None):
        homes = list(homes)
        sizes.append(len(homes))
        watch.now += len(homes) * (per_home.pop(0) if per_home else U)
        written(homes, unless_fenced=unless_fenced)
    monkeypatch.setattr(s.store, "put_many", put_many)
    clock.now = T0 + IDLE_S + 1
    recent.cost = U / 2
    assert s.residency.passivate(clock.now, 16 * U) == 15 and sizes == [1, 14]
    recent.cost, per_home[:] = 0.0, [U / 8]  # a chunk written from a cache, say
    assert s.residency.passivate(clock.now, 16 * U) == 33 and sizes[2:] == [16, 17]


def test_recency_is_compacted_once_passivated_customers_outnumber_residents(compiled):
    """A dict keeps the slots of the entries popped from it: after most residents left, the
    walks would step over them first."""
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=IDLE_S)
    s.process([event(f"c{i}", "app_open", T0) for i in range(2000)])
    clock.now = T0 + IDLE_S / 2
    s.process([event(f"d{i}", "app_open", clock.now) for i in range(100)])
    assert s.passivate(T0 + IDLE_S + 1) == 2000
    recent = s.residency.recent
    assert list(recent) == [f"d{i}" for i in range(100)]
    assert sys.getsizeof(recent) <= 2 * sys.getsizeof(dict.fromkeys(recent, 0.0))


def test_residents_leaving_behind_a_pass_of_walks_start_it_again(compiled, monkeypatch):
    """A pass kept a partition's residents while it was handed over (walks stopped at their
    budget); the partition released, they leave: the idle ones the pass had not reached yet
    are passivated on the next ticks, not kept for another idle time."""
    monkeypatch.setattr(shard_module, "PASSIVATE_BUDGET_S", 0.0)
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=IDLE_S)
    p = p_of("a0")
    leaving = [c for c in (f"a{i}" for i in range(40_000)) if p_of(c) == p][:2 * VISITS_TIMED]
    others = [f"b{i}" for i in range(100) if p_of(f"b{i}") != p]
    s.process([event(c, "app_open", T0) for c in leaving])  # the least recent
    s.process([event(c, "app_open", T0) for c in others])
    s.freeze([p], 2)
    clock.now = T0 + IDLE_S + 1
    assert ticked(s) == 0  # a walk stopped at its budget, among those kept
    s.release([p], 2)
    assert len(s.engine.table) == len(others)
    clock.now += 0.1
    assert [ticked(s) for _ in range(3)] == [1] * 3


def test_recency_is_compacted_in_one_copy(compiled):
    """Its peak memory is about the new order's (a list of its items besides took three
    times that, 216 MiB at two million residents)."""
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=IDLE_S)
    recent = s.residency.recent
    recent.update((f"c{i}", T0) for i in range(40_000))
    for i in range(0, 40_000, 2):
        recent.pop(f"c{i}")
    tracemalloc.start()
    try:
        s.residency._compact()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(s.residency.recent) == 20_000
    assert peak <= 1.25 * sys.getsizeof(s.residency.recent)


def test_sleepers_woken_past_the_ceiling_fit_the_profile_table_as_made(compiled, monkeypatch):
    """Nothing refuses a timer: WAKE_TICKS ticks of woken sleepers (full rows) past the limit,
    its overflow and a round's new customers never copy the table to grow it."""
    monkeypatch.setattr(shard_module, "PASSIVATE_BUDGET_S", 0.0)
    clock = Clock()
    s = shard(compiled, clock=clock, resident_limit=10, idle_s=IDLE_S)
    rows, woken = s.engine.table.capacity, WAKE_TICKS * WAKE_LIMIT
    ceiling = s.residency.resident_limit + s.residency.overflow
    for start in range(0, ceiling + SHARD_ROUND_LIMIT + woken, 100):
        s.process([event(f"c{i}", "add_to_cart", T0, product_id="tv", category="electronics",
                         price=1.0) for i in range(start, start + 100)])
        s.passivate(T0)  # unbudgeted: down to the limit, as sleepers
    clock.now = T0 + 3600
    s.process([event(f"m{i}", "app_open", clock.now)  # to one under the ceiling
               for i in range(ceiling - 1 - len(s.engine.table))])
    s.process([event(f"n{i}", "app_open", clock.now) for i in range(SHARD_ROUND_LIMIT)])
    for _ in range(WAKE_TICKS):
        s.tick()  # wakes WAKE_LIMIT, passivates one (no budget)
    assert len(s.engine.table) == ceiling - 1 + SHARD_ROUND_LIMIT + woken - WAKE_TICKS
    assert s.engine.table.capacity == rows
