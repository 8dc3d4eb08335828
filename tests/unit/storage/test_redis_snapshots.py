"""Partitions' snapshots past a chunk on Redis (redis_snapshots.py): written in chunks and
switched in whole under the journal's fence, read back whole, a save that fails or dies midway
leaving the previous snapshot, an older Kairos's one-value snapshot still read."""
from __future__ import annotations

import os
import time

import pytest
import redis

from kairos.cluster.storage import blocks, redis_chunks, redis_snapshots
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.storage.sealed import unseal
from kairos.cluster.storage.store import (JournalDisowned, JournalFenced, StoreCorrupt,
                                          StoreUnavailable)

from tests.unit.storage.test_store import guarded_redis  # noqa: F401 (a fixture)

CHUNK = 1 << 19  # 512 KiB: the server below takes no value past 1 MiB


@pytest.fixture
def store(redis_server, request, monkeypatch):
    """A store whose server refuses values past 1 MiB (its least proto-max-bulk-len), as
    512 MiB refuses a partition's largest snapshots, with snapshot chunks of CHUNK."""
    redis.Redis.from_url(redis_server.url).config_set("proto-max-bulk-len", 1 << 20)
    monkeypatch.setattr(redis_snapshots, "SNAPSHOT_CHUNK_BYTES", CHUNK)
    return RedisStore(f"{redis_server.url}?prefix=sn{abs(hash(request.node.name))}")


def _keys(store: RedisStore) -> list[bytes]:
    return sorted(store.r.keys(f"{store.prefix}:*"))


def _chunk_keys(store: RedisStore) -> list[bytes]:
    return [k for k in _keys(store) if b":sc:" in k]


def test_a_snapshot_past_a_chunk_round_trips_and_replaces_the_previous_one_whole(store):
    big = os.urandom(3 * CHUNK + 17)  # 1.5 MiB: one SET of it drops the connection
    store.own_journal("s0", "inc-1", claim=True)
    store.put_snapshots({1: big, 2: b"small"}, unless_fenced="s0", lsn=5)
    assert store.get_snapshot(1) == big and store.get_snapshot(2) == b"small"
    assert store.snapshot_lsn(1) == store.snapshot_lsn(2) == ("s0", 5)
    assert len(_chunk_keys(store)) == 4
    bigger = os.urandom(4 * CHUNK)
    store.put_snapshots({1: bigger}, unless_fenced="s0", lsn=6)  # the old chunks go with it
    assert store.get_snapshot(1) == bigger and len(_chunk_keys(store)) == 4
    store.put_snapshots({1: b"shrunk"}, unless_fenced="s0", lsn=7)
    assert store.get_snapshot(1) == b"shrunk"
    assert _keys(store) == sorted(f"{store.prefix}:{k}".encode() for k in (
        "s:1", "s:1:lsn", "s:2", "s:2:lsn", "j:s0:owner"))


def test_a_snapshot_up_to_a_chunk_stays_one_value_an_older_kairos_reads(store):
    value = os.urandom(CHUNK)
    store.put_snapshots({1: value})
    assert store.r.get(f"{store.prefix}:s:1") == value  # an older Kairos's get_snapshot
    assert _keys(store) == [f"{store.prefix}:s:1".encode()]


def test_a_one_value_snapshot_of_an_older_kairos_reads_and_is_replaced(store):
    store.r.set(f"{store.prefix}:s:1", b"older snapshot")
    assert store.get_snapshot(1) == b"older snapshot"
    big = os.urandom(2 * CHUNK + 1)
    store.put_snapshots({1: big})
    assert store.get_snapshot(1) == big
    store.r.set(f"{store.prefix}:s:1", b"after a rollback")  # the older Kairos's MSET
    assert store.get_snapshot(1) == b"after a rollback"


def test_an_older_kairos_finds_a_stand_in_its_recovery_refuses_not_none(store):
    """None would have it replay the journal from LSN 0, truncated past the snapshot."""
    store.put_snapshots({1: os.urandom(2 * CHUNK + 1)})
    stand_in = store.r.get(f"{store.prefix}:s:1")  # an older Kairos's get_snapshot
    assert stand_in == redis_snapshots.STAND_IN
    with pytest.raises(blocks.BlockCorrupt):  # as its recovery reads it: SnapshotCorrupt
        blocks.unpack(unseal(stand_in, "p1")[0])


