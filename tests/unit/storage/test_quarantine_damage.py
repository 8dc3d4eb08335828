"""What erasure leaves of quarantined batches it cannot vouch for (review rev41 d-store,
findings 2, 3, 4 and 6): a damaged batch rewritten stays damaged (its CRC fails), a batch of a
newer format is kept as it is, a damaged SEALED mark is damage rather than a newer format, and
a batch the operator removed meanwhile stays removed."""
from __future__ import annotations

import msgpack
import pytest
from redis.commands.core import SortedSetCommands

from kairos.cluster.protocol import JOURNAL_FORMAT
from kairos.cluster.storage.frames import (SEALED, BatchDamaged, JournalCorrupt, frame,
                                           pack_batch, seal_batch, segment_batches,
                                           unseal_batch)
from kairos.cluster.storage.journal import Journal
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.storage.store import StoreCorrupt

ANA, BOB = ["event", 1, "ana", "x"], ["event", 1, "bob", "price=199.0"]


def ana(record) -> bool:
    return record[2] == "ana"


def damaged(data: bytes) -> bytes:
    """Bob's price=199.0 read as 999.0 (the CRC no longer holds)."""
    return data.replace(b"199", b"999")


@pytest.fixture
def journal(tmp_path):
    d = tmp_path / "j"
    j = Journal(d)
    j.append([["event", 1, "zed", 0]])
    j.close()
    (d / "quarantine").mkdir()
    return d


def test_a_damaged_quarantined_frame_rewritten_by_erasure_still_fails_its_crc(journal):
    torn = journal / "quarantine" / f"{2:020d}.torn"
    torn.write_bytes(damaged(frame(2, [ANA, BOB])))
    assert Journal(journal).compact(ana) == 1
    assert b"ana" not in torn.read_bytes() and b"price=999.0" in torn.read_bytes()
    moved_back = journal / f"{2:020d}.log"
    moved_back.write_bytes(torn.read_bytes())  # the operator puts it back: refused, as before
    with pytest.raises(JournalCorrupt, match="damaged frame at byte 0"):
        list(segment_batches(moved_back))


def test_a_quarantined_frame_of_a_newer_format_is_kept_whole_by_erasure(journal, caplog):
    newer = journal / "quarantine" / f"{2:020d}.log"
    data = frame(2, [ANA, BOB], JOURNAL_FORMAT + 1)
    newer.write_bytes(data)
    with caplog.at_level("ERROR", "kairos.store"):
        assert Journal(journal).compact(ana) == 0
    assert newer.read_bytes() == data
    assert f"record format {JOURNAL_FORMAT + 1}" in caplog.text
    assert "erasure keeps it as it is" in caplog.text


@pytest.fixture
def store(redis_server, request):
    return RedisStore(f"{redis_server.url}?prefix=qd{abs(hash(request.node.name))}")


def quarantined(store: RedisStore, members: dict[bytes, int]):
    """A journal whose quarantine holds `members` (by score); the journal, its quarantine."""
    j = store.journal("s0", "os")
    j.append([["event", 1, "zed", 0]])
    store.r.zadd(f"{j.key}:quarantine", members)
    return j, f"{j.key}:quarantine"


def test_a_damaged_quarantined_redis_batch_rewritten_by_erasure_still_fails_its_crc(store):
    j, quarantine = quarantined(store, {damaged(seal_batch(2, [ANA, BOB])): 3})
    assert j.compact(ana) == 1
    (member,) = store.r.zrange(quarantine, 0, -1)
    with pytest.raises(BatchDamaged, match="CRC-32"):
        unseal_batch(member)
    assert unseal_batch(member, checked=False)[:2] == (2, [None, ["event", 1, "bob",
                                                                 "price=999.0"]])


def test_a_plain_quarantined_redis_batch_is_rewritten_plain_not_vouched_for(store):
    j, quarantine = quarantined(store, {pack_batch(2, [ANA, BOB]): 3})
    assert j.compact(ana) == 1
    (member,) = store.r.zrange(quarantine, 0, -1)
    assert msgpack.unpackb(member, raw=False) == [2, [None, BOB], JOURNAL_FORMAT]


@pytest.mark.parametrize("sealed", [False, True])
def test_a_quarantined_redis_batch_of_a_newer_format_is_kept_whole(store, caplog, sealed):
    pack = seal_batch if sealed else pack_batch
    newer = pack(2, [ANA, BOB], JOURNAL_FORMAT + 1)
    j, quarantine = quarantined(store, {newer: 3})
    with caplog.at_level("ERROR", "kairos.store"):
        assert j.compact(ana) == 0
    assert store.r.zrange(quarantine, 0, -1) == [newer]
    assert "erasure keeps it as it is" in caplog.text


def test_a_damaged_sealed_mark_is_damage_not_a_newer_format(store):
    first, payload, _, crc = msgpack.unpackb(seal_batch(1, [BOB]))
    member = msgpack.packb([first, payload, SEALED + 1, crc])  # one bit of the mark flipped
    with pytest.raises(BatchDamaged, match=f"{SEALED + 1} for its mark"):
        unseal_batch(member)
    j = store.journal("s0", "os")
    j.append([BOB])
    store.r.zremrangebyscore(j.key, 1, 1)
    store.r.zadd(j.key, {member: 1})
    with pytest.raises(StoreCorrupt, match="mark"):
        list(store.read_journal("s0").replay())


def test_a_quarantined_redis_batch_the_operator_removes_meanwhile_stays_removed(
        store, monkeypatch):
    j, quarantine = quarantined(store, {seal_batch(2, [ANA, BOB]): 3})
    real = SortedSetCommands.zrange

    def zrange(self, name, *args, **kwargs):
        reply = real(self, name, *args, **kwargs)
        if name == quarantine:
            store.r.zrem(quarantine, *(m for m, _ in reply))  # inspected, removed (README)
        return reply
    monkeypatch.setattr(SortedSetCommands, "zrange", zrange)
    assert j.compact(ana) == 0
    assert store.r.zcard(quarantine) == 0
