"""Stores: one contract in memory, in a directory and in a real Redis; what a directory or a
Redis holds outlives the shard that wrote it."""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from kairos.cluster.storage import redis_journal
from kairos.cluster.storage.directory_store import STALE_TMP_S, DirectoryStore
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.storage.frames import pack_batch
from kairos.cluster.storage.store import (JournalFenced, StoreCorrupt, StoreInUse,
                                          StoreUnavailable)

from kairos.cluster.storage.redis_server import RedisServer

from tests.unit.storage.conftest import TLS_PASSWORD


@pytest.fixture(params=["memory", "directory", "redis", "redis-tls"])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryStore()
    if request.param == "directory":
        return DirectoryStore(tmp_path)
    prefix = f"prefix=t{abs(hash(request.node.name))}"
    if request.param == "redis":
        return open_store(f"{request.getfixturevalue('redis_server').url}?{prefix}")
    server = request.getfixturevalue("redis_tls_server")
    return open_store(server.url.replace("rediss://", f"rediss://:{TLS_PASSWORD}@") + "&" + prefix)


def test_homes_snapshots_and_meta(store):
    store.put(3, "ana", b"a1")
    store.put(3, "ana", b"a2")  # a later passivation replaces the home
    store.put(3, "bob", b"b")
    store.put(4, "eve", b"e")
    assert store.count([3, 4]) == 3 and store.count([3]) == 2
    assert store.get(3, "ana") == b"a2" and store.get(3, "ana") == b"a2"  # reading keeps it
    # recovery reads a snapshot's homes in batches (one HMGET on Redis)
    assert store.get_many(3, ["bob", "eve", "ana"]) == [b"b", None, b"a2"]
    assert store.get_many(3, []) == []
    store.delete(3, "ana")
    store.delete(3, "ana")
    assert store.get(3, "ana") is None
    assert store.take_partition(3) == {"bob": b"b"} and store.take_partition(3) == {}
    assert store.count([3, 4]) == 1
    store.put_snapshots({1: b"s1", 2: b"s2"})
    store.put_snapshots({1: b"s1'"})
    assert (store.get_snapshot(1), store.get_snapshot(2), store.get_snapshot(9)) == \
        (b"s1'", b"s2", None)
    store.put_meta("controller", b"m")
    assert store.get_meta("controller") == b"m" and store.get_meta("nothing") is None


def test_journals_append_replay_truncate_and_compact(store):
    j = store.journal("kairos-shard-0001")
    assert j.append([("event", 1, "ana", 1), ("event", 2, "bob", 2)]) == 2
    assert j.append([("event", 1, "ana", 3)]) == 3
    assert j.append([("forget", 2, "bob")]) == 4
    assert [lsn for lsn, _ in j.replay()] == [1, 2, 3, 4]
    assert [r[3] for _, r in j.replay(1) if r[0] == "event"] == [2, 3]
    assert j.compact(lambda r: "bob" in r) == 2
    assert [(lsn, r[2]) for lsn, r in j.replay()] == [(1, "ana"), (3, "ana")]
    j.truncate(1)
    assert [lsn for lsn, _ in j.replay()][-1] == 3
    j.close()
    again = store.journal("kairos-shard-0001")  # reopened: LSNs go on, none reused
    assert again.last_lsn == 4 and again.append([("event", 1, "ana", 5)]) == 5
    store.drop_journal("kairos-shard-0001")
    assert list(store.journal("kairos-shard-0001").replay()) == []


