"""A journal's first records missing right after a snapshot's LSN are refused, not skipped
(review storage, head gap): replay checked LSNs only from one segment (Redis: batch) read to
the next, so a segment deleted rather than quarantined, or a Redis batch removed, right after
the LSN a snapshot covers went unseen, and the acknowledged records in it with it. Truncation
now marks how far it went (truncation_marks.py), and the first record read must start by the
LSN after the mark or the snapshot's, unless a recorded gap accepts the jump. Truncation past
a snapshot, recorded gaps and journals from before marks still read as before. A plain batch
(or a CRC-valid frame) of the wrong shape is corruption, not a TypeError out of replay."""
from __future__ import annotations

import shutil
import zlib

import msgpack
import pytest

from kairos.cluster.storage import truncation_marks
from kairos.cluster.storage.frames import HEADER, JournalCorrupt, frame
from kairos.cluster.storage.journal import Journal, JournalReader
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.storage.store import StoreCorrupt

from tests.unit.storage.test_store import QUARANTINE


def segment(lsn: int) -> str:
    return f"{lsn:020d}.log"


def lsns(journal, after: int = 0) -> list[int]:
    return [lsn for lsn, _ in journal.replay(after)]


def one_per_segment(directory, n: int = 5, truncated: int = 0) -> Journal:
    """LSNs 1..n, each batch in a segment of its own, truncated up to `truncated`."""
    j = Journal(directory, segment_bytes=1)
    for k in range(1, n + 1):
        j.append([("event", 1, "ana", k)])
    j.truncate(truncated)
    return j


# -- directory journals --------------------------------------------------------------------------


def test_a_segment_deleted_right_after_the_truncation_is_refused_with_its_way_out(tmp_path):
    """The review's scenario: a snapshot at LSN 2, the journal truncated up to it, then the
    segment of LSN 3 deleted (not quarantined): replay after LSN 2 read LSNs 4 and 5 alone."""
    one_per_segment(tmp_path, truncated=2).close()
    (tmp_path / segment(3)).unlink()
    for journal in (Journal(tmp_path, segment_bytes=1), JournalReader(tmp_path)):
        with pytest.raises(JournalCorrupt) as raised:
            lsns(journal, 2)
        message = str(raised.value)
        assert f"{segment(4)}: starts at LSN 4, but the journal must hold LSN 3" in message
        assert "no record accepts LSNs 3-3 as skipped" in message
        assert "do not quarantine this segment" in message
    lost = tmp_path / "quarantine" / f"{3:020d}.lost"
    assert str(lost) in message
    lost.parent.mkdir()
    lost.touch()  # the error's way out: the loss accepted
    assert lsns(JournalReader(tmp_path), 2) == [4, 5]


def test_the_first_segment_of_a_journal_never_truncated_deleted_is_refused(tmp_path):
    one_per_segment(tmp_path, 3).close()
    (tmp_path / segment(1)).unlink()
    with pytest.raises(JournalCorrupt, match="starts at LSN 2, but the journal must hold LSN 1"):
        lsns(JournalReader(tmp_path))


def test_truncation_past_a_snapshot_still_replays(tmp_path):
    """A partition snapshotted at LSN 2 and unchanged since, another's at 4: the journal is
    truncated up to 4 and starts past 3, and up to its end, holding no record at all."""
    j = one_per_segment(tmp_path)
    assert j.truncate(4) == 4
    assert lsns(j, 2) == lsns(JournalReader(tmp_path), 2) == [5]
    j.truncate(5)
    assert lsns(j, 2) == lsns(JournalReader(tmp_path)) == []
    j.close()
    j = Journal(tmp_path, segment_bytes=1)
    assert j.append([("event", 1, "ana", 6)]) == 6
    assert lsns(j, 2) == [6]


def test_a_quarantined_first_segment_s_gap_is_recorded_and_accepted(tmp_path):
    """The segment after the truncation quarantined, then the quarantine removed once
    inspected: the gap opening recorded accepts it, also where the snapshot's LSN falls inside
    it (LSNs 2-4 in one segment, the snapshot at 3)."""
    j = Journal(tmp_path, segment_bytes=1)
    for batch in ([1], [2, 3, 4], [5]):
        j.append([("event", 1, "ana", k) for k in batch])
    j.truncate(1)
    j.close()
    (tmp_path / "quarantine").mkdir()
    shutil.move(tmp_path / segment(2), tmp_path / "quarantine" / segment(2))
    j = Journal(tmp_path, segment_bytes=1)  # the shard's next try records the gap
    shutil.rmtree(tmp_path / "quarantine")
    assert lsns(j, 1) == lsns(JournalReader(tmp_path), 3) == [5]
    j.truncate(1)  # reaching no further than before: the gap stays
    assert lsns(j, 1) == [5]


def test_a_lost_tail_s_gap_at_the_start_is_accepted(tmp_path):
    j = Journal(tmp_path)
    j.skip_past(7)  # an empty journal, a snapshot up to LSN 7
    assert j.append([("event", 1, "ana", 8)]) == 8
    assert lsns(j) == lsns(j, 7) == [8]


def old_journal(directory) -> None:
    """What a Kairos from before marks left: truncated up to LSN 3, no mark."""
    directory.mkdir()
    for lsn in (4, 5):
        (directory / segment(lsn)).write_bytes(frame(lsn, [("event", 1, "ana", lsn)]))


def test_a_journal_from_before_marks_opens_and_is_marked_where_it_starts(tmp_path):
    journal = tmp_path / "s0"
    old_journal(journal)
    assert lsns(JournalReader(journal), 2) == [4, 5]  # read as before, its start unchecked
    j = Journal(journal)
    assert truncation_marks.read(journal) == 3
    assert lsns(j, 2) == [4, 5]
    j.close()
    (journal / segment(4)).unlink()  # a deletion after the writer opened it is caught
    with pytest.raises(JournalCorrupt, match="starts at LSN 5, but the journal must hold LSN 4"):
        lsns(JournalReader(journal), 2)


