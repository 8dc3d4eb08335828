"""A partition's residents are the rows of the profile table whose `partition` column names it
(core/state.py): snapshots, handoffs and releases of many partitions read that column once
for them all (ProfileTable.members_of), not once a partition; a read cost 0.65 ms at 1,000,000
rows, so a checkpoint of many dirty partitions at 10,000,000 customers held the event loop for
seconds."""
from __future__ import annotations

import random

import numpy as np
import pytest

from kairos.cluster.storage.memory_store import MemoryStore
from kairos.core.state import NO_PARTITION, ProfileTable

from tests.unit.shard.test_shard import N_PARTITIONS, T0, event, p_of, shard

CUSTOMERS = [f"c{i:04d}" for i in range(300)]


def _reads(table: ProfileTable) -> list:
    """The reads of the table's `partition` column (slices of it) from now on."""
    reads = []

    class Column(np.ndarray):
        def __getitem__(self, key):
            if self is table.partition and isinstance(key, slice):
                reads.append(key)
            return super().__getitem__(key)

    table.partition = table.partition.view(Column)
    return reads


def test_members_of_lists_each_partitions_members_sorted_from_one_read(compiled):
    table, rng = ProfileTable(compiled, capacity=8), random.Random(7)
    of = {}
    for c in rng.sample(CUSTOMERS, len(CUSTOMERS)):
        row, of[c] = table.row(c), rng.randrange(12)
        table.partition[row] = of[c]
    for c in CUSTOMERS[::5]:  # freed rows: no partition
        table.evict(c)
        del of[c]
    table.row("joined")  # a row no shard made a member of a partition
    reads = _reads(table)
    asked = [9, 3, 40, 0, 3]
    members = table.members_of(asked)
    assert len(reads) == 1
    assert list(members) == [9, 3, 40, 0]
    assert members == {p: sorted(c for c in of if of[c] == p) for p in asked}
    assert table.members_of() == {p: sorted(c for c in of if of[c] == p)
                                  for p in sorted(set(of.values()))}
    assert table.members_of([]) == {} and table.members_of([NO_PARTITION + 100]) == {99: []}


@pytest.fixture
def moved(compiled):
    """A shard with residents in every partition, and another owning none of them."""
    store = MemoryStore(shared=True)
    a = shard(compiled, "a", store=store)
    b = shard(compiled, "b", partitions=[], store=store)
    a.process([event(c, "profile_updated", T0, marketing_opt_in=True) for c in CUSTOMERS])
    return a, b


def test_a_snapshot_of_every_partition_reads_the_column_once(moved):
    a, _ = moved
    reads = _reads(a.engine.table)
    assert a.durability.snapshot(range(N_PARTITIONS)) == len(CUSTOMERS)
    assert len(reads) == 1


def test_a_handoff_and_release_of_many_partitions_read_the_column_once_each(moved):
    a, b = moved
    moving = list(range(0, N_PARTITIONS, 2))
    leaving = sorted(c for c in CUSTOMERS if p_of(c) in moving)
    reads, arrived = _reads(a.engine.table), _reads(b.engine.table)
    payload = a.freeze(moving, 2)
    assert len(reads) == 1
    assert b.adopt(payload, 2) == len(leaving)
    assert len(arrived) == 1  # the adopted partitions' snapshot
    a.release(moving, 2)
    assert len(reads) == 2
    assert sorted(a.engine.table.index) == sorted(set(CUSTOMERS) - set(leaving))
    assert sorted(b.residency.residents(moving)) == leaving


def test_a_request_naming_another_partition_does_not_move_the_customer(compiled):
    """The partition column says where a customer's id hashes to: a request naming another
    partition (the shard trusts the field) leaves it a member of its own, whose snapshot and
    handoff list it (review rev-mem finding 1)."""
    s = shard(compiled)
    first = event("ana", "profile_updated", T0, marketing_opt_in=True)
    wrong = (p_of("ana") + 1) % N_PARTITIONS
    s.process([first])
    s.process([first._replace(partition=wrong)])
    assert s.residency.members_of([p_of("ana"), wrong]) == {p_of("ana"): ["ana"], wrong: []}