def test_a_fenced_journals_shard_writes_no_snapshot_over_its_heirs(store, monkeypatch):
    """Snapshots written `unless_fenced` by the replaced shard's name: refused once the fence
    is up, also when it comes between the store's check and its write (Redis: under WATCH);
    others' writes go on."""
    store.put_snapshots({1: b"old"}, unless_fenced="kairos-shard-0011")
    store.fence_journal("kairos-shard-0011")
    store.put_snapshots({1: b"heir"}, unless_fenced="kairos-shard-0012")
    with pytest.raises(JournalFenced, match="kairos-shard-0011 is fenced"):
        store.put_snapshots({1: b"late"}, unless_fenced="kairos-shard-0011")
    assert store.get_snapshot(1) == b"heir"
    if hasattr(store, "r"):
        _fenced_while_writing(store, monkeypatch, "kairos-shard-0013",
                              lambda: store.put_snapshots({1: b"racing"},
                                                          unless_fenced="kairos-shard-0013"))
        assert store.get_snapshot(1) == b"heir"


def _fenced_while_writing(store, monkeypatch, journal: str, write) -> None:
    """Redis: `journal` is fenced by another connection after the store's WATCHed read of its
    fence and before its EXEC; `write` (unless_fenced=journal) must raise JournalFenced."""
    real_exchange = redis_journal._exchange

    def fenced_meanwhile(connection, *commands):
        replies = real_exchange(connection, *commands)
        if commands[0][0] == "WATCH" and commands[0][1].endswith(f"{journal}:fenced"):
            store.fence_journal(journal)
        return replies
    monkeypatch.setattr(redis_journal, "_exchange", fenced_meanwhile)
    with pytest.raises(JournalFenced):
        write()
    monkeypatch.undo()


def test_a_fenced_journals_shard_writes_and_deletes_no_home_over_its_heirs(store, monkeypatch):
    """Homes written or deleted `unless_fenced`, as snapshots: refused once the fence is up,
    also when it comes between the store's check and its write (Redis: under WATCH)."""
    store.put(1, "ana", b"old", unless_fenced="kairos-shard-0021")
    store.put(1, "bob", b"old", unless_fenced="kairos-shard-0021")
    store.fence_journal("kairos-shard-0021")
    store.put(1, "ana", b"heir", unless_fenced="kairos-shard-0022")
    store.put(1, "bob", b"heir", unless_fenced="kairos-shard-0022")
    with pytest.raises(JournalFenced, match="kairos-shard-0021 is fenced"):
        store.put(1, "ana", b"late", unless_fenced="kairos-shard-0021")
    with pytest.raises(JournalFenced, match="kairos-shard-0021 is fenced"):
        store.delete(1, "bob", unless_fenced="kairos-shard-0021")
    assert (store.get(1, "ana"), store.get(1, "bob")) == (b"heir", b"heir")
    store.delete(1, "bob", unless_fenced="kairos-shard-0022")
    assert store.get(1, "bob") is None
    if hasattr(store, "r"):
        _fenced_while_writing(store, monkeypatch, "kairos-shard-0023",
                              lambda: store.put(1, "ana", b"racing",
                                                unless_fenced="kairos-shard-0023"))
        assert store.get(1, "ana") == b"heir"


def test_homes_are_written_and_deleted_in_batches_none_once_fenced(store, monkeypatch):
    """put_many and delete_many (a passivation's homes, a tick's deletes) do what put and delete
    do for each home, a Redis store in several transactions here; a batch of a fenced
    journal's shard writes and deletes nothing."""
    from kairos.cluster.storage import redis_store
    monkeypatch.setattr(redis_store, "PIPELINE_BYTES", 100)
    homes = [(p, f"c{i}", bytes([i]) * 40) for i, p in enumerate([1, 2, 1, 3, 2])]
    store.put_many(iter(homes), unless_fenced="kairos-shard-0031")
    assert [store.get(p, c) for p, c, _ in homes] == [blob for _, _, blob in homes]
    assert store.count([1, 2, 3]) == 5
    store.delete_many(iter([(1, "c0"), (2, "c4"), (2, "nobody")]),
                      unless_fenced="kairos-shard-0031")
    assert [store.get(p, c) for p, c, _ in homes] == [None, homes[1][2], homes[2][2],
                                                      homes[3][2], None]
    store.put_many([(1, "c0", b"again")])  # no fence named: a handoff's
    store.fence_journal("kairos-shard-0031")
    with pytest.raises(JournalFenced, match="kairos-shard-0031 is fenced"):
        store.put_many(iter([(1, "c0", b"late"), (4, "c9", b"late")]),
                       unless_fenced="kairos-shard-0031")
    with pytest.raises(JournalFenced, match="kairos-shard-0031 is fenced"):
        store.delete_many([(1, "c0"), (1, "c2")], unless_fenced="kairos-shard-0031")
    assert (store.get(1, "c0"), store.get(1, "c2"), store.get(4, "c9")) == \
        (b"again", homes[2][2], None)
    store.delete_many([(1, "c0"), (1, "c2")], unless_fenced="kairos-shard-0032")  # the heir's
    assert store.count([1, 2, 3, 4]) == 2


