"""A move's release or thaw that runs late (its call timed out, and the controller's retry
settled the move) after the partition left and came back by a newer move: the newer grant
stands (found by a review: the late thaw lowered it, the late release left no owner)."""
from __future__ import annotations

from kairos.cluster.protocol import EventAck, Moved
from kairos.cluster.storage.memory_store import MemoryStore

from .test_shard import T0, event, p_of, shard

P = p_of("ana")


def back_at_v4(compiled, failed_v2: bool):
    """b serves P; (a move at v2 undone;) P moves to c at v3 and back to b at v4, settled."""
    store = MemoryStore(shared=True)
    b = shard(compiled, "b", store=store)
    c = shard(compiled, "c", partitions=[], store=store)
    b.process([event("ana", "app_open", T0)])
    if failed_v2:
        x = shard(compiled, "x", partitions=[], store=store)
        x.adopt(b.freeze([P], 2), 2)
        x.release([P], 2)
        b.thaw([P], 2)
    c.adopt(b.freeze([P], 3), 3)
    b.release([P], 3)
    c.confirm([P], 3)
    b.adopt(c.freeze([P], 4), 4)
    c.release([P], 4)
    b.confirm([P], 4)
    return b, c


def test_a_late_thaw_leaves_a_newer_grant_as_it_is(compiled):
    b, _ = back_at_v4(compiled, failed_v2=True)
    snapshots = b.counts["snapshots"]
    b.thaw([P], 2)  # the first, timed-out thaw of the undone move
    assert b.owned[P] == 4
    assert b.counts["snapshots"] == snapshots
    (moved,), _ = b.process([event("ana", "app_open", T0 + 5)], routed=[3])
    assert moved == Moved(map_version=4)


def test_a_late_release_leaves_a_partition_adopted_since(compiled):
    b, c = back_at_v4(compiled, failed_v2=False)
    b.release([P], 3)  # the first, timed-out release of the move to c
    assert b.owned[P] == 4 and P not in c.owned
    (served,), _ = b.process([event("ana", "app_open", T0 + 5)], routed=[4])
    assert isinstance(served, EventAck), served
