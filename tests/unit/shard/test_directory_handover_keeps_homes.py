"""A handover never takes a partition's homes out of a directory store (issue 18, "M1").

A directory store is shared (store.py: every shard that opens it sees the same data), so
`park` leaves the passivated customers' homes where they are and the payload carries none:
the target reads them from the same directory. Nothing of them is held only in memory, so a
process that dies between `park` and the target's `adopt`, or a move undone after it, loses
no home. These tests hold that with real shards on a real directory, each step on a fresh
store object, as a new process opens it; with the directory store taken for unshared (the
review's premise), each of them finds ana Missing."""
from __future__ import annotations

from pathlib import Path

from kairos.cluster.protocol import Reply
from kairos.cluster.shard.handoff import Moving
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.directory_store import DirectoryStore

from tests.unit.shard.test_shard import N_PARTITIONS, T0, Clock, journey, p_of, profile, shard

LATER = T0 + 10**6


def parked_with_a_passivated_customer(compiled, root: Path) -> tuple[int, Reply]:
    """Shard "a" with ana passivated, snapshotted and the shard's journal truncated (her home is all
    that holds her), and her partition parked for the move of map version 2, then dropped
    unclosed (its process died); her partition and her profile read before."""
    clock = Clock()
    a = shard(compiled, "a", store=DirectoryStore(root), clock=clock, idle_s=60.0)
    a.recover()
    a.process(journey("ana", 5))
    before = a.process([profile("ana", LATER)])[0][0]
    clock.now += 10**5
    assert a.passivate(clock.now) == 1 and "ana" not in a.engine.table
    a.checkpoint(changed_before=clock.now, limit=N_PARTITIONS)
    assert list(a.journal.replay()) == []
    p = p_of("ana")
    a.park([p], 2)
    assert DirectoryStore(root).count([p]) == 1  # still on disk, not held in memory only
    return p, before


def rebuilt(compiled, root: Path, owned: dict[int, int], leaving: dict[int, int]) -> Shard:
    """Shard "a" built from the store by a new process, as recovering.py's `built` does."""
    s = Shard("a", compiled, owned, N_PARTITIONS, store=DirectoryStore(root))
    s.recover(None, leaving)
    s.handoff.frozen_again(Moving(leaving=leaving))
    return s


def test_a_shard_restarted_after_dying_parked_serves_the_partitions_homes(compiled, tmp_path):
    _, before = parked_with_a_passivated_customer(compiled, tmp_path)
    a = rebuilt(compiled, tmp_path, {q: 0 for q in range(N_PARTITIONS)}, {})
    assert a.process([profile("ana", LATER)])[0][0] == before


def test_a_move_undone_after_the_source_died_parked_serves_the_homes_again(compiled, tmp_path):
    p, before = parked_with_a_passivated_customer(compiled, tmp_path)
    a = rebuilt(compiled, tmp_path, {q: 0 for q in range(N_PARTITIONS)}, {p: 2})
    a.thaw([p], 3)
    assert a.process([profile("ana", LATER)], routed=[3])[0][0] == before


def test_a_move_finished_after_the_source_died_parked_brings_the_homes_along(
        compiled, tmp_path):
    p, before = parked_with_a_passivated_customer(compiled, tmp_path)
    a = rebuilt(compiled, tmp_path, {q: 0 for q in range(N_PARTITIONS)}, {p: 2})
    b = Shard("b", compiled, {}, N_PARTITIONS, store=DirectoryStore(tmp_path))
    b.recover()
    b.adopt(a.export([p], 2), 2)
    a.release([p], 2)
    assert b.process([profile("ana", LATER)], routed=[2])[0][0] == before
