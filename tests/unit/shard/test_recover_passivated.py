"""A recovered shard does not bring back the customers passivated since their partitions' last
snapshots (passivation writes no snapshot): past the resident limit, a snapshot's resident
whose home is as new as its copy stays in the store (durability.py's `_leave_passivated`), so
the shard holds no more than it did and takes new customers; each customer is served its
newest state, and a sleeper's timer still fires when due."""
from __future__ import annotations

from kairos.cluster.protocol import OK
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.directory_store import DirectoryStore
from tests.unit.shard.test_shard import T0, Clock, event, p_of, profile, shard
from tests.unit.shard.test_sleepers import CART, DUE, pushed, watch

LIMIT = 4


def one_a_partition(n: int) -> list[str]:
    ids, seen = [], set()
    for i in range(10 * n):
        if p_of(f"c{i}") not in seen:
            seen.add(p_of(f"c{i}"))
            ids.append(f"c{i}")
        if len(ids) == n:
            return ids
    raise AssertionError("too few partitions")


def snapshotted_then_passivated(compiled, root, customers: list[str]) -> tuple[Shard, Clock]:
    """Each customer's partition snapshotted while it is resident (no later snapshot), then
    it passivated."""
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(root), clock=clock, idle_s=900,
              resident_limit=LIMIT)
    s.recover()
    for c in customers:
        clock.now += 1
        s.process([event(c, "app_open", clock.now)])
        s.durability.snapshot([p_of(c)])
        assert s.passivate(clock.now + 10**6) == 1
    return s, clock


def views(s: Shard, customers: list[str], now: float) -> dict[str, dict]:
    """Their profiles, read one at a time (each passivated after: the resident limit)."""
    read = {}
    for c in customers:
        read[c] = s.process([profile(c, now)])[0][0].value
        s.passivate(now + 10**6)
    return read


def test_recovery_leaves_the_passivated_in_the_store_and_serves_their_newest_state(
        compiled, tmp_path):
    customers = one_a_partition(3 * LIMIT)
    s, clock = snapshotted_then_passivated(compiled, tmp_path, customers)
    # two come back and change, after their snapshots and after their homes were written:
    # the journal has those changes, which replay applies to the homes
    clock.now += 1
    s.process([event(c, "page_view", clock.now, category="home") for c in customers[:2]])
    s.passivate(clock.now + 10**6)
    s.process([event(customers[0], "app_open", clock.now)])
    s.journaling.sync()
    newest = views(s, customers, clock.now)
    r = shard(compiled, store=DirectoryStore(tmp_path), clock=clock, idle_s=900,
              resident_limit=LIMIT)
    r.recover()
    assert len(r.residency.recent) <= LIMIT
    assert r.process([event("newcomer", "app_open", clock.now)])[0][0].status == OK
    assert views(r, customers, clock.now) == newest


def test_a_sleeper_passivated_since_its_snapshot_fires_after_recovery(compiled, tmp_path):
    # hers is the first snapshot recovery reads: the others take it past the limit after
    ana, *others = sorted(one_a_partition(2 * LIMIT), key=p_of)
    s, clock = snapshotted_then_passivated(compiled, tmp_path, others)
    clock.now = T0
    s.process([event(ana, "profile_updated", T0 - 86400, marketing_opt_in=True,
                     push_opt_in=True), watch(ana, "sink-1", "push")])
    s.process([event(ana, "add_to_cart", T0, **CART)])
    s.durability.snapshot([p_of(ana)])
    for i in range(LIMIT + 1):  # the limit sends ana to the store, her timer armed
        s.process([event(f"other{i}", "app_open", T0 + 1)])
    s.passivate(T0 + 2)
    assert ana not in s.engine.table
    r = shard(compiled, store=DirectoryStore(tmp_path), clock=clock, idle_s=900,
              resident_limit=LIMIT)
    r.recover()
    assert ana not in r.engine.table
    clock.now = DUE + 0.5
    assert ("sink-1", ana, ["cart_recovery_push"]) in pushed(r.tick())
