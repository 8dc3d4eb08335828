"""Erasure reaches the journal's quarantine (review rev41 storage, finding 4): a torn tail
opening the journal kept, a segment an operator moved aside, and Redis's quarantine set are
rewritten without a forgotten customer's records, keeping every other record for the
operator; bytes that decode as no batch go, as they cannot be checked."""
from __future__ import annotations

from pathlib import Path

import pytest

from kairos.cluster.storage.frames import HEADER, unseal_batch
from kairos.cluster.storage.journal import Journal
from kairos.cluster.storage.redis_store import RedisStore

from tests.unit.storage.test_store import QUARANTINE


def ana(record) -> bool:
    return record[2] == "ana@example.com"


def holds(path: Path, what: bytes) -> bool:
    return what in path.read_bytes()


def test_a_kept_torn_tail_loses_the_customers_records_and_keeps_the_rest(tmp_path, caplog):
    d = tmp_path / "j"
    j = Journal(d)
    j.append([["event", 1, "ana@example.com", "first"]])
    j.append([["event", 1, "ana@example.com", "second"], ["event", 1, "bob", "kept"]])
    j.close()
    segment = d / f"{1:020d}.log"
    data = bytearray(segment.read_bytes())
    data[data.index(b"second")] ^= 0x80  # the last frame whole, its checksum failing
    segment.write_bytes(bytes(data))
    j = Journal(d)
    torn = d / "quarantine" / f"{2:020d}.torn"
    reserved = j.last_lsn  # past every LSN the torn tail could hold (its size)
    assert reserved > 3 and holds(torn, b"ana@example.com")
    with caplog.at_level("WARNING", "kairos.store"):
        assert j.compact(ana) == 2
    assert not holds(torn, b"ana@example.com") and holds(torn, b"kept")
    assert "erasure rewrites it without 1 records" in caplog.text
    assert j.compact(ana) == 0  # nothing left to drop: the file stays as it is
    j.close()
    # the rewritten file is smaller, but no LSN it could have held is given out again
    assert Journal(d).append([["event", 1, "cy", "after"]]) == reserved + 1
    assert [r[2] for _, r in Journal(d).replay()] == ["cy"]


def test_a_quarantined_segment_keeps_all_but_the_customers_records_and_what_is_unreadable(
        tmp_path, caplog):
    d = tmp_path / "j"
    j = Journal(d)
    for k in range(3):
        j.append([["event", 1, "ana@example.com", k], ["event", 1, f"bob{k}", k]])
    j.close()
    segment = d / f"{1:020d}.log"
    data = bytearray(segment.read_bytes())
    second = HEADER.size + HEADER.unpack_from(data, 0)[0]
    data[second:second + 4] = b"\xff\xff\xff\x7f"  # its length: past the segment's end
    (d / "quarantine").mkdir()
    (d / "quarantine" / segment.name).write_bytes(bytes(data))
    (d / "quarantine" / "notes.txt").write_text("ana@example.com: damaged on the 5th")
    segment.unlink()
    j = Journal(d)
    j.append([["event", 1, "bob9", 9]])
    with caplog.at_level("WARNING", "kairos.store"):
        assert j.compact(ana) == 2  # the first and third batches' (the second's is cut)
    quarantined = d / "quarantine" / segment.name
    assert not holds(quarantined, b"ana@example.com")
    assert holds(quarantined, b"bob0") and holds(quarantined, b"bob2")
    assert not holds(quarantined, b"bob1")
    assert "bytes that decode as no batch" in caplog.text
    assert holds(d / "quarantine" / "notes.txt", b"ana@example.com")  # not a journal's file
    assert [r[2] for _, r in j.replay()] == ["bob9"]
    assert not list((d / "quarantine").glob(".*.tmp"))


@pytest.fixture
def store(redis_server, request):
    return RedisStore(f"{redis_server.url}?prefix=qe{abs(hash(request.node.name))}")


def test_redis_quarantined_batches_lose_the_customers_records_at_their_scores(store):
    j = store.journal("s0", "os")
    j.append([["event", 1, "ana@example.com", 1], ["event", 1, "bob", 1]])
    j.append([["event", 1, "ana@example.com", 2], ["event", 1, "bob", 2]])
    j.append([["event", 1, "bob", 3]])
    store.r.eval(QUARANTINE, 1, j.key, 4)  # the operator moves the batch of LSNs 3-4 aside
    quarantine = f"{j.key}:quarantine"
    store.r.zadd(quarantine, {b"\xc1 not a batch: ana@example.com": 9})
    assert j.compact(ana) == 2
    members = store.r.zrange(quarantine, 0, -1, withscores=True)
    assert [score for _, score in members] == [4, 9]
    assert not any(b"ana@example.com" in member for member, _ in members)
    assert unseal_batch(members[0][0])[:2] == (3, [None, ["event", 1, "bob", 2]])
    assert unseal_batch(members[1][0])[:2] == (10, [])  # unreadable: an empty batch at 9
    assert [(lsn, r[2]) for lsn, r in store.read_journal("s0").replay()] == [(2, "bob"),
                                                                              (5, "bob")]
    assert j.compact(ana) == 0
    assert store.r.zrange(quarantine, 0, -1) == [m for m, _ in members]
