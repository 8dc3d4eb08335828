"""A segment closes `segment_s` after its first batch, and a truncation that covers every
record closes the current one: a record outlives the snapshot covering it by about
KAIROS_SNAPSHOT_AFTER_S at most, not until 64 MiB more were written (a forgotten customer's,
in the journal of the shard its partition moved from)."""
from __future__ import annotations

import time

from kairos.cluster.storage.journal import Journal
from kairos.cluster.storage.directory_store import DirectoryStore
from tests.unit.shard.test_shard import T0, Clock, event, forget, p_of, shard


def holding(directory, text: str) -> list[str]:
    return [f.name for f in directory.rglob("*.log") if text.encode() in f.read_bytes()]


def test_a_truncation_that_covers_every_record_drops_the_current_segment(tmp_path):
    j = Journal(tmp_path)
    j.append([("event", 1, "ana@example.com", 1)])
    j.append([("event", 2, "bob", 2)])
    j.truncate(2)
    assert holding(tmp_path, "ana@example.com") == [] and list(j.replay()) == []
    j.close()
    again = Journal(tmp_path)  # reopened: LSNs go on, none reused
    assert again.last_lsn == 2 and again.append([("event", 1, "cy", 3)]) == 3
    assert [lsn for lsn, _ in again.replay()] == [3]


def test_a_segment_closes_segment_s_after_its_first_batch(tmp_path):
    j = Journal(tmp_path, segment_s=0.05)
    j.append([("event", 1, "ana@example.com", 1)])
    j.append([("event", 2, "bob", 2)])  # the same segment
    time.sleep(0.06)
    j.append([("event", 2, "bob", 3)])  # a new one
    assert len(list(tmp_path.glob("*.log"))) == 2
    assert j.truncate(2) == 1  # record 3 is not covered: its segment stays
    assert holding(tmp_path, "ana@example.com") == []
    assert [lsn for lsn, _ in j.replay()] == [3]


def test_the_previous_owners_journal_drops_a_moved_customers_records(compiled, tmp_path):
    clock = Clock()
    store = DirectoryStore(tmp_path)
    a = shard(compiled, "a", store=store, clock=clock)
    b = shard(compiled, "b", partitions=[], store=store, clock=clock)
    a.process([event("ana@example.com", "page_view", T0, category="home")])
    p = p_of("ana@example.com")
    b.adopt(a.freeze([p], 2), 2)
    a.release([p], 2)
    b.confirm([p], 2)
    assert b.process([forget("ana@example.com")], [2])[0][0].existed
    clock.now += 120
    a.tick()
    b.tick()
    assert holding(tmp_path / "journals", "ana@example.com") == []
