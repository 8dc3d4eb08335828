"""Decision logs holding bytes that do not read as entries: a directory segment's torn tail or
damaged frame, a Redis member msgpack does not decode. ForgetCustomer's erasure cannot check
them for the customer's id, so it removes them (README: after ForgetCustomer the store holds
no trace of the id), and reads skip them rather than fail (storage review: dlog_torn.py,
redis_hostile.py). What is whole but decodes as no entry of this Kairos (a newer one's: a
directory frame whose CRC holds, a Redis member msgpack decodes) is skipped and kept, as the
journal keeps a newer format's batches (review of that fix, 1 and 2)."""
from __future__ import annotations

import logging
import math
import zlib
from pathlib import Path

import msgpack
import pytest

from kairos.cluster.storage.decision_logs import DirectoryLog, _frame, entry_size
from kairos.cluster.storage.frames import HEADER
from kairos.cluster.storage.redis_store import RedisStore

from tests.unit.storage.conftest import redis_server  # noqa: F401 (a fixture)

T0 = 1_795_629_600.0
SECRET = "carol-SECRET-ID"


def everything(log) -> list:
    return list(log.read(-math.inf, math.inf))


def on_disk(directory: Path, needle: bytes) -> bool:
    return any(needle in p.read_bytes() for p in directory.iterdir() if p.is_file())


def only_segment(directory: Path) -> Path:
    [segment] = directory.glob("*.dlog")
    return segment


def test_an_erasure_cuts_a_torn_tail_that_may_hold_the_customer(tmp_path):
    log = DirectoryLog(tmp_path / "s0")
    log.append([(T0, "alice", b"a"), (T0, "bob", b"b")])
    with open(only_segment(tmp_path / "s0"), "ab") as f:  # killed part way through an append
        f.write(_frame((T0 + 1, SECRET, b"carol's decision"))[:-3])
    assert log.erase({SECRET}) == 0  # no whole entry of hers: the torn one is not counted
    assert not on_disk(tmp_path / "s0", SECRET.encode())
    assert everything(log) == [(T0, "alice", b"a"), (T0, "bob", b"b")]
    log.append([(T0 + 2, "dave", b"d")])  # appends go on where the whole frames end
    assert [e[1] for e in everything(log)] == ["alice", "bob", "dave"]


def test_an_erasure_cuts_a_segment_at_a_damaged_frame_keeping_what_came_before(tmp_path, caplog):
    log = DirectoryLog(tmp_path / "s1")
    for entry in [(T0, "alice", b"x"), (T0 + 1, "bob", b"y"), (T0 + 2, "dave", b"z")]:
        log.append([entry])
    segment = only_segment(tmp_path / "s1")
    data = bytearray(segment.read_bytes())
    data[len(_frame((T0, "alice", b"x"))) + HEADER.size + 2] ^= 0xFF  # inside bob's payload
    segment.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, "kairos.store"):
        assert log.erase({"dave"}) == 0  # past the damage: not read, so not counted
    assert "erasure cuts segment" in caplog.text
    assert not on_disk(tmp_path / "s1", b"dave")
    assert segment.read_bytes() == _frame((T0, "alice", b"x"))
    assert not list((tmp_path / "s1").glob("*.tmp"))


@pytest.mark.parametrize("fields", [[SECRET, b"not an entry"], [T0, [SECRET], b"r"],
                                    [SECRET, SECRET, b"r"]],
                         ids=["two-parts", "unhashable-id", "time-not-a-number"])
