"""Partitions' snapshots past a chunk on Redis (redis_snapshots.py): written in chunks and
switched in whole under the journal's fence, read back whole, a save that fails or dies midway
leaving the previous snapshot, an older Kairos's one-value snapshot still read."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import pytest
import redis

from kairos.cluster.storage import blocks, redis_chunks, redis_snapshots
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.storage.sealed import unseal
from kairos.cluster.storage.store import (JournalDisowned, JournalFenced, StoreCorrupt,
                                          StoreUnavailable)

from tests.support.dead_saves import full_of_a_dead_save, leave_a_dead_save
from tests.unit.storage.test_redis_chunks import LEAST, least_chunk
from tests.unit.storage.test_store import guarded_redis  # noqa: F401 (a fixture)

CHUNK = 1 << 19  # 512 KiB: the server below takes no value past 1 MiB


@pytest.fixture
def store(redis_server, request, monkeypatch):
    """A store whose server refuses values past 1 MiB (its least proto-max-bulk-len), as
    512 MiB refuses a partition's largest snapshots, with snapshots past CHUNK (as past
    ONE_VALUE_BYTES) in chunks of CHUNK."""
    redis.Redis.from_url(redis_server.url).config_set("proto-max-bulk-len", 1 << 20)
    small_values(monkeypatch, CHUNK, CHUNK)
    with least_chunk():
        yield RedisStore(f"{redis_server.url}?prefix=sn{abs(hash(request.node.name))}")


def small_values(monkeypatch, one_value: int, chunk: int) -> None:
    """Snapshots past `one_value` bytes in chunks of `chunk` (192 MiB and 16 MiB)."""
    monkeypatch.setattr(redis_chunks, "ONE_VALUE_BYTES", one_value)
    monkeypatch.setattr(redis_snapshots, "SNAPSHOT_CHUNK_BYTES", chunk)


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
    small_values(monkeypatch, 1000, 1000)
    monkeypatch.setattr(redis_chunks, "LEAST_CHUNK_BYTES", LEAST)
    store.own_journal("s0", "inc-1", claim=True)
    for lsn, value in enumerate((os.urandom(3500), os.urandom(2100), b"small",
                                 os.urandom(1001)), 1):
        store.put_snapshots({1: value}, unless_fenced="s0", lsn=lsn)
        assert store.get_snapshot(1) == value
    leave_a_dead_save(lambda: store.put_snapshots({1: os.urandom(2000)}, unless_fenced="s0",
                                                  lsn=5))
    assert len(store.r.zrange("acl:snapshots:sp:1", 0, -1)) == 1
    store.put_snapshots({1: b"x"}, unless_fenced="s0", lsn=6)  # and sweeps it
    assert store.r.zrange("acl:snapshots:sp:1", 0, -1) == []
    assert store.get_snapshot(1) == b"x"


def test_a_chunk_gone_is_corrupt_and_names_every_key_to_remove(store):
    """The DEL it names takes the stand-in, the header and every chunk: none left for ever."""
    store.put_snapshots({1: os.urandom(8 * CHUNK + 1)})
    store.r.delete(_chunk_keys(store)[1])
    with pytest.raises(StoreCorrupt, match=r"chunk \d of the 9 .* missing") as caught:
        store.get_snapshot(1)
    removal = re.search(r"`DEL ([^`]*)`", str(caught.value)).group(1).split()
    assert removal[:2] == [f"{store.prefix}:s:1", f"{store.prefix}:sh:1"]
    assert len(removal) == 2 + 9 and set(_chunk_keys(store)) < {k.encode() for k in removal}
    store.r.delete(*removal)  # the operator's way out
    assert store.get_snapshot(1) is None and _keys(store) == []


def test_the_readmes_del_of_the_snapshot_removes_one_in_chunks_and_its_chunks_go_later(store):
    """README, "Corruption": `DEL <prefix>:s:<N>` (a snapshot whose seal fails in recovery
    reads back whole here): it then reads as none, and the next save takes its chunks."""
    store.put_snapshots({1: os.urandom(3 * CHUNK)})
    store.r.delete(f"{store.prefix}:s:1")
    assert store.get_snapshot(1) is None
    store.put_snapshots({1: b"rebuilt"})
    assert store.get_snapshot(1) == b"rebuilt"
    assert _keys(store) == [f"{store.prefix}:s:1".encode()]


def test_a_snapshot_up_to_one_value_bytes_stays_one_value_past_a_chunk(store, monkeypatch):
    """An older Kairos, after a rollback, reads any snapshot it could have written itself:
    only one past ONE_VALUE_BYTES (192 MiB) is in chunks (of KAIROS_REDIS_SNAPSHOT_CHUNK)."""
    small_values(monkeypatch, 2 * CHUNK, CHUNK // 2)
    kept, chunked = os.urandom(2 * CHUNK), os.urandom(2 * CHUNK + 1)
    store.put_snapshots({1: kept, 2: chunked})
    assert store.r.get(f"{store.prefix}:s:1") == kept  # an older Kairos's get_snapshot
    assert store.get_snapshot(2) == chunked
    assert len(_chunk_keys(store)) == 5  # of CHUNK // 2


def test_a_sweep_keeps_the_chunks_of_a_save_switched_in_after_it_read_them_pending(
        store, monkeypatch):
    """Two owners of a partition at once (handoff.py: an adopt whose call timed out still runs
    on B while A, thawed, checkpoints): A stages; B's sweep reads A's generation pending, its
    key gone (A's switch deleted it with the generation's listing): B must keep A's chunks,
    which A's header names."""
    store.own_journal("s0", "a", claim=True)
    store.own_journal("s1", "b", claim=True)
    a_store = RedisStore(store.url)
    a_store.own_journal("s0", "a", claim=False)
    guarded, sweep = redis_snapshots.guarded, redis_chunks.sweep
    staged, may_switch, read = threading.Event(), threading.Event(), []
    a_blob, b_blob = os.urandom(3 * CHUNK), os.urandom(3 * CHUNK)

    def a_switches_when_told(*args, **kwargs):
        if threading.current_thread().name == "A":
            staged.set()
            may_switch.wait(10)
        return guarded(*args, **kwargs)

    def b_sweeps_after_a_switched(client, value, members):
        if threading.current_thread().name == "A" or not members:
            return sweep(client, value, members)
        may_switch.set()
        a.join(10)
        sweep(client, value, members)
        read.append(store.get_snapshot(1))  # before B's own switch replaces it
    monkeypatch.setattr(redis_snapshots, "guarded", a_switches_when_told)
    monkeypatch.setattr(redis_chunks, "sweep", b_sweeps_after_a_switched)
    a = threading.Thread(target=a_store.put_snapshots, args=({1: a_blob},),
                         kwargs={"unless_fenced": "s0", "lsn": 1}, name="A")
    a.start()
    assert staged.wait(10)
    store.put_snapshots({1: b_blob}, unless_fenced="s1", lsn=1)
    assert read == [a_blob]
    assert store.get_snapshot(1) == b_blob and len(_chunk_keys(store)) == 3


