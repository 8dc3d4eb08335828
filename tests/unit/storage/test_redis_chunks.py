"""Meta values past one Redis value's limit (redis_chunks.py): saved in chunks, switched to
whole, read back checked, a torn save leaving the previous value."""
from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from typing import Iterator

import msgpack
import pytest
import redis

from kairos.cluster.storage import redis_chunks
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.storage.store import StoreCorrupt, StoreUnavailable

from tests.support.dead_saves import full_of_a_dead_save, leave_a_dead_save
from tests.unit.storage.test_store import guarded_redis  # noqa: F401 (a fixture)

CHUNK = 1 << 19  # 512 KiB: the server below takes no value past 1 MiB
LEAST = 1000  # the least chunk a test writes (redis_chunks.py LEAST_CHUNK_BYTES)
MOST = redis_chunks.MOST_CHUNK_BYTES


@pytest.fixture
def store(redis_server, request, monkeypatch):
    """A store whose server refuses values past 1 MiB (its least proto-max-bulk-len), as
    512 MiB refuses the learner's largest posteriors, with chunks of CHUNK."""
    redis.Redis.from_url(redis_server.url).config_set("proto-max-bulk-len", 1 << 20)
    monkeypatch.setattr(redis_chunks, "CHUNK_BYTES", CHUNK)
    monkeypatch.setattr(redis_chunks, "ONE_VALUE_BYTES", 2 * CHUNK)  # the server's 1 MiB
    with least_chunk():
        yield RedisStore(f"{redis_server.url}?prefix=ch{abs(hash(request.node.name))}")


@contextlib.contextmanager
def least_chunk() -> Iterator[None]:
    """Headers of chunks down to LEAST sane, past a test's monkeypatch.undo (which reads them
    after)."""
    with pytest.MonkeyPatch.context() as kept:
        kept.setattr(redis_chunks, "LEAST_CHUNK_BYTES", LEAST)
        yield


def _keys(store: RedisStore) -> list[bytes]:
    return sorted(store.r.keys(f"{store.prefix}:*"))


def sweep(store: RedisStore, key: str) -> None:
    """What a save of meta `key` sweeps first."""
    value = redis_chunks.Value(store.prefix, "m", key)
    redis_chunks.sweep(store.r, value, store.r.zrange(value.key("p"), 0, -1))


def test_a_value_past_the_servers_limit_round_trips_in_chunks(store):
    big = os.urandom(3 * CHUNK + 17)  # 1.5 MiB: one SET of it drops the connection
    store.put_meta("learner", big)
    assert store.get_meta("learner") == big
    assert len(_keys(store)) == 1 + 4  # the header and 4 chunks
    bigger = os.urandom(4 * CHUNK)
    store.put_meta("learner", bigger)  # the previous generation's chunks go with the switch
    assert store.get_meta("learner") == bigger and len(_keys(store)) == 1 + 4
    store.put_meta("learner", b"small")
    assert store.get_meta("learner") == b"small"
    assert _keys(store) == [f"{store.prefix}:m:learner".encode()]


def test_a_value_saved_as_one_string_by_the_previous_version_loads_and_is_replaced(store):
    store.r.set(f"{store.prefix}:m:learner", b"old posterior")
    assert store.get_meta("learner") == b"old posterior"
    big = os.urandom(2 * CHUNK + 1)
    store.put_meta("learner", big)
    assert store.get_meta("learner") == big
    assert store.r.get(f"{store.prefix}:m:learner") is None


def test_a_save_killed_between_chunks_leaves_the_previous_value_and_is_swept(store,
                                                                             monkeypatch):
    before = os.urandom(2 * CHUNK + 5)
    store.put_meta("learner", before)
    kept = _keys(store)
    written = []
    chunk = redis_chunks._chunk

    def dies_at_the_third(value, generation, n):
        written.append(n)
        if len(written) == 3:
            raise KeyboardInterrupt("killed")
        return chunk(value, generation, n)

    monkeypatch.setattr(redis_chunks, "_chunk", dies_at_the_third)
    monkeypatch.setattr(store.r, "delete", lambda *keys: None)  # killed: no clean-up either
    with pytest.raises(KeyboardInterrupt):
        store.put_meta("learner", os.urandom(5 * CHUNK))
    monkeypatch.undo()
    assert store.get_meta("learner") == before
    leftovers = set(_keys(store)) - set(kept)
    assert len(leftovers) == 2 + 2  # the pending generations, its live key, the 2 chunks
    monkeypatch.setattr(time, "time", lambda: 2e10)  # this host's clock is not the server's
    store.put_meta("learner", b"next")  # not stale yet: kept (its save may be alive)
    assert leftovers <= set(_keys(store))
    monkeypatch.undo()
    (alive,) = [k for k in leftovers if b":ma:" in k]
    store.r.pexpire(alive, 1)  # STALE_S passed by the server's clock
    time.sleep(0.05)
    store.put_meta("learner", b"later")
    assert _keys(store) == [f"{store.prefix}:m:learner".encode()]