def test_a_frame_whose_crc_holds_over_no_entry_is_skipped_and_kept(tmp_path, fields):
    log = DirectoryLog(tmp_path / "s2")
    log.append([(T0, "alice", b"x")])
    payload = msgpack.packb(fields)
    with open(only_segment(tmp_path / "s2"), "ab") as f:
        f.write(HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
    log.append([(T0 + 1, "bob", b"y")])
    assert everything(log) == [(T0, "alice", b"x"), (T0 + 1, "bob", b"y")]
    assert log.erase({"bob"}) == 1  # an erasure goes on past it, and keeps it whole
    assert everything(log) == [(T0, "alice", b"x")]
    assert payload in only_segment(tmp_path / "s2").read_bytes()


def test_a_segment_that_reads_whole_and_holds_none_of_theirs_is_not_rewritten(tmp_path):
    log = DirectoryLog(tmp_path / "s3")
    log.append([(T0, "alice", b"x")])
    before = only_segment(tmp_path / "s3").stat().st_ino
    assert log.erase({"bob"}) == 0
    assert only_segment(tmp_path / "s3").stat().st_ino == before


@pytest.fixture
def redis_log(redis_server, request):  # noqa: F811 (the fixture)
    store = RedisStore(f"{redis_server.url}?prefix=dd{abs(hash(request.node.name))}")
    return store.decision_log("s0")


FOREIGN = b"\xc1not-msgpack"  # a member no Kairos wrote (0xc1: never a msgpack type)


def test_a_redis_erasure_removes_a_member_it_cannot_check(redis_log):
    redis_log.append([(T0, "alice", b"a"), (T0, SECRET, b"c")])
    redis_log.r.zadd(redis_log.key, {FOREIGN: T0 + 1})
    assert redis_log.erase({SECRET}) == 2
    assert redis_log.r.zrange(redis_log.key, 0, -1) == \
        [msgpack.packb(["alice", b"a", T0], use_bin_type=True)]
    # its size, never counted by an append, is not subtracted (the safe direction)
    assert redis_log.size() == entry_size((T0, "alice", b"a"))


@pytest.mark.parametrize("member", [msgpack.packb([["a"], b"r", T0]),
                                    msgpack.packb({"customer": "bob"})],
                         ids=["unhashable-id", "a-map"])
def test_a_redis_erasure_keeps_a_member_that_decodes_as_no_entry(redis_log, member):
    redis_log.append([(T0, "alice", b"a"), (T0, SECRET, b"c")])
    redis_log.r.zadd(redis_log.key, {member: T0 + 1})
    assert redis_log.erase({SECRET}) == 1
    assert member in redis_log.r.zrange(redis_log.key, 0, -1)
    assert everything(redis_log) == [(T0, "alice", b"a")]


def test_a_redis_read_skips_a_member_that_does_not_decode_warning_once(redis_log, caplog):
    redis_log.append([(T0, "alice", b"a"), (T0 + 3, "bob", b"b")])
    redis_log.r.zadd(redis_log.key, {FOREIGN: T0 + 1, FOREIGN + b"2": T0 + 2})
    with caplog.at_level(logging.WARNING, "kairos.store"):
        assert everything(redis_log) == [(T0, "alice", b"a"), (T0 + 3, "bob", b"b")]
    assert caplog.text.count("does not decode") == 1


def test_a_redis_trim_removes_a_member_that_does_not_decode(redis_log):
    redis_log.r.zadd(redis_log.key, {FOREIGN: T0})
    redis_log.append([(T0 + 1, "alice", b"a"), (T0 + 2, "bob", b"b")])
    assert redis_log.trim(before=T0 + 0.5, max_bytes=1 << 30) == 1
    assert redis_log.trim(before=-math.inf, max_bytes=entry_size((T0, "bob", b"b"))) == 1
    assert everything(redis_log) == [(T0 + 2, "bob", b"b")]


def test_a_whole_frame_of_no_entry_that_holds_the_erased_id_goes(tmp_path):
    """Kept whole, a newer release's frame could keep a forgotten customer's id: one whose
    bytes hold it goes with the erasure (review of the fix, 4)."""
    log = DirectoryLog(tmp_path / "s4")
    log.append([(T0, "alice", b"x")])
    theirs, others = (msgpack.packb([T0, {"who": who}, b"r", "v9"]) for who in (SECRET, "bob"))
    with open(only_segment(tmp_path / "s4"), "ab") as f:
        for payload in (theirs, others):
            f.write(HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
    log.erase({SECRET})
    data = only_segment(tmp_path / "s4").read_bytes()
    assert SECRET.encode() not in data and others in data
    assert everything(log) == [(T0, "alice", b"x")]


def test_a_redis_member_of_no_entry_that_holds_the_erased_id_goes(redis_log):
    theirs, others = (msgpack.packb({"customer": who}) for who in (SECRET, "bob"))
    redis_log.r.zadd(redis_log.key, {theirs: T0, others: T0 + 1})
    redis_log.erase({SECRET})
    assert redis_log.r.zrange(redis_log.key, 0, -1) == [others]


def test_an_id_found_only_inside_another_keeps_that_customer_s_frame(tmp_path, redis_log):
    """Erasing "12345" keeps a newer release's frame (member) of "123456": the id is looked for
    as msgpack packs it, its length in its header, not as bare bytes (review of the fix, 2)."""
    log = DirectoryLog(tmp_path / "s5")
    log.append([(T0, "alice", b"x")])
    other = msgpack.packb([T0, {"who": "123456"}, b"rank=12345", "v9"])
    with open(only_segment(tmp_path / "s5"), "ab") as f:
        f.write(HEADER.pack(len(other), zlib.crc32(other)) + other)
    log.erase({"12345"})
    assert other in only_segment(tmp_path / "s5").read_bytes()
    member = msgpack.packb({"customer": "123456"})
    redis_log.r.zadd(redis_log.key, {member: T0})
    redis_log.erase({"12345"})
    assert redis_log.r.zrange(redis_log.key, 0, -1) == [member]
