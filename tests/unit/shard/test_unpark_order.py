"""A held partition's sleepers join the due order once, when it is served (an adopt parks the
partition before it takes them); a partition that is most of the due order when served joins
it at once (heapify), not one push at a time on the request path."""
from __future__ import annotations

import heapq

from kairos.cluster.shard.timers import Timers
from tests.unit.shard.test_arriving import P
from tests.unit.shard.test_held_timers import CART_RECOVERY
from tests.unit.shard.test_shard import N_PARTITIONS, shard
from tests.unit.shard.test_sleepers import DUE, asleep, pushed


def test_adopted_sleepers_join_the_due_order_once(compiled):
    a, clock = asleep(compiled)  # ana passivated with her cart timer
    b = shard(compiled, "b", partitions=[x for x in range(N_PARTITIONS) if x != P],
              clock=clock, store=a.store)
    b.adopt(a.freeze([P], 2), 2)
    b.confirm([P], 2)
    assert b.timers._asleep._heap == [(DUE, P, "ana")]
    clock.now = DUE + 0.5
    assert pushed(b.tick()) == CART_RECOVERY


def test_a_partition_most_of_the_due_order_is_unparked_at_once(monkeypatch):
    woken = []
    t = Timers(lambda p, c: woken.append(c) or True)
    t.sleep(1, "other", 5.0)
    t.park(0)
    t.sleep_all(0, {f"c{i}": float(9 - i) for i in range(8)})
    pushes = []
    push = heapq.heappush
    monkeypatch.setattr(heapq, "heappush", lambda heap, entry: (pushes.append(entry),
                                                                push(heap, entry)))
    t.unpark(0)
    assert pushes == []
    t.pop_due(10.0)
    assert woken == ["c7", "c6", "c5", "c4", "other", "c3", "c2", "c1", "c0"]
