"""Decision logs in the three stores: one contract (append, read a time range, trim to the
retention bounds, erase customers, size, the names of the logs), and what only a directory
has to do (segments, private modes, a torn tail, an erasure beside another writer)."""
from __future__ import annotations

import math
import os
import stat

import pytest

from kairos.cluster.storage import decision_logs
from kairos.cluster.storage.decision_logs import SEGMENT_S, entry_size
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.redis_store import REPLAY_PAGE, RedisStore

T0 = 1_795_629_600.0


@pytest.fixture(params=["memory", "directory", "redis"])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryStore()
    if request.param == "directory":
        return DirectoryStore(tmp_path)
    return RedisStore(f"{request.getfixturevalue('redis_server').url}"
                      f"?prefix=t{abs(hash(request.node.name))}")


def entries(customers: str, t: float, step: float = 1.0) -> list:
    return [(t + k * step, c, f"{c}-{k}".encode()) for k, c in enumerate(customers)]


def everything(log) -> list:
    return list(log.read(-math.inf, math.inf))


def test_append_read_erase_and_names(store):
    log = store.decision_log("kairos-shard-0001")
    log.append(entries("abab", T0))
    store.decision_log("kairos-shard-0002").append(entries("c", T0))
    assert store.decision_logs() == ["kairos-shard-0001", "kairos-shard-0002"]
    assert [e[2] for e in log.read(T0 + 1, T0 + 2)] == [b"b-1", b"a-2"]
    assert log.size() >= sum(map(entry_size, entries("abab", T0)))  # a directory's: frames
    assert log.erase({"a", "nobody"}) == 2
    assert everything(log) == [(T0 + 1, "b", b"b-1"), (T0 + 3, "b", b"b-3")]
    assert log.erase({"a"}) == 0
    # a store opened again (another process) reads the same
    if not isinstance(store, MemoryStore):
        again = type(store)(store.url if isinstance(store, RedisStore) else store.root)
        assert everything(again.decision_log("kairos-shard-0001")) == everything(log)


def test_entries_of_one_time_are_read_whole_across_pages(store):
    """A round's entries share their time: a page boundary among them loses none."""
    log = store.decision_log("s")
    many = [(T0, f"c{k}", b"x%d" % k) for k in range(REPLAY_PAGE + 7)] + \
        [(T0 + 1, "late", b"y")]
    log.append(many)
    assert sorted(everything(log)) == sorted(many)
    assert list(log.read(T0 + 0.5, T0 + 2)) == [(T0 + 1, "late", b"y")]


def test_trim_drops_by_age_then_by_size(store, monkeypatch):
    monkeypatch.setattr(decision_logs, "SEGMENT_BYTES", 1)  # a directory's segment per append
    log = store.decision_log("s")
    for k in range(4):
        log.append(entries("a", T0 + k * 10))
    # dropped: what was logged before T0 + 20 (whole segments of a directory, which end
    # where the next begins)
    log.trim(T0 + 20, 1 << 30)
    assert [e[0] for e in everything(log)] == [T0 + 20, T0 + 30]
    log.trim(-math.inf, entry_size(entries("a", T0)[0]))
    assert [e[0] for e in everything(log)] == [T0 + 30]


def test_a_directory_log_is_private_segmented_and_reads_up_to_a_torn_tail(tmp_path):
    store = DirectoryStore(tmp_path)
    log = store.decision_log("s")
    log.append(entries("a", T0))
    log.append(entries("b", T0 + SEGMENT_S))  # a segment's time is up: the next one
    segments = sorted((tmp_path / "decisions" / "s").glob("*.dlog"))
    assert len(segments) == 2
    assert stat.S_IMODE(os.stat(tmp_path / "decisions").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "decisions" / "s").st_mode) == 0o700
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in segments} == {0o600}
    with open(segments[-1], "ab") as f:
        f.write(b"\x40\x00\x00\x00torn")  # a crash mid-append
    assert [e[1] for e in everything(log)] == ["a", "b"]
    # a writer that opens the log again starts a segment of its own, after no torn tail
    again = store.decision_log("s")
    again.append(entries("c", T0 + SEGMENT_S + 1))
    assert [e[1] for e in everything(again)] == ["a", "b", "c"]


def test_an_erasure_beside_another_writer_loses_none_of_its_later_appends(tmp_path):
    writer = DirectoryStore(tmp_path).decision_log("s0")
    eraser = DirectoryStore(tmp_path).decision_log("s0")  # another shard of the machine
    writer.append(entries("ab", T0))
    assert eraser.erase({"a"}) == 1
    writer.append(entries("c", T0 + 5))
    assert [e[1] for e in everything(writer)] == ["b", "c"]