def test_a_save_that_fails_between_chunks_deletes_them(store, monkeypatch):
    store.put_meta("learner", b"before")
    chunk, calls = redis_chunks._chunk, []

    def fails_at_the_second(*args):
        calls.append(args)
        if len(calls) == 2:
            raise redis.exceptions.ConnectionError("lost")
        return chunk(*args)

    monkeypatch.setattr(redis_chunks, "_chunk", fails_at_the_second)
    with pytest.raises(Exception, match="lost"):
        store.put_meta("learner", os.urandom(3 * CHUNK))
    monkeypatch.undo()
    assert store.get_meta("learner") == b"before"
    assert len(_keys(store)) == 3  # the value, the pending generation and its key (swept later)


def test_a_read_that_meets_a_newer_save_reads_that_one(store, monkeypatch):
    first, second = os.urandom(2 * CHUNK + 1), os.urandom(3 * CHUNK + 1)
    store.put_meta("learner", first)
    assemble = redis_chunks._assemble

    def saved_meanwhile(client, value, header):
        monkeypatch.setattr(redis_chunks, "_assemble", assemble)
        store.put_meta("learner", second)  # deletes the chunks `header` names
        return assemble(client, value, header)

    monkeypatch.setattr(redis_chunks, "_assemble", saved_meanwhile)
    assert store.get_meta("learner") == second


def test_a_missing_or_changed_chunk_is_corrupt(store):
    store.put_meta("learner", os.urandom(2 * CHUNK + 1))
    chunks = [k for k in _keys(store) if b":mc:" in k]
    store.r.set(chunks[0], b"x" * CHUNK)
    with pytest.raises(StoreCorrupt, match="do not match its header"):
        store.get_meta("learner")
    store.r.delete(chunks[1])
    with pytest.raises(StoreCorrupt, match=r"chunk \d of the 3 of its saved value .* missing"):
        store.get_meta("learner")


