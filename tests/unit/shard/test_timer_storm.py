"""Timers falling due together (review rev41, push 1): an ingest key sent add_to_cart for many
long ids with the same past time, so every cart_abandoned timer is due at once. Fired in one
tick's round, their journal frame passed MAX_FRAME: the tick failed, the rebuilt shard armed
the same timers, and failed again, forever. A tick now fires a round's worth, earliest first,
and the rest on the next ticks. The frame limit and the round's bytes are lowered here (a
quarter, as by default) so the scenario takes hundreds of customers, not 70,000."""
from __future__ import annotations

import math

import pytest

from kairos.cluster.shard import shard as shard_module
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage import frames
from kairos.cluster.storage.directory_store import DirectoryStore
from tests.conftest import default_compiled
from tests.unit.shard.test_shard import N_PARTITIONS, T0, Clock, event, p_of, shard

CART = dict(product_id="tv", category="electronics", price=199.0)
AFTER = 1800.0  # cart_abandoned's delay in the default catalog
N = 600  # of ids of about 1 KB: some 620 KB of fires, past the frame limit below


def long_id(i: int) -> str:
    return f"{i:07d}" + "\U0001F600" * 249  # 256 characters (the cap), 1,003 bytes


@pytest.fixture
def small_frames(monkeypatch):
    monkeypatch.setattr(frames, "MAX_FRAME", 256 << 10)
    monkeypatch.setattr(shard_module, "SHARD_ROUND_BYTES", 64 << 10, raising=False)


def loaded(tmp_path, clock, ids, times) -> Shard:
    s = shard(default_compiled(), clock=clock, store=DirectoryStore(tmp_path, fsync=False))
    for lo in range(0, len(ids), 100):
        s.process([event(c, "add_to_cart", t, **CART)
                   for c, t in zip(ids[lo:lo + 100], times[lo:lo + 100])])
    return s


def rebuilt(tmp_path, clock) -> Shard:
    """What ShardHost does after a failed round: a new Shard from the store."""
    s = Shard("s0", default_compiled(), range(N_PARTITIONS), N_PARTITIONS, clock=clock,
              store=DirectoryStore(tmp_path, fsync=False))
    s.recover()
    return s


def test_a_backlog_past_the_frame_limit_fires_over_ticks_and_survives_a_rebuild(
        tmp_path, small_frames):
    clock = Clock()
    ids = [long_id(i) for i in range(N)]
    s = loaded(tmp_path, clock, ids, [T0] * N)  # all due at the same instant
    assert len(s.timers) == N
    clock.now = T0 + AFTER + 0.05
    s.tick()  # failed with StoreUnavailable (frame past MAX_FRAME) before the fix
    first = s.counts["timers_fired"]
    assert 0 < first < N
    s.close()
    s = rebuilt(tmp_path, clock)  # the first tick's fires were journaled: not armed again
    assert len(s.timers) == N - first
    ticks, replayed = 0, s.counts["timers_fired"]
    while len(s.timers):
        s.tick()
        ticks += 1
    assert s.counts["timers_fired"] - replayed == N - first
    # every tick but the last took as much as the budget let in: the backlog drained steadily
    assert ticks == math.ceil((N - first) / first)


def test_the_backlog_fires_in_due_order_and_a_customer_s_event_fires_its_own_first(
        tmp_path, monkeypatch):
    monkeypatch.setattr(shard_module, "TICK_FIRE_LIMIT", 50, raising=False)
    clock = Clock()
    ids = [f"c{i:04d}" for i in range(180)]
    # due in the reverse of the ids' order, so due order is not the ids' (nor arrival's)
    due = {c: T0 + AFTER + (len(ids) - i) * 1e-3 for i, c in enumerate(ids)}
    s = loaded(tmp_path, clock, ids, [t - AFTER for t in due.values()])
    clock.now = T0 + AFTER + 1
    by_due = sorted(ids, key=due.__getitem__)
    s.tick()
    assert s.counts["timers_fired"] == 50  # the count cap
    assert set(s.timers.armed) == set(by_due[50:])  # the earliest fired
    late = by_due[-1]  # still waiting: its event at `now` fires its overdue timer first
    s.process([event(late, "add_to_cart", clock.now, **CART)])
    assert s.counts["timers_fired"] == 51
    assert s.timers.armed[late] == {0: clock.now + AFTER}  # re-armed by the event
    # armed meanwhile but due later than the backlog: they wait for it, not it for them
    s.process([event(f"new{i}", "add_to_cart", clock.now - AFTER + 0.5, **CART)
               for i in range(60)])
    clock.now += 1
    fired = []
    while len(fired) < len(by_due) - 51:
        before = set(s.timers.armed)
        s.tick()
        fired += sorted(before - set(s.timers.armed), key=lambda c: due.get(c, math.inf))
    assert fired[:len(by_due) - 51] == [c for c in by_due[50:] if c != late]
    while any(c.startswith("new") for c in s.timers.armed):
        s.tick()


def test_a_moving_partition_s_backlog_does_not_hold_other_partitions_timers_back(
        tmp_path, monkeypatch):
    """Held for a moving partition, a timer writes no record: it takes none of the tick's
    budget, so the other partitions' timers due after that backlog fire at the next tick
    (they waited a tick per TICK_FIRE_LIMIT held ones), and the held ones fire after the
    thaw, each once."""
    monkeypatch.setattr(shard_module, "TICK_FIRE_LIMIT", 50, raising=False)
    clock = Clock()
    moving = p_of("a-0")
    held = [c for c in (f"a-{i}" for i in range(20_000)) if p_of(c) == moving][:300]
    others = [c for c in (f"b-{i}" for i in range(2_000)) if p_of(c) != moving][:40]
    s = loaded(tmp_path, clock, held + others, [T0] * len(held) + [T0 + 1] * len(others))
    s.freeze([moving], 7)
    clock.now = T0 + AFTER + 5
    s.tick()
    assert not any(c in s.timers.armed for c in others)
    assert s.counts["timers_fired"] == len(others)
    s.thaw([moving], 7)
    while len(s.timers):
        s.tick()
    assert s.counts["timers_fired"] == len(held) + len(others)
