"""Shard.snapshot_dirty writes the partitions with changes no snapshot holds yet, as the
background checkpoint would, not every partition served (the bench's settle between steps
wrote all 4,096 for the few dozen a step dirtied)."""
from __future__ import annotations

from kairos.cluster.storage.directory_store import DirectoryStore
from tests.unit.shard.test_shard import T0, event, p_of, shard

CUSTOMERS = [f"c{i}@example.com" for i in range(40)]


def test_only_the_dirty_partitions_are_snapshotted(compiled, tmp_path):
    s = shard(compiled, store=DirectoryStore(tmp_path))
    s.process([event(c, "page_view", T0, category="home") for c in CUSTOMERS])
    assert s.snapshot() == len(CUSTOMERS) and not s.dirty
    s.process([event("c0@example.com", "page_view", T0 + 1, category="home")])
    written = []
    snapshot = s.durability.snapshot

    def recorded(partitions) -> int:
        written.append(sorted(partitions))
        return snapshot(partitions)

    s.durability.snapshot = recorded
    same = sum(p_of(c) == p_of("c0@example.com") for c in CUSTOMERS)
    assert s.snapshot_dirty() == same < len(CUSTOMERS)
    assert written == [[p_of("c0@example.com")]] and not s.dirty
    assert s.snapshot_dirty() == 0 and written[-1] == []
