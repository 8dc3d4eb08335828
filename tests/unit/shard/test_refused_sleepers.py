"""Sleepers whose partition may not wake them yet (arriving, or leaving) are parked off the
due order (timers.py): however many are overdue, other partitions' sleepers wake when due,
and theirs wake once the partition is served again."""
from __future__ import annotations

import functools
from collections.abc import Callable

from kairos.cluster.shard import timers
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.memory_store import MemoryStore
from tests.unit.shard.test_shard import N_PARTITIONS, Clock, p_of, shard
from tests.unit.shard.test_sleepers import DUE, asleep, pushed

# more than any number of sleepers a tick could look at: 70 ticks' wakes
OVERDUE = 70 * timers.WAKE_LIMIT


@functools.cache  # read only
def overdue_in_another_partition() -> tuple[int, dict[str, float]]:
    m = (p_of("ana") + 1) % N_PARTITIONS
    customers = (c for c in (f"c{i}" for i in range(N_PARTITIONS * OVERDUE * 2)) if p_of(c) == m)
    return m, {next(customers): DUE - 100 for _ in range(OVERDUE)}


def arriving_overdue(compiled) -> tuple[Shard, Clock, int, dict[str, float]]:
    """A shard with ana asleep (her cart timer) that adopted partition m, whose sleepers are all
    overdue, and has not had the move confirmed."""
    m, refused = overdue_in_another_partition()
    store = MemoryStore(shared=True)
    s, clock = asleep(compiled, partitions=[p for p in range(N_PARTITIONS) if p != m],
                      store=store)  # ana passivated with her cart timer
    source = shard(compiled, "source", partitions=[m], store=store)
    source.residency.take_sleepers(m, refused)
    s.adopt(source.freeze([m], 2), 2)  # not confirmed: its sleepers wait
    return s, clock, m, refused


def frozen_overdue(compiled) -> tuple[Shard, Clock, int, dict[str, float]]:
    """A shard with ana asleep (her cart timer) holding partition m frozen, whose sleepers are
    all overdue."""
    m, refused = overdue_in_another_partition()
    s, clock = asleep(compiled)
    s.residency.take_sleepers(m, refused)
    s.freeze([m], 2)
    return s, clock, m, refused


def assert_parked_until_served(s: Shard, clock: Clock, m: int, refused: dict[str, float],
                               serve: Callable[[], object]) -> None:
    """Once due, ana wakes while m's sleepers stay parked; once `serve` lets m be served again,
    the next tick wakes as many of them as a tick may."""
    clock.now = DUE + 0.5
    assert pushed(s.tick()) == [("sink-1", "ana", ["cart_recovery_push"])]
    assert s.residency.sleepers(m) == refused
    serve()
    s.tick()
    assert len(s.residency.sleepers(m)) == OVERDUE - timers.WAKE_LIMIT


def test_overdue_sleepers_of_an_arriving_partition_hold_back_no_other_partitions(compiled):
    s, clock, m, refused = arriving_overdue(compiled)
    assert_parked_until_served(s, clock, m, refused, lambda: s.confirm([m], 2))


def test_overdue_sleepers_of_a_frozen_partition_wake_once_it_thaws(compiled):
    s, clock, m, refused = frozen_overdue(compiled)
    assert_parked_until_served(s, clock, m, refused, lambda: s.thaw([m], 2))


def test_a_released_partitions_parked_sleepers_go(compiled):
    s, clock, m, refused = frozen_overdue(compiled)
    s.release([m], 2)
    assert s.residency.sleepers(m) == {} and s.timers.sleeping() == 1  # ana's
    clock.now = DUE + 0.5
    assert pushed(s.tick()) == [("sink-1", "ana", ["cart_recovery_push"])]


def test_an_arriving_partitions_sleepers_wake_once_a_routed_request_settles_its_move(compiled):
    s, clock, m, refused = arriving_overdue(compiled)
    clock.now = DUE + 0.5
    s.tick()
    s.handoff.routed_here(m)  # dispatch's, for a request of m its sender routed under v2
    s.tick()
    assert len(s.residency.sleepers(m)) == OVERDUE - timers.WAKE_LIMIT