def test_a_fenced_journal_acknowledges_nothing_more_and_stays_fenced(store):
    """The controller replaced a shard that still runs: its heir fences the journal, then
    reads it. What the writer acknowledged before is read; every append after is refused
    (a StoreUnavailable: the round answers UNAVAILABLE), reopening it for writing (a rebuild)
    is refused, and dropping it keeps the fence. Other journals are not touched."""
    old = store.journal("kairos-shard-0001")
    assert old.append([("event", 1, "ana", 1), ("event", 2, "bob", 2)]) == 2
    old.append([("event", 1, "ana", 3)], sync=False)
    old.sync()  # acknowledged once this returns, as a shard's host does
    store.fence_journal("kairos-shard-0001")
    store.fence_journal("kairos-shard-0001")  # a replacement started again fences again
    assert [lsn for lsn, _ in store.read_journal("kairos-shard-0001").replay()] == [1, 2, 3]
    for _ in range(2):
        with pytest.raises(JournalFenced, match="kairos-shard-0001 is fenced"):
            old.append([("event", 1, "ana", 4)])  # or written and synced, then refused
    assert issubclass(JournalFenced, StoreUnavailable)
    with pytest.raises(JournalFenced):
        old.check_fence()
    with pytest.raises(JournalFenced):
        store.journal("kairos-shard-0001")  # the old shard rebuilding itself
    store.drop_journal("kairos-shard-0001")  # the heir snapshotted what it read
    assert list(store.read_journal("kairos-shard-0001").replay()) == []
    with pytest.raises(JournalFenced):
        store.journal("kairos-shard-0001")
    with pytest.raises(JournalFenced):
        old.append([("event", 1, "ana", 5)])
    other = store.journal("kairos-shard-0002")  # e.g. the heir's own
    assert other.append([("event", 1, "ana", 1)]) == 1
    other.check_fence()


def test_a_directory_store_outlives_its_process_and_ignores_half_writes(tmp_path):
    DirectoryStore(tmp_path).put(7, "ana", b"blob")
    home = next(tmp_path.glob("customers/p7/*.blk"))
    leftover = home.with_name(home.name + ".123.0.tmp")
    leftover.write_bytes(b"half")  # a crash before the rename, long ago
    os.utime(leftover, (time.time() - STALE_TMP_S - 1,) * 2)
    again = DirectoryStore(tmp_path)
    assert again.count([7]) == 1 and again.get(7, "ana") == b"blob"
    assert not list(tmp_path.glob("customers/p7/*.tmp"))


def test_a_directory_stores_batch_of_homes_lets_an_heirs_fence_in_between_chunks(
        tmp_path, monkeypatch):
    """A long passivation batch holds the fence lock a chunk at a time: an heir's fence
    (which waits for the lock) comes in between two chunks and stops the batch there, the
    homes after it not written over the heir's."""
    from kairos.cluster.storage import directory_store, journal
    monkeypatch.setattr(directory_store, "FENCE_HOLD_HOMES", 2)
    monkeypatch.setattr(directory_store, "FENCE_HOLD_S", 3600.0)  # chunks by count alone
    store, heir = DirectoryStore(tmp_path), DirectoryStore(tmp_path)
    lock = tmp_path / "journals" / "kairos-shard-0041" / journal.FENCE_LOCK
    fenced_at = []

    def homes():
        for i in range(6):
            if i == 2 and _unlocked(lock):  # the second chunk's first home: between chunks
                heir.fence_journal("kairos-shard-0041")
                fenced_at.append(i)
            yield (1, f"c{i}", b"old")
    with pytest.raises(JournalFenced, match="kairos-shard-0041 is fenced"):
        store.put_many(homes(), unless_fenced="kairos-shard-0041")
    assert fenced_at == [2]
    assert [store.get(1, f"c{i}") for i in range(6)] == [b"old", b"old"] + [None] * 4