def test_a_switch_the_server_refuses_deletes_its_chunks(store, redis_server, monkeypatch):
    """Out of memory at the switch (nothing landed): the save's chunks, listing and key go,
    and so do those a later value of the same write failed to stage after an earlier's."""
    before = os.urandom(2 * CHUNK + 5)
    store.put_snapshots({1: before})
    kept, admin, guarded = _keys(store), redis_server.client(), redis_snapshots.guarded
    limit = admin.config_get("maxmemory")["maxmemory"]

    def full_at_the_switch(*args, **kwargs):
        admin.config_set("maxmemory", admin.info("memory")["used_memory"] // 2)
        return guarded(*args, **kwargs)
    monkeypatch.setattr(redis_snapshots, "guarded", full_at_the_switch)
    try:
        with pytest.raises(StoreUnavailable, match="used memory > 'maxmemory'"):
            store.put_snapshots({1: os.urandom(4 * CHUNK)})
    finally:
        admin.config_set("maxmemory", limit)
    monkeypatch.setattr(redis_snapshots, "guarded", guarded)
    assert store.get_snapshot(1) == before and _keys(store) == kept
    chunk, failed = redis_chunks._chunk, []

    def the_seconds_fails(value, generation, n):  # once: not the clean-up's
        if value.name == "2" and n == 1 and not failed:
            failed.append(n)
            raise redis.exceptions.ResponseError("OOM command not allowed")
        return chunk(value, generation, n)
    monkeypatch.setattr(redis_chunks, "_chunk", the_seconds_fails)
    with pytest.raises(StoreUnavailable, match="OOM"):
        store.put_snapshots({1: os.urandom(3 * CHUNK), 2: os.urandom(3 * CHUNK)})
    assert store.get_snapshot(1) == before
    assert [k for k in _keys(store) if k.split(b":")[2] != b"2"] == kept  # 2's: stage's
    assert _chunk_keys(store) == [k for k in kept if b":sc:" in k]


def test_a_dead_saves_chunks_are_swept_before_a_save_that_is_refused(store, monkeypatch):
    """The sweep comes first: a partition whose saves keep failing (a fenced writer here; a
    server out of memory, which a dead save's chunks may fill) still loses its dead ones."""
    store.own_journal("s0", "inc-1", claim=True)
    heir = os.urandom(2 * CHUNK + 5)
    store.put_snapshots({1: heir}, unless_fenced="s0", lsn=1)
    kept, chunk = _keys(store), redis_chunks._chunk

    def dies_at_the_second(value, generation, n):
        if n == 1:
            raise KeyboardInterrupt("killed")
        return chunk(value, generation, n)
    with monkeypatch.context() as killed, pytest.raises(KeyboardInterrupt):
        killed.setattr(redis_chunks, "_chunk", dies_at_the_second)
        killed.setattr(store.r, "delete", lambda *keys: None)  # no clean-up either
        store.put_snapshots({1: os.urandom(3 * CHUNK)}, unless_fenced="s0", lsn=2)
    (alive,) = [k for k in _keys(store) if b":sa:" in k]
    store.r.pexpire(alive, 1)  # STALE_S passed by the server's clock
    time.sleep(0.05)
    store.fence_journal("s0")
    with pytest.raises(JournalFenced):
        store.put_snapshots({1: os.urandom(3 * CHUNK)}, unless_fenced="s0", lsn=3)
    assert store.get_snapshot(1) == heir
    assert _keys(store) == sorted([*kept, f"{store.prefix}:j:s0:fenced".encode()])


# what settings.py says of a chunk out of the bounds redis_chunks.py reads headers by
BOUNDS = (f"KAIROS_REDIS_SNAPSHOT_CHUNK must be >= {redis_chunks.LEAST_CHUNK_BYTES} and <= "
          f"{redis_chunks.MOST_CHUNK_BYTES}")


@pytest.mark.parametrize("chunk, said", [
    (str(redis_chunks.LEAST_CHUNK_BYTES - 1), BOUNDS),
    (str(redis_chunks.MOST_CHUNK_BYTES + 1), BOUNDS),
    ("16MiB", "KAIROS_REDIS_SNAPSHOT_CHUNK must be an integer")])
def test_a_snapshot_chunk_out_of_bounds_is_refused_at_start(chunk, said):
    """settings.py's bounds are those the header check reads chunks by (redis_chunks.py)."""
    done = subprocess.run([sys.executable, "-c", "import kairos.cluster.settings"],
                          env={**os.environ, "KAIROS_REDIS_SNAPSHOT_CHUNK": chunk},
                          capture_output=True, text=True)
    assert done.returncode != 0 and said in done.stderr


def test_a_damaged_header_is_corrupt_naming_its_del_and_a_save_replaces_it(store):
    """A header that is not msgpack [generation, length, chunks, SHA-256]: StoreCorrupt naming
    the DEL that lets the partition recover without it, not a ValueError; a save, in chunks or
    one value, sets it over."""
    store.put_snapshots({1: os.urandom(3 * CHUNK)})
    for damaged in (b"\x93\xa1x", b"\xc1", b"\x94\x01\x02\x03\x04"):  # 3 fields; not msgpack
        store.r.set(f"{store.prefix}:sh:1", damaged)
        with pytest.raises(StoreCorrupt, match=r"header .*:sh:1 is damaged.*`DEL .*:s:1 "
                                               r".*:sh:1`") as corrupt:
            store.get_snapshot(1)
        # its recovery, refused, saves nothing over it: the DEL is the way out, no save
        assert "recovery is refused" in str(corrupt.value)
        assert "a save replaces it" not in str(corrupt.value)
    for new in (os.urandom(3 * CHUNK), b"small"):
        store.r.set(f"{store.prefix}:sh:1", b"\xc1")
        store.r.set(f"{store.prefix}:s:1", redis_snapshots.STAND_IN)
        store.put_snapshots({1: new})
        assert store.get_snapshot(1) == new


def test_a_value_past_a_write_goes_alone_below_a_replicas_output_buffer_limit(store,
                                                                            monkeypatch):
    """put_snapshots ends a write once it reaches PIPELINE_BYTES; one value past it is a write
    of its own: after the small ones of a write, one up to ONE_VALUE_BYTES made a write past
    a replica's default hard limit (client-output-buffer-limit replica 256mb), which drops its
    link (a full resync each time). No write of it reaches that limit."""
    from kairos.cluster.storage import redis_store
    writes, put = [], redis_snapshots.put
    monkeypatch.setattr(redis_store, "PIPELINE_BYTES", 1000)
    monkeypatch.setattr(redis_snapshots, "put", lambda client, prefix, chunk, *args: (
        writes.append([p for p, _ in chunk]), put(client, prefix, chunk, *args)))
    sizes = {1: 600, 2: 300, 3: 5000, 4: 200, 5: 900, 6: 1000}
    snapshots = {p: os.urandom(n) for p, n in sizes.items()}
    store.put_snapshots(snapshots)
    assert writes == [[1, 2], [3], [4, 5], [6]]
    assert {p: store.get_snapshot(p) for p in sizes} == snapshots
    monkeypatch.undo()  # the values Kairos runs with: a quarter of the limit left for the rest
    assert max(redis_chunks.ONE_VALUE_BYTES, 2 * redis_store.PIPELINE_BYTES) <= 192 << 20


def test_a_write_of_plain_snapshots_is_two_exchanges_with_the_server(store, monkeypatch):
    """Its reads (the journal's fence and owner, the `:lsn` keys, the headers and the pending
    sets, for a dead save's chunks) in one, its MULTI/EXEC in the other: the pending sets'
    own read cost a third."""
    store.own_journal("s0", "inc-1", claim=True)
    store.put_snapshots({1: b"a", 2: b"b"}, unless_fenced="s0", lsn=1)  # connected
    sent, send = [], redis.connection.Connection.send_packed_command
    monkeypatch.setattr(redis.connection.Connection, "send_packed_command",
                        lambda self, *args, **kwargs: (sent.append(args[0]),
                                                       send(self, *args, **kwargs))[1])
    store.put_snapshots({1: b"c", 2: b"d"}, unless_fenced="s0", lsn=2)
    assert len(sent) == 2
    assert store.get_snapshot(1) == b"c" and store.get_snapshot(2) == b"d"


def test_a_full_server_sweeps_a_dead_saves_chunks_then_takes_a_write(store, redis_server):
    """Redis refuses any command queued in a MULTI while over maxmemory: the sweep claims a
    dead generation by a ZREM of its own, then DELs its chunks, so a server the chunks of a
    killed save filled frees them; a plain write refused there sweeps, and the next is taken."""
    store.put_snapshots({1: b"small before"})
    value = redis_snapshots._value(store.prefix, 1)
    with full_of_a_dead_save(store.r, redis_server.client(), value, CHUNK):
        with pytest.raises(StoreUnavailable, match="maxmemory"):
            store.put_snapshots({1: b"small after"})
        assert not [k for k in _keys(store) if b":sc:" in k]
        store.put_snapshots({1: b"small after"})
        redis_chunks.sweep_all(store.r, [value])  # nothing listed is left to sweep
    assert store.get_snapshot(1) == b"small after" and store.r.zrange(value.key("p"), 0, -1) == []
