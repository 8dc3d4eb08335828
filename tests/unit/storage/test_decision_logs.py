"""Decision logs in the three stores: one contract (append, read a time range, trim to the
retention bounds, erase customers, size, the names of the logs), and what only a directory
has to do (segments, private modes, a torn tail, an erasure beside another writer)."""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import pytest
import redis

from kairos.cluster.storage import decision_logs
from kairos.cluster.storage.decision_logs import SEGMENT_S, entry_size
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.redis_journal import REPLAY_PAGE
from kairos.cluster.storage.redis_log import Pass, RedisLog
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.storage.store import StoreUnavailable

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


def test_a_failed_append_is_cut_off_and_hides_none_that_come_after(tmp_path, monkeypatch):
    """A part of a batch left in a segment would stop every reader there (and an erasure's
    rewrite would drop all after it)."""
    log = DirectoryStore(tmp_path).decision_log("s")
    log.append(entries("a", T0))
    write = os.write

    def disk_full(fd, data):
        write(fd, bytes(data[:30]))
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(decision_logs.os, "write", disk_full)
    with pytest.raises(StoreUnavailable):
        log.append(entries("b", T0 + 1))
    monkeypatch.setattr(decision_logs.os, "write", write)
    log.append(entries("cd", T0 + 2))
    assert [e[1] for e in everything(log)] == ["a", "c", "d"]
    assert log.erase({"a"}) == 1
    assert [e[1] for e in everything(log)] == ["c", "d"]


def test_trim_drops_the_newest_segment_too_once_all_of_it_is_past(store):
    """A quiet shard's last segment is no exception to retention; its writer goes on in a
    segment of its own."""
    log = store.decision_log("s")
    log.append(entries("ab", T0))
    log.trim(T0 + 2, 1 << 30)
    assert everything(log) == []
    log.append(entries("c", T0 + 3))
    assert [e[1] for e in everything(log)] == ["c"]
    assert store.decision_logs() == ["s"]


def test_an_orphan_log_trimmed_empty_is_removed(store):
    store.decision_log("gone").append(entries("a", T0))
    store.decision_log("gone").trim(T0 + 1, 1 << 30, orphan=True)
    # (a memory store keeps its logs while it lives)
    assert store.decision_logs() == ([] if store.shared else ["gone"])
    assert everything(store.decision_log("gone")) == []


def test_a_removed_orphan_written_again_is_a_log_again(tmp_path):
    """A writer that waited on the lock of a log removed meanwhile locks the new one."""
    writer = DirectoryStore(tmp_path).decision_log("s")
    writer.append(entries("a", T0))
    DirectoryStore(tmp_path).decision_log("s").trim(T0 + 1, 1 << 30, orphan=True)
    assert not (tmp_path / "decisions" / "s").exists()
    writer.append(entries("b", T0 + 2))
    assert [e[1] for e in everything(writer)] == ["b"]


def test_a_failed_erasure_leaves_no_copy_of_what_it_erased(tmp_path, monkeypatch):
    log = DirectoryStore(tmp_path).decision_log("s")
    log.append(entries("ab", T0))

    def eio(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(decision_logs.os, "fsync", eio)
    with pytest.raises(StoreUnavailable):
        log.erase({"a"})
    monkeypatch.undo()
    assert list((tmp_path / "decisions" / "s").glob("*.tmp")) == []
    # one a crash left is swept under the lock
    stale = tmp_path / "decisions" / "s" / f"{int(T0 * 1000):016d}.dlog.1.0.tmp"
    stale.write_bytes(b"a's entries")
    log.trim(-math.inf, 1 << 30)
    assert not stale.exists()


def test_a_file_not_named_by_a_time_is_not_a_segment(tmp_path, caplog):
    log = DirectoryStore(tmp_path).decision_log("s")
    log.append(entries("a", T0))
    copy = tmp_path / "decisions" / "s" / "backup.dlog"
    copy.write_bytes(b"an operator's copy")
    assert [e[1] for e in everything(log)] == ["a"]
    assert log.trim(T0 + 1, 1 << 30) == 1
    assert copy.exists() and "backup.dlog is not named by a time" in caplog.text


def test_redis_errors_while_a_log_is_read_are_store_unavailable():
    class Down:
        def zrangebyscore(self, *args, **kwargs):
            raise redis.ConnectionError("Connection refused.")
    reading = RedisLog(Down(), "kairos", "s", Pass()).read(0.0, T0)  # (nothing asked yet)
    with pytest.raises(StoreUnavailable, match="reading a decision log"):
        list(reading)


def test_an_orphan_log_on_nfs_is_removed_and_quietly(tmp_path, monkeypatch, caplog):
    """An NFS client keeps a file removed while it is open as .nfsXXXX until it is closed: a
    folder whose lock file was removed while locked could never be removed."""
    silly: dict[tuple[int, int], Path] = {}
    unlink, close = Path.unlink, os.close

    def nfs_unlink(path: Path, missing_ok: bool = False) -> None:
        if path.name != ".lock":
            return unlink(path, missing_ok)
        st = path.stat()
        silly[st.st_dev, st.st_ino] = path.with_name(f".nfs{st.st_ino:016x}")
        path.rename(silly[st.st_dev, st.st_ino])

    def nfs_close(fd: int) -> None:
        st = os.fstat(fd)
        close(fd)
        if (st.st_dev, st.st_ino) in silly:
            unlink(silly.pop((st.st_dev, st.st_ino)))
    monkeypatch.setattr(Path, "unlink", nfs_unlink)
    monkeypatch.setattr(os, "close", nfs_close)
    DirectoryStore(tmp_path).decision_log("gone").append(entries("a", T0))
    DirectoryStore(tmp_path).decision_log("gone").trim(T0 + 1, 1 << 30, orphan=True)
    assert not (tmp_path / "decisions" / "gone").exists()
    assert "its folder stays" not in caplog.text


def test_a_folder_left_for_a_writer_that_came_meanwhile_is_removed_by_a_later_trim(
        tmp_path, monkeypatch, caplog):
    gone = DirectoryStore(tmp_path).decision_log("gone")
    gone.append(entries("a", T0))
    rmdir = Path.rmdir

    def writer_first(path: Path) -> None:  # it locks anew, creating a lock file, just before
        (path / ".lock").touch()
        rmdir(path)
    monkeypatch.setattr(Path, "rmdir", writer_first)
    gone.trim(T0 + 1, 1 << 30, orphan=True)
    assert "its folder stays" not in caplog.text
    monkeypatch.undo()
    gone.trim(T0 + 1, 1 << 30, orphan=True)
    assert not (tmp_path / "decisions" / "gone").exists()