def _unlocked(path: Path) -> bool:
    """Whether nobody holds a lock on `path` (an exclusive lock would be granted now)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # and with it the lock


def test_a_directory_store_syncs_each_folder_it_makes_into_its_parent(tmp_path, monkeypatch):
    """A folder made for a file (the store's own, a partition's homes, a shard's journal) is
    synced into its parent, which then lists it: else a crash could lose the folder and, with
    it, files fsynced and acknowledged in it."""
    from kairos.cluster.storage import directory_store, journal, private_paths
    synced = []

    def fsync_directory(directory):
        synced.append((Path(directory), set(os.listdir(directory))))
        real(directory)
    real = journal.fsync_directory
    monkeypatch.setattr(journal, "fsync_directory", fsync_directory)
    monkeypatch.setattr(directory_store, "fsync_directory", fsync_directory)
    monkeypatch.setattr(private_paths, "fsync_directory", fsync_directory)  # make_private_dir
    root = tmp_path / "store"
    store = DirectoryStore(root)
    assert (tmp_path, {"store"}) in synced
    assert (root, {"customers", "snapshots", "journals", "meta", "decisions"}) in synced
    synced.clear()
    store.put(7, "ana", b"blob")
    assert any(d == root / "customers" and "p7" in names for d, names in synced)
    store.journal("kairos-shard-0001").append([("event", 7, "ana", 1)])
    assert any(d == root / "journals" and "kairos-shard-0001" in names for d, names in synced)
    synced.clear()
    store.put(7, "bob", b"blob")  # the folder is there: only the file's name is synced
    assert [d for d, _ in synced] == [root / "customers" / "p7"]


def test_a_directory_store_syncs_a_partition_folder_it_did_not_sync_when_it_was_made(
        tmp_path, monkeypatch):
    """A home's partition folder is synced into customers/ by the first write that needs it,
    whoever made the folder: the write that made it may have failed its sync (its retry finds
    the folder there), or another process made it and died before syncing."""
    from kairos.cluster.storage import directory_store
    synced, failing = [], [True]

    def fsync_directory(directory):
        if failing.pop() if failing else False:
            raise OSError(5, "Input/output error")
        synced.append(Path(directory))
        real(directory)
    real = directory_store.fsync_directory
    monkeypatch.setattr(directory_store, "fsync_directory", fsync_directory)
    store = DirectoryStore(tmp_path)
    with pytest.raises(StoreUnavailable, match="Input/output error"):
        store.put(7, "ana", b"blob")
    store.put(7, "ana", b"blob")
    assert synced[0] == tmp_path / "customers"
    os.mkdir(tmp_path / "customers" / "p8", 0o700)  # by a process that died then
    synced.clear()
    store.put(8, "bob", b"blob")
    assert synced == [tmp_path / "customers", tmp_path / "customers" / "p8"]
    synced.clear()
    store.put(8, "eve", b"blob")  # synced once: only the file's name now
    assert synced == [tmp_path / "customers" / "p8"]


def test_an_unreachable_redis_is_store_unavailable(tmp_path):
    server = RedisServer(tmp_path)  # never started: nothing listens on its port
    store = open_store(server.url)
    with pytest.raises(StoreUnavailable, match="redis: writing customers"):
        store.put(1, "ana", b"x")
    with pytest.raises(StoreUnavailable, match="redis: opening a journal"):
        store.journal("kairos-shard-0000")


def test_open_store_understands_its_urls(tmp_path):
    assert isinstance(open_store("memory"), MemoryStore)
    assert isinstance(open_store(str(tmp_path)), DirectoryStore)
    assert isinstance(open_store(f"file://{tmp_path}"), DirectoryStore)
    # lazy: no connection
    assert isinstance(open_store("redis://127.0.0.1:1/0?prefix=k"), RedisStore)
    with pytest.raises(ValueError, match="unknown store 'mongodb://x'"):
        open_store("mongodb://x")


# What Kairos runs on Redis: an ACL user limited to these commands and its prefix's keys
# works (README: "Redis with AUTH and ACL"); no CONFIG, no admin commands. Every command the
# store sends (redis_store.py, redis_journal.py, and redis-py's SELECT for a db other than 0).
KAIROS_COMMANDS = ("get set mset del incrby decrby hset hget hmget hdel hgetall hlen sadd srem "
                   "smembers zadd zrem zrange zrangebyscore zremrangebyscore zcount zcard zscan "
                   "multi exec watch unwatch select")


@pytest.fixture(scope="module")
def guarded_redis(tmp_path_factory):
    rules = f"on >user-secret ~acl:* -@all {' '.join('+' + c for c in KAIROS_COMMANDS.split())}"
    server = RedisServer(tmp_path_factory.mktemp("guarded"), password="admin-secret",
                         users={"kairos": rules}).start()
    yield server
    server.stop()


def test_redis_with_auth_and_an_acl_user_limited_to_kairos_commands_runs_the_store(
        guarded_redis, caplog, monkeypatch):
    url = f"redis://kairos:user-secret@127.0.0.1:{guarded_redis.port}/0?prefix=acl"
    test_homes_snapshots_and_meta(open_store(url))
    test_homes_snapshots_and_meta(open_store(url.replace("/0?", "/1?")))  # SELECT
    test_homes_are_written_and_deleted_in_batches_none_once_fenced(open_store(f"{url}:batches"),
                                                                   monkeypatch)
    monkeypatch.undo()
    with caplog.at_level("WARNING", "kairos.store"):
        test_journals_append_replay_truncate_and_compact(open_store(url))
        test_a_fenced_journal_acknowledges_nothing_more_and_stays_fenced(open_store(url))
        test_a_fenced_journals_shard_writes_no_snapshot_over_its_heirs(open_store(url),
                                                                       monkeypatch)
        test_a_fenced_journals_shard_writes_and_deletes_no_home_over_its_heirs(
            open_store(url), monkeypatch)
    assert "refused CONFIG GET" in caplog.text and "user-secret" not in caplog.text
    for refused in (f"redis://127.0.0.1:{guarded_redis.port}/0?prefix=acl",  # no password
                    f"redis://kairos:wrong@127.0.0.1:{guarded_redis.port}/0?prefix=acl",
                    f"redis://kairos:user-secret@127.0.0.1:{guarded_redis.port}/0"):  # other keys
        with pytest.raises(StoreUnavailable, match="redis: writing customers"):
            open_store(refused).put(1, "ana", b"x")


def test_an_acl_user_limited_to_kairos_commands_keeps_decision_logs_and_claims_the_store(
        guarded_redis, monkeypatch):
    """The rest of what the store sends under the same ACL user: the decision logs (append,
    read, list, trim, an orphan's removal, ForgetCustomer's erasure), a replay past a batch an
    operator quarantined, and the store's claim (claimed, renewed, refused, released)."""
    from tests.unit.storage import test_decision_logs as logs

    def acl_store(prefix: str) -> RedisStore:
        return open_store(f"redis://kairos:user-secret@127.0.0.1:{guarded_redis.port}/0"
                          f"?prefix=acl:{prefix}")
    logs.test_append_read_erase_and_names(acl_store("names"))
    logs.test_trim_drops_by_age_then_by_size(acl_store("trim"), monkeypatch)
    logs.test_an_orphan_log_trimmed_empty_is_removed(acl_store("orphan"))
    j = acl_store("quarantine").journal("s0", "os")
    for k in (1, 2, 3):
        j.append([("event", 1, "ana", k)])
    guarded_redis.client().eval(QUARANTINE, 1, j.key, 2)  # the operator's, as the admin
    assert [lsn for lsn, _ in acl_store("quarantine").read_journal("s0").replay()] == [1, 3]
    ours, theirs = acl_store("owner"), acl_store("owner")
    ours.claim("ours", "this cluster")
    ours.claim("ours", "this cluster")  # renewed
    with pytest.raises(StoreInUse, match="its controller: this cluster"):
        theirs.claim("theirs", "another cluster")
    theirs.release("theirs")  # not its claim to give up
    ours.release("ours")
    theirs.claim("theirs", "another cluster")


def test_redis_compaction_reads_the_journal_in_pages(redis_server, monkeypatch):
    """A long journal is compacted page by page, never in one reply that could outlast the
    socket timeout (a shard's rebuild then looped)."""
    from kairos.cluster.storage import redis_journal
    monkeypatch.setattr(redis_journal, "REPLAY_PAGE", 50)
    store = open_store(f"{redis_server.url}?prefix=pages")
    j = store.journal("s0", "os")
    for b in range(600):
        j.append([("event", 1, f"c{b % 7}", b), ("event", 1, "bob", b)])
    replies = []
    real = j.r.execute_command

    def counted(*args, **kwargs):
        reply = real(*args, **kwargs)
        if isinstance(reply, list):
            replies.append(len(reply))
        return reply

    monkeypatch.setattr(j.r, "execute_command", counted)
    assert j.compact(lambda r: r[2] == "bob") == 600
    assert replies and max(replies) <= 50
    monkeypatch.undo()
    kept = list(j.replay())
    assert len(kept) == 600 and {r[2] for _, r in kept} == {f"c{i}" for i in range(7)}
    assert [lsn for lsn, _ in kept] == list(range(1, 1201, 2))


def test_a_redis_journal_takes_back_its_last_batch(redis_server):
    j = open_store(f"{redis_server.url}?prefix=retract").journal("s0", "fsync")
    j.append([("event", 1, "ana", 1)])
    j.append([("event", 1, "ana", 2), ("event", 1, "bob", 3)])
    assert j.retract(1) and j.last_lsn == 1
    again = open_store(f"{redis_server.url}?prefix=retract").journal("s0", "fsync")
    assert again.last_lsn == 1 and [lsn for lsn, _ in again.replay()] == [1]
    assert again.append([("event", 1, "ana", 2)]) == 2


def test_a_redis_journal_appends_nothing_past_writes_the_server_lost(redis_server):
    """The server loses its last acknowledged batch (a crash under appendfsync everysec, a
    failover to a lagging replica) and redis-py reconnects to it without a word: the writer
    appends nothing past the gap (StoreUnavailable), and a writer opened again (the shard's
    rebuild) goes on from what the server holds, which replays whole."""
    store = open_store(f"{redis_server.url}?prefix=rollback")
    j = store.journal("s0", "os")
    j.append([("event", 1, "ana", 1)])
    j.append([("event", 1, "ana", 2)])
    j.r.zremrangebyscore(j.key, 2, 2)  # what the server holds once it lost the second batch
    j.r.set(j.key + ":last", 1)
    with pytest.raises(StoreUnavailable, match="last LSN is 1, this writer's 2"):
        j.append([("event", 1, "ana", 3)])
    assert j.r.zcard(j.key) == 1 and j.r.get(j.key + ":last") == b"1"
    again = store.journal("s0", "os")
    assert again.append([("event", 1, "ana", 3)]) == 2
    assert [r[3] for _, r in again.replay()] == [1, 3]


def test_a_redis_journal_append_refused_midway_leaves_no_watch_on_a_pooled_connection(
        redis_server):
    """An append refused between its two exchanges (the server lost writes) drops its
    connection, which still watches the last-LSN key: back in the pool, it would fail the
    store's next transaction on it once that key changed (a snapshot write refused,
    "Watched variable changed")."""
    store = open_store(f"{redis_server.url}?prefix=unwatched")
    j = store.journal("s0", "os")
    j.append([("event", 1, "ana", 1)])
    store.r.set(j.last, 99)
    with pytest.raises(StoreUnavailable, match="last LSN is 99, this writer's 1"):
        j.append([("event", 1, "ana", 2)])
    store.r.set(j.last, 1)  # on the pool's latest connection, the append's were it there
    store.put_snapshots({1: b"snap"}, unless_fenced="s0")
    assert store.get_snapshot(1) == b"snap"


def test_a_redis_journal_append_is_two_round_trips_under_its_watch(redis_server, monkeypatch):
    """The WATCH of the last-LSN key and its read go in one write, the MULTI/EXEC in another (a
    pipeline sent the WATCH apart: a third round trip on every acknowledged round); a write of
    the key between the read and the EXEC still leaves the batch out."""
    from redis.connection import AbstractConnection
    store = open_store(f"{redis_server.url}?prefix=trips")
    j = store.journal("s0", "os")
    j.append([("event", 1, "ana", 1)])
    writes = []
    real_send = AbstractConnection.send_packed_command

    def send(self, command, check_health=True):
        writes.append(command)
        return real_send(self, command, check_health)
    monkeypatch.setattr(AbstractConnection, "send_packed_command", send)
    assert j.append([("event", 1, "ana", 2)]) == 2
    assert len(writes) == 2
    monkeypatch.undo()
    follows_on = j._follows_on

    def written_meanwhile(stored):
        follows_on(stored)
        store.r.set(j.last, stored)  # by another connection, its value unchanged
    monkeypatch.setattr(j, "_follows_on", written_meanwhile)
    with pytest.raises(StoreUnavailable):
        j.append([("event", 1, "ana", 3)])
    monkeypatch.undo()
    assert [r[3] for _, r in j.replay()] == [1, 2]
    assert j.append([("event", 1, "ana", 3)]) == 3


def test_a_redis_journal_batch_that_does_not_follow_on_or_decode_is_corrupt(redis_server):
    store = open_store(f"{redis_server.url}?prefix=corrupt")
    j = store.journal("s0", "os")
    j.append([("event", 1, "ana", 1), ("event", 1, "ana", 2)])
    j.append([("event", 1, "ana", 3)])
    j.r.zadd(j.key, {pack_batch(9, [("event", 1, "ana", 9)]): 9})  # LSNs 4-8 missing
    with pytest.raises(StoreCorrupt, match=r"the batch scored 9 holds LSNs 9-9, after LSN 3"):
        list(j.replay())
    j.r.zremrangebyscore(j.key, 9, 9)
    j.r.zadd(j.key, {b"\xc1 not msgpack": 4})
    with pytest.raises(StoreCorrupt, match="the batch scored 4 does not decode"):
        list(j.replay())
    assert [lsn for lsn, _ in j.replay(after_lsn=4)] == []
    j.last_lsn = 4  # as if the damaged batch had been appended
    j.r.set(j.key + ":last", 4)
    j.append([("event", 1, "ana", 5)])
    # the way out (README): the damaged batch moved into the quarantine, keeping its score
    j.r.eval(QUARANTINE, 1, j.key, 4)
    assert [lsn for lsn, _ in j.replay()] == [1, 2, 3, 5]
    assert j.r.zcard(j.key + ":quarantine") == 1


# README's command for moving a damaged batch (named by its score) into the quarantine
QUARANTINE = ("local m = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1]) "
              "for _, v in ipairs(m) do redis.call('ZADD', KEYS[1] .. ':quarantine', ARGV[1], v) "
              "redis.call('ZREM', KEYS[1], v) end return #m")