def test_a_damaged_mark_reads_as_none_and_the_writer_marks_the_journal_again(tmp_path):
    one_per_segment(tmp_path, 3, truncated=1).close()
    (tmp_path / truncation_marks.MARK).write_bytes(b"\xff2")
    assert lsns(JournalReader(tmp_path)) == [2, 3]
    Journal(tmp_path, segment_bytes=1).close()
    assert truncation_marks.read(tmp_path) == 1


def test_a_frame_of_the_wrong_shape_is_corruption(tmp_path):
    """CRC-valid, written so by a bug: [first LSN, records] with records not a list."""
    payload = msgpack.packb([1, 7])
    (tmp_path / segment(1)).write_bytes(HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
    with pytest.raises(JournalCorrupt, match="the frame at byte 0 holds no batch"):
        lsns(JournalReader(tmp_path))


# -- Redis journals ------------------------------------------------------------------------------


@pytest.fixture
def store(redis_server, request):
    return RedisStore(f"{redis_server.url}?prefix=marks{abs(hash(request.node.name))}")


def appended(store: RedisStore, n: int = 5):
    store.own_journal("s0", "inc-1", claim=True)
    j = store.journal("s0", "os")
    for k in range(1, n + 1):
        j.append([("event", 1, "ana", k)])
    return j


def test_a_redis_batch_removed_right_after_a_snapshot_is_refused_with_its_way_out(store):
    """The review's scenario: `ZREMRANGEBYSCORE j 3 3`, and replay after LSN 2 read 4 and 5."""
    j = appended(store)
    store.r.zremrangebyscore(j.key, 3, 3)
    with pytest.raises(StoreCorrupt) as raised:
        lsns(store.read_journal("s0"), 2)
    message = str(raised.value)
    assert "the batch scored 4 holds LSNs 4-4, after LSN 2" in message
    assert "do not quarantine this batch" in message
    assert f"ZADD {j.key}:gaps 3 3" in message
    store.r.zadd(f"{j.key}:gaps", {"3": 3})  # the error's way out
    assert lsns(store.read_journal("s0"), 2) == [4, 5]


def test_a_redis_batch_removed_right_after_the_truncation_is_refused(store):
    j = appended(store)
    j.truncate(2)
    store.r.zremrangebyscore(j.key, 3, 3)
    with pytest.raises(StoreCorrupt, match="holds LSNs 4-4, after LSN 2"):
        lsns(j, 1)


def test_redis_truncation_past_a_snapshot_still_replays(store):
    j = appended(store)
    j.truncate(4)
    assert lsns(j, 2) == lsns(store.read_journal("s0"), 1) == [5]
    j.truncate(5)
    assert lsns(j, 2) == []
    assert j.append([("event", 1, "ana", 6)]) == 6
    assert lsns(store.journal("s0", "os"), 2) == [6]
    j.truncate(3)  # never lowers the mark
    assert lsns(j) == [6]


def test_a_quarantined_redis_batch_at_the_start_is_accepted_once_recorded(store):
    j = appended(store)
    j.truncate(2)
    store.r.eval(QUARANTINE, 1, j.key, 3)  # the way out (README)
    store.journal("s0", "os")  # the shard's next try records the gap
    store.r.delete(f"{j.key}:quarantine")  # inspected, removed
    assert lsns(store.read_journal("s0"), 2) == [4, 5]


def test_a_redis_journal_from_before_marks_opens_and_is_marked_at_its_next_truncation(store):
    """An older Kairos truncated it up to LSN 2 without a mark: read as before; the next
    truncation marks it from where it starts, which may be past what that one removes."""
    j = appended(store)
    store.r.zremrangebyscore(j.key, "-inf", 2)
    store.r.delete(f"{j.key}:{truncation_marks.MARK}")
    j = store.journal("s0", "os")
    assert lsns(j) == [3, 4, 5]
    j.truncate(1)
    assert store.r.get(f"{j.key}:{truncation_marks.MARK}") == b"2"
    assert lsns(j) == [3, 4, 5]
    store.r.zremrangebyscore(j.key, 3, 3)
    with pytest.raises(StoreCorrupt, match="holds LSNs 4-4, after LSN 2"):
        lsns(j)


def test_a_plain_redis_batch_of_the_wrong_shape_is_corruption(store):
    store.r.zadd(f"{store.prefix}:j:s0", {msgpack.packb([1, 7]): 1})  # records not a list
    with pytest.raises(StoreCorrupt, match="the batch scored 1 does not decode"):
        lsns(store.read_journal("s0"))


@pytest.mark.parametrize("evidence", [".lost", ".log"])
def test_a_quarantined_file_before_the_mark_hides_no_segment_deleted_after_it(tmp_path,
                                                                              evidence):
    """A file quarantined long ago, wholly before the mark (an accepted gap's `.lost`, an old
    segment), records no gap over a segment deleted right after the mark (review of a fix
    that recorded one: LSN 7 was then lost with no error)."""
    j = Journal(tmp_path, segment_bytes=1)
    for k in range(1, 11):
        j.append([("event", 1, "ana", k)])
    j.truncate(6)
    j.close()
    (tmp_path / "quarantine").mkdir()
    (tmp_path / "quarantine" / f"{2:020d}{evidence}").write_bytes(b"" if evidence == ".lost"
                                                                  else b"x" * 64)
    (tmp_path / segment(7)).unlink()
    with pytest.raises(JournalCorrupt, match="must hold LSN 7"):
        lsns(Journal(tmp_path, segment_bytes=1), 6)
