"""Redis journal batches behind a CRC-32, as a directory's frames are (README, "Corruption"):
a damaged member is StoreCorrupt, through the path a batch that does not decode takes, not
replayed as if acknowledged (review rev41 storage, finding 5); members written before sealing
still replay."""
from __future__ import annotations

import msgpack
import pytest

from kairos.cluster.storage.frames import (SEALED, JournalFormatError, pack_batch, seal_batch,
                                           unpack_batch)
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.storage.store import StoreCorrupt

from tests.unit.storage.test_store import QUARANTINE


@pytest.fixture
def store(redis_server, request):
    return RedisStore(f"{redis_server.url}?prefix=crc{abs(hash(request.node.name))}")


def replace(store: RedisStore, key: str, score: int, member: bytes) -> None:
    store.r.zremrangebyscore(key, score, score)
    store.r.zadd(key, {member: score})


def test_a_damaged_byte_in_a_batch_is_corruption_not_a_record(store):
    j = store.journal("s0", "os")
    j.append([["event", 3, "ana", "price=199.0"]])
    j.append([["event", 3, "bob", "price=5.0"]])
    (member, _), _ = store.r.zrange(j.key, 0, -1, withscores=True)
    replace(store, j.key, 1, member.replace(b"199", b"999"))
    with pytest.raises(StoreCorrupt, match="the batch scored 1 does not decode .*CRC-32"):
        list(store.read_journal("s0").replay())
    store.r.eval(QUARANTINE, 1, j.key, 1)  # the operator's way out (README) works as before
    assert list(store.read_journal("s0").replay()) == [(2, ["event", 3, "bob", "price=5.0"])]


def test_a_batch_sealed_under_another_first_lsn_is_corruption(store):
    j = store.journal("s0", "os")
    j.append([["event", 3, "ana", 1]])
    sealed = seal_batch(1, [["event", 3, "ana", 1]])
    replace(store, j.key, 1, sealed.replace(b"\x94\x01", b"\x94\x02", 1))
    with pytest.raises(StoreCorrupt, match="sealed as from LSN 2, its batch from LSN 1"):
        list(store.read_journal("s0").replay())


def test_batches_written_before_sealing_replay_and_the_journal_goes_on_after_them(store):
    key = f"{store.prefix}:j:s0"
    store.r.zadd(key, {pack_batch(1, [["event", 3, "ana", 1]], 2): 1,
                       pack_batch(2, [["event", 3, "bob", 2], ["event", 3, "ana", 3]]): 3})
    store.r.set(f"{key}:last", 3)
    j = store.journal("s0", "os")
    assert j.append([["event", 3, "cy", 4]]) == 4
    assert [(lsn, r[2]) for lsn, r in j.replay()] == [(1, "ana"), (2, "bob"), (3, "ana"),
                                                     (4, "cy")]
    assert j.compact(lambda r: r[2] == "ana") == 2  # rewritten batches are sealed
    assert [msgpack.unpackb(member)[2] for member in store.r.zrange(key, 0, -1)] == [SEALED] * 3
    replace(store, key, 3, store.r.zrangebyscore(key, 3, 3)[0].replace(b"bob", b"bib"))
    with pytest.raises(StoreCorrupt, match="CRC-32"):
        list(j.replay())


def test_a_kairos_from_before_sealing_refuses_a_sealed_batch_as_too_new():
    """What `unpack_batch` (the reader before sealing) makes of one: a format it does not
    know, refused whole, rather than a damaged batch an operator would move aside."""
    with pytest.raises(JournalFormatError, match=f"at LSN 7 has record format {SEALED}"):
        unpack_batch(seal_batch(7, [["event", 3, "ana", 1]]))