def test_a_save_the_server_refuses_between_chunks_leaves_the_previous_snapshot(
        store, redis_server, monkeypatch):
    """The server refuses the save's third chunk (out of memory): the previous snapshot
    reads whole, and the failed save's chunks are gone (its pending generation and that one's
    key stay listed till they expire, then a save sweeps them)."""
    before = os.urandom(2 * CHUNK + 5)
    store.put_snapshots({1: before})
    kept, chunk, admin = _keys(store), redis_chunks._chunk, redis_server.client()
    limit = admin.config_get("maxmemory")["maxmemory"]

    def full_at_the_third(value, generation, n):
        if n == 2:
            admin.config_set("maxmemory", admin.info("memory")["used_memory"] // 2)
        return chunk(value, generation, n)
    monkeypatch.setattr(redis_chunks, "_chunk", full_at_the_third)
    try:
        with pytest.raises(StoreUnavailable,
                           match="writing snapshots: .* used memory > 'maxmemory'"):
            store.put_snapshots({1: os.urandom(5 * CHUNK)})
    finally:
        admin.config_set("maxmemory", limit)
    monkeypatch.undo()
    assert store.get_snapshot(1) == before
    assert {k.split(b":")[1] for k in set(_keys(store)) - set(kept)} == {b"sp", b"sa"}
    assert _chunk_keys(store) == [k for k in kept if b":sc:" in k]


def test_a_save_killed_between_chunks_leaves_the_previous_snapshot_and_is_swept(store,
                                                                              monkeypatch):
    before = os.urandom(2 * CHUNK + 5)
    store.put_snapshots({1: before})
    kept, chunk = _keys(store), redis_chunks._chunk

    def dies_at_the_third(value, generation, n):
        if n == 2:
            raise KeyboardInterrupt("killed")
        return chunk(value, generation, n)
    monkeypatch.setattr(redis_chunks, "_chunk", dies_at_the_third)
    monkeypatch.setattr(store.r, "delete", lambda *keys: None)  # killed: no clean-up either
    with pytest.raises(KeyboardInterrupt):
        store.put_snapshots({1: os.urandom(5 * CHUNK)})
    monkeypatch.undo()
    assert store.get_snapshot(1) == before
    leftovers = set(_keys(store)) - set(kept)
    assert len(leftovers) == 2 + 2  # the pending generations, its live key, the 2 chunks
    store.put_snapshots({1: b"next"})  # its key not expired yet: kept (it may be alive)
    assert leftovers <= set(_keys(store))
    (alive,) = [k for k in leftovers if b":sa:" in k]
    store.r.pexpire(alive, 1)  # STALE_S passed by the server's clock
    time.sleep(0.05)
    store.put_snapshots({1: b"later"})
    assert store.get_snapshot(1) == b"later"
    assert _keys(store) == [f"{store.prefix}:s:1".encode()]


@pytest.mark.parametrize("refused", ["fenced", "disowned", "stale"])
def test_a_refused_writers_chunks_are_never_switched_in_and_are_deleted(store, refused):
    """A shard whose journal is fenced, or another incarnation's, or whose LSN is older than
    the partition's snapshot: nothing switched in, the heir's snapshot stays whole, and the
    refused save's chunks are gone."""
    heir = os.urandom(2 * CHUNK + 3)
    store.own_journal("s0", "inc-1", claim=True)
    store.put_snapshots({1: heir}, unless_fenced="s0", lsn=9)
    kept = _keys(store)
    late, lsn = RedisStore(store.url), 10
    late.own_journal("s0", "inc-1", claim=False)
    if refused == "fenced":
        store.fence_journal("s0")
        kept = _keys(store)
    elif refused == "disowned":
        store.own_journal("s0", "inc-2", claim=True)
    else:
        lsn = 8
    with pytest.raises(JournalDisowned if refused == "disowned" else JournalFenced):
        late.put_snapshots({1: os.urandom(3 * CHUNK), 2: b"small"}, unless_fenced="s0",
                           lsn=lsn)
    assert store.get_snapshot(1) == heir and store.get_snapshot(2) is None
    assert store.snapshot_lsn(1) == ("s0", 9)
    assert [k for k in _keys(store) if b":j:s0:owner" not in k] == \
        [k for k in kept if b":j:s0:owner" not in k]


def test_an_acl_user_limited_to_kairos_commands_saves_and_reads_chunked_snapshots(
        guarded_redis, monkeypatch):  # noqa: F811 (the fixture)
    store = RedisStore(f"redis://kairos:user-secret@127.0.0.1:{guarded_redis.port}/0"
                       f"?prefix=acl:snapshots")
    monkeypatch.setattr(redis_snapshots, "SNAPSHOT_CHUNK_BYTES", 1000)
    store.own_journal("s0", "inc-1", claim=True)
    for lsn, value in enumerate((os.urandom(3500), os.urandom(2100), b"small",
                                 os.urandom(1001)), 1):
        store.put_snapshots({1: value}, unless_fenced="s0", lsn=lsn)
        assert store.get_snapshot(1) == value
    monkeypatch.setattr(redis_chunks, "STALE_S", 0.001)
    chunk = redis_chunks._chunk

    def second_fails(value: redis_chunks.Value, generation: str, n: int) -> str:
        assert n == 0
        return chunk(value, generation, n)
    monkeypatch.setattr(redis_chunks, "_chunk", second_fails)  # leaves a dead save, listed
    with pytest.raises(AssertionError):
        store.put_snapshots({1: os.urandom(2000)}, unless_fenced="s0", lsn=5)
    monkeypatch.undo()
    assert len(store.r.zrange("acl:snapshots:sp:1", 0, -1)) == 1
    time.sleep(0.05)
    store.put_snapshots({1: b"x"}, unless_fenced="s0", lsn=6)  # and sweeps it
    assert store.r.zrange("acl:snapshots:sp:1", 0, -1) == []
    assert store.get_snapshot(1) == b"x"


def test_a_chunk_gone_is_corrupt_and_says_what_to_remove(store):
    store.put_snapshots({1: os.urandom(2 * CHUNK + 1)})
    store.r.delete(_chunk_keys(store)[1])
    with pytest.raises(StoreCorrupt, match=rf"chunk 1 of the 3 .* missing.*`DEL "
                                           rf"{store.prefix}:s:1 {store.prefix}:sh:1`"):
        store.get_snapshot(1)
    store.r.delete(f"{store.prefix}:s:1", f"{store.prefix}:sh:1")  # the operator's way out
    assert store.get_snapshot(1) is None
