"""What was last pushed for a customer's watched views rides in its block: back in memory
after a passivation, a move or a restart, its unchanged best action is not pushed again (a
changed one is: test_sleepers.py, a woken sleeper's timer); a view no longer watched leaves it
behind."""
from __future__ import annotations

from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.memory_store import MemoryStore
from tests.unit.shard.test_shard import N_PARTITIONS, T0, Clock, event, p_of, shard, watch


def pushed(pushes) -> list:
    return [(p.sink, p.decision.customer_id, [a.action_id for a in p.decision.actions])
            for p in pushes]


def watched(compiled, **kw) -> tuple[Shard, Clock]:
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=60.0, **kw)
    _, pushes = s.process([event("ana", "app_open", T0), watch("ana", "gw-1", "web", "hero")])
    assert pushed(pushes) == [("gw-1", "ana", ["generic_welcome"])]
    return s, clock


def test_after_a_passivation_the_unchanged_best_action_is_not_pushed_again(compiled):
    s, clock = watched(compiled)
    clock.now += 61
    assert s.passivate(clock.now) == 1
    assert s.process([event("ana", "app_open", T0 + 1)])[1] == []


def test_after_a_move_or_a_restart_the_unchanged_best_action_is_not_pushed_again(compiled):
    store = MemoryStore(shared=True)
    s, clock = watched(compiled, store=store)
    p = p_of("ana")
    b = shard(compiled, "b", partitions=[], clock=clock, store=store)
    b.adopt(s.freeze([p], 2), 2)
    s.release([p], 2)
    assert b.process([event("ana", "app_open", T0 + 1)])[1] == []
    b.close()
    rebuilt = Shard("b", compiled, {p: 2}, N_PARTITIONS, store=store, clock=clock)
    rebuilt.recover()
    assert rebuilt.process([event("ana", "app_open", T0 + 2)])[1] == []


def test_what_was_pushed_for_a_view_no_longer_watched_stays_behind(compiled):
    s, clock = watched(compiled)
    s.watch_channel("outbound", "web", "sidebar")
    s.process([event("ana", "app_open", T0 + 1)])
    s.watch_channel("outbound", "web", "sidebar", active=False)
    assert [v[:2] for v in s.watches.extra("ana")["shown"]] == [["web", "hero"]]


def test_a_block_holds_no_empty_record_of_what_was_pushed(compiled):
    s, clock = watched(compiled)
    s.watch_channel("outbound", "web", "sidebar")
    s.process([event("ana", "app_open", T0 + 1)])
    s.watch_channel("outbound", "web", "sidebar", active=False)
    s.process([watch("ana", "gw-1", "web", "hero", active=False)])
    assert "shown" not in s.watches.extra("ana")