def test_an_acl_user_limited_to_kairos_commands_saves_and_reads_chunks(
        guarded_redis, monkeypatch):  # noqa: F811 (the fixture)
    store = RedisStore(f"redis://kairos:user-secret@127.0.0.1:{guarded_redis.port}/0"
                       f"?prefix=acl")
    monkeypatch.setattr(redis_chunks, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(redis_chunks, "LEAST_CHUNK_BYTES", LEAST)
    monkeypatch.setattr(redis_chunks, "ONE_VALUE_BYTES", 1000)
    for value in (os.urandom(3500), os.urandom(2100), b"small", os.urandom(1001)):
        store.put_meta("learner", value)
        assert store.get_meta("learner") == value
    leave_a_dead_save(lambda: store.put_meta("learner", os.urandom(2000)))
    assert len(store.r.zrange("acl:mp:learner", 0, -1)) == 1
    store.put_meta("learner", b"x")  # sweeps it: ZRANGE, GETs, GET, ZREM, DEL
    assert store.r.zrange("acl:mp:learner", 0, -1) == []


def test_a_value_an_older_kairos_could_save_stays_one_key_it_reads(store):
    value = os.urandom(CHUNK + CHUNK // 2)  # past a chunk, not past ONE_VALUE_BYTES
    store.put_meta("learner", value)
    assert _keys(store) == [f"{store.prefix}:m:learner".encode()]
    assert store.r.get(f"{store.prefix}:m:learner") == value  # an older Kairos's get_meta


def test_after_a_rollback_the_older_kairos_save_is_read_not_the_stale_chunks(store):
    store.put_meta("learner", os.urandom(3 * CHUNK))
    store.r.set(f"{store.prefix}:m:learner", b"saved by an older Kairos")  # its put_meta
    assert store.get_meta("learner") == b"saved by an older Kairos"
    bigger = os.urandom(4 * CHUNK)
    store.put_meta("learner", bigger)  # the stale generation goes with the switch
    assert store.get_meta("learner") == bigger and len(_keys(store)) == 1 + 4


def test_a_sweep_and_a_stalled_saves_switch_never_publish_deleted_chunks(store, monkeypatch):
    before, stalled = os.urandom(2 * CHUNK + 1), os.urandom(3 * CHUNK)
    store.put_meta("learner", before)
    switch, captured = redis_chunks._switch, {}
    monkeypatch.setattr(redis_chunks, "_switch", lambda *a: captured.update(a=a))
    store.put_meta("learner", stalled)  # its chunks written, its switch not yet
    monkeypatch.setattr(redis_chunks, "_switch", switch)
    (alive,) = store.r.keys(f"{store.prefix}:ma:*")
    store.r.pexpire(alive, 1)  # stalled past STALE_S
    time.sleep(0.05)
    chunks, landed = redis_chunks._chunks, []

    def switch_lands_inside_the_sweep(*args):  # between its WATCH and its EXEC
        if not landed:
            landed.append(threading.Thread(target=switch, args=captured["a"]))
            landed[0].start()
            landed[0].join()
        return chunks(*args)

    monkeypatch.setattr(redis_chunks, "_chunks", switch_lands_inside_the_sweep)
    sweep(store, "learner")
    monkeypatch.undo()
    assert landed and store.get_meta("learner") == stalled


def test_a_save_that_resumes_after_its_chunks_were_swept_fails_and_keeps_the_value(store,
                                                                                   monkeypatch):
    before = os.urandom(2 * CHUNK + 1)
    store.put_meta("learner", before)
    chunk, stalled = redis_chunks._chunk, []

    def swept_before_the_second(value, generation, n):
        if n == 1 and not stalled:  # stalled past STALE_S: a sweep deletes what it wrote
            stalled.append(n)
            store.r.pexpire(redis_chunks._alive(value, generation), 1)
            time.sleep(0.05)
            sweep(store, value.name)
        return chunk(value, generation, n)

    monkeypatch.setattr(redis_chunks, "_chunk", swept_before_the_second)
    with pytest.raises(StoreUnavailable, match="deleted as a dead save's"):
        store.put_meta("learner", os.urandom(3 * CHUNK))
    monkeypatch.undo()
    assert store.get_meta("learner") == before
    (generation,) = {k.split(b":")[-2] for k in _keys(store) if b":mc:" in k}  # before's
    assert msgpack.unpackb(store.r.get(f"{store.prefix}:mh:learner"))[0] == generation.decode()


def test_a_sweep_keeps_a_generation_switched_in_after_it_was_read_pending(store, monkeypatch):
    """A save's key goes with its switch, which also unlists it: a sweep that read it pending
    before (another process's save of the key) must not take the chunks its header names."""
    switch, captured = redis_chunks._switch, {}
    monkeypatch.setattr(redis_chunks, "_switch", lambda *a: captured.update(a=a))
    stalled = os.urandom(3 * CHUNK)
    store.put_meta("learner", stalled)  # its chunks written, its switch not yet
    value = redis_chunks.Value(store.prefix, "m", "learner")
    read_pending = store.r.zrange(value.key("p"), 0, -1)
    switch(*captured["a"])
    redis_chunks.sweep(store.r, value, read_pending)
    assert store.get_meta("learner") == stalled


def test_a_switch_the_server_refuses_deletes_its_chunks(store, redis_server, monkeypatch):
    before = os.urandom(2 * CHUNK + 1)
    store.put_meta("learner", before)
    kept, admin, switch = _keys(store), redis_server.client(), redis_chunks._switch
    limit = admin.config_get("maxmemory")["maxmemory"]

    def full_at_the_switch(*args):
        admin.config_set("maxmemory", admin.info("memory")["used_memory"] // 2)
        return switch(*args)
    monkeypatch.setattr(redis_chunks, "_switch", full_at_the_switch)
    try:
        with pytest.raises(StoreUnavailable, match="used memory > 'maxmemory'"):
            store.put_meta("learner", os.urandom(3 * CHUNK))
    finally:
        admin.config_set("maxmemory", limit)
    assert store.get_meta("learner") == before and _keys(store) == kept


def _lose_the_exec_reply_once_read(monkeypatch) -> None:
    """The next MULTI/EXEC's reply is read and then a timeout raised, as one while reading it
    (before redis-py clears its WATCH state): redis-py 8.2 raises WatchError for it."""
    real, armed = redis.client.Pipeline.parse_response, [True]

    def parse(self, connection, command_name, **options):
        reply = real(self, connection, command_name, **options)
        if armed[0] and command_name == "_" and isinstance(reply, list):  # EXEC's
            armed[0] = False
            raise redis.exceptions.TimeoutError("Timeout reading from socket")
        return reply
    monkeypatch.setattr(redis.client.Pipeline, "parse_response", parse)


def test_a_switch_whose_reply_is_lost_once_it_ran_keeps_what_it_switched_in(store,
                                                                           monkeypatch):
    """Looked at again, the header is the save's own: its switch landed; the save is done,
    its chunks kept (its generation no longer pending was taken for swept, its chunks
    deleted under the header naming them: StoreCorrupt for good)."""
    store.put_meta("learner", os.urandom(3 * CHUNK))
    new = os.urandom(3 * CHUNK)
    _lose_the_exec_reply_once_read(monkeypatch)
    store.put_meta("learner", new)
    assert store.get_meta("learner") == new
    assert [k.split(b":")[1] for k in _keys(store)] == [b"mc"] * 3 + [b"mh"]


def test_a_switch_that_fails_part_way_keeps_the_chunks_its_header_names(store, monkeypatch):
    """An EXEC whose last command fails (the others ran): the save fails, and what it set the
    header to reads back whole."""
    store.put_meta("learner", os.urandom(3 * CHUNK))
    new, switch = os.urandom(3 * CHUNK), redis_chunks.switch
    monkeypatch.setattr(redis_chunks, "switch", lambda value, *args: [
        *switch(value, *args), ("INCR", value.key("h"))])  # not an integer: an error reply
    with pytest.raises(StoreUnavailable, match="not an integer"):
        store.put_meta("learner", new)
    monkeypatch.undo()
    assert store.get_meta("learner") == new


def test_a_damaged_header_is_corrupt_and_a_save_replaces_it(store):
    """Not msgpack [generation, length, chunks, SHA-256]: StoreCorrupt, not a ValueError; a
    save, in chunks or one value, sets it over."""
    for new in (os.urandom(3 * CHUNK), b"small"):
        store.put_meta("learner", os.urandom(3 * CHUNK))
        store.r.set(f"{store.prefix}:mh:learner", b"\x93\xa1x")
        with pytest.raises(StoreCorrupt, match=r"header .*:mh:learner is damaged"):
            store.get_meta("learner")
        store.put_meta("learner", new)
        assert store.get_meta("learner") == new


def test_a_full_server_sweeps_a_dead_saves_chunks_then_takes_the_save(store, redis_server):
    """Redis refuses any command queued in a MULTI while over maxmemory: the sweep claims a
    dead generation by a ZREM of its own, then DELs its chunks, so the chunks of a killed save
    that filled the server go, and the save that swept them is taken."""
    store.put_meta("learner", b"small before")
    value = redis_chunks.Value(store.prefix, "m", "learner")
    with full_of_a_dead_save(store.r, redis_server.client(), value, CHUNK):
        store.put_meta("learner", b"small after")
    assert store.get_meta("learner") == b"small after"
    assert _keys(store) == [value.key().encode()]


def test_a_sweep_keeps_the_chunks_a_partial_exec_switched_in(store, monkeypatch):
    """An EXEC that set the header but whose ZREM failed (an ACL changed between MULTI and
    EXEC) leaves the generation listed, its key deleted: the sweep must not take the chunks
    the header names."""
    store.put_meta("learner", os.urandom(3 * CHUNK))
    new, switch = os.urandom(3 * CHUNK), redis_chunks.switch
    monkeypatch.setattr(redis_chunks, "switch", lambda value, *args: [
        ("INCR", value.key("h")) if c[0] == "ZREM" else c for c in switch(value, *args)])
    with pytest.raises(StoreUnavailable):
        store.put_meta("learner", new)
    monkeypatch.undo()
    assert len(store.r.zrange(f"{store.prefix}:mp:learner", 0, -1)) == 1
    sweep(store, "learner")
    assert store.get_meta("learner") == new


@pytest.mark.parametrize("length, count, said", [
    (10 * LEAST, 0, "a value of 10000 bytes is in 1 to 10 chunks"),
    (10 * LEAST, 11, "in 1 to 10 chunks"),  # length // LEAST + 1 passed
    (10 * LEAST + 1, 12, "in 1 to 11 chunks"),
    (0, 1, "no value of 0 bytes is in chunks"),
    # far longer than 3 chunks hold: a read of all 3 (one GET each) found it only after
    (3 * MOST + 1, 3, "a value of 201326593 bytes is in 4 to 201327 chunks"),
    (redis_chunks.MOST_VALUE_BYTES, 3, f"in {redis_chunks.MOST_VALUE_BYTES // MOST} to "),
    # as many chunks as its length takes, but past any save: a reader listed 68 million chunk
    # names (at the test's LEAST) for the DEL it names
    (redis_chunks.MOST_VALUE_BYTES + 1, redis_chunks.MOST_VALUE_BYTES // LEAST + 1,
     f"is past any save's ({redis_chunks.MOST_VALUE_BYTES})"),
    (3 * MOST, 3, "hold 1572864 bytes that do not match its header's length")])  # sound
def test_a_header_naming_chunks_no_chunk_size_cuts_its_length_in_is_damaged(store, length,
                                                                            count, said):
    """No chunk but the last is shorter than LEAST_CHUNK_BYTES or longer than MOST: a header
    naming none, or a count no chunk size in those cuts its length in, is damaged (StoreCorrupt
    saying what it takes) before a chunk is read, not a read of as many chunks' names or of
    chunks that cannot hold its length."""
    store.put_meta("learner", os.urandom(3 * CHUNK))
    generation, _, _, digest = msgpack.unpackb(store.r.get(f"{store.prefix}:mh:learner"))
    store.r.set(f"{store.prefix}:mh:learner", msgpack.packb([generation, length, count, digest]))
    damaged = r"header .*:mh:learner is damaged .*" if "match" not in said else ""
    with pytest.raises(StoreCorrupt, match=damaged + re.escape(said)):
        store.get_meta("learner")


def test_a_switch_whose_reply_was_lost_then_overtaken_says_it_may_have_been(store,
                                                                            monkeypatch):
    """The save's EXEC lands, its reply is lost (redis-py: WatchError), another writer's save
    lands before the look again: the save fails saying it may have been overtaken, and the
    other's value is read."""
    store.put_meta("learner", os.urandom(3 * CHUNK))
    other = RedisStore(store.url)
    theirs, real, armed = os.urandom(3 * CHUNK), redis.client.Pipeline.parse_response, [True]

    def lost_after_exec(self, connection, command_name, **options):
        reply = real(self, connection, command_name, **options)
        if armed[0] and command_name == "_" and isinstance(reply, list):  # the EXEC's
            armed[0] = False
            other.put_meta("learner", theirs)
            raise redis.exceptions.TimeoutError("Timeout reading from socket")
        return reply
    monkeypatch.setattr(redis.client.Pipeline, "parse_response", lost_after_exec)
    with pytest.raises(StoreUnavailable, match="may have been overtaken by another writer's"):
        store.put_meta("learner", os.urandom(3 * CHUNK))
    monkeypatch.undo()
    assert store.get_meta("learner") == theirs


def test_metas_chunks_are_of_a_size_the_header_check_takes():
    assert redis_chunks.LEAST_CHUNK_BYTES <= redis_chunks.CHUNK_BYTES <= MOST


@pytest.mark.parametrize("member", [
    b"abab:x", b"abab:0", b"abab:-3", b"abab", b":3", b"abab:%d" % (redis_chunks.MOST_CHUNKS + 1),
    b"\xff\xfe:3", "abab:\u00b2".encode(), b"abab:" + b"9" * 5000])  # not UTF-8; int() refuses
def test_a_pending_member_kairos_did_not_write_is_unlisted_and_saves_go_on(store, member):
    """A member of the pending set not `<generation>:<chunks>` (changed outside Kairos): a
    save's sweep unlisted it, not listing a count's worth of chunk names past any save's (a
    billion: memory), nor failing every save on it (a bare ValueError from int())."""
    store.r.zadd(f"{store.prefix}:mp:learner", {member: 0})
    big = os.urandom(3 * CHUNK)
    store.put_meta("learner", big)
    assert store.get_meta("learner") == big
    assert store.r.zrange(f"{store.prefix}:mp:learner", 0, -1) == []


def test_a_sweep_never_deletes_the_chunks_a_header_out_of_this_versions_bounds_names(store):
    """A header whose counts this version's bounds refuse (a later writer's wider chunks)
    still names its generation: a sweep finding that generation dead and listed (its switch
    failed before its ZREM) leaves its chunks, as it does a sound header's."""
    store.put_meta("learner", os.urandom(3 * CHUNK))
    header = f"{store.prefix}:mh:learner"
    generation, length, count, digest = msgpack.unpackb(store.r.get(header))
    store.r.set(header, msgpack.packb([generation, length * 10**6, count, digest]))
    store.r.zadd(f"{store.prefix}:mp:learner", {f"{generation}:{count}": 0})  # alive key gone
    chunks = sorted(store.r.keys(f"{store.prefix}:mc:learner:*"))
    sweep(store, "learner")
    assert sorted(store.r.keys(f"{store.prefix}:mc:learner:*")) == chunks and len(chunks) == 3
