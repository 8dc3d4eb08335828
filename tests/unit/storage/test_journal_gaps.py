"""A gap in a journal's LSNs (a kept torn tail, a lost tail, a quarantined segment) is recorded
beside the segments, so the quarantined file is evidence only: removed once inspected, as the
README says, the journal still opens, replays every record on both sides of the gap and gives
out no LSN of it again. A gap nothing accepts names the segment after it as intact, never as
one to quarantine (review rev43 residency, finding 1). A Redis journal records the gap an operator's
quarantined batch leaves the same way."""
from __future__ import annotations

import shutil
import threading

import pytest

from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.frames import HEADER, JournalCorrupt, frame
from kairos.cluster.storage.journal import Journal, JournalReader
from kairos.cluster.storage.providers import open_store
from kairos.cluster.storage.store import StoreCorrupt

from tests.unit.storage.test_store import QUARANTINE


def records(first: int, n: int) -> list:
    return [["event", f"c{i}", "app_open", float(i)] for i in range(first, first + n)]


def lsns(directory) -> list[int]:
    return [lsn for lsn, _ in JournalReader(directory).replay()]


def inspected(directory) -> None:
    """The operator removes the quarantined files once inspected (README)."""
    shutil.rmtree(directory / "quarantine")


def torn(directory) -> int:
    """Three LSNs journaled, then the last batch's frame (LSNs 4-6) kept as a torn tail
    by opening: the LSN the journal goes on past."""
    j = Journal(directory)
    j.append(records(1, 3))
    j.append(records(4, 3))
    j.close()
    segment = sorted(directory.glob("*.log"))[-1]
    data = bytearray(segment.read_bytes())
    data[-2] ^= 0xFF  # the frame stays whole, its CRC fails
    segment.write_bytes(bytes(data))
    j = Journal(directory)
    assert (directory / "quarantine" / f"{4:020d}.torn").exists()
    past = j.last_lsn
    assert past >= 6
    j.close()
    return past


def test_a_torn_tail_s_file_removed_once_inspected_leaves_the_journal_readable(tmp_path):
    past = torn(tmp_path)
    j = Journal(tmp_path)
    acknowledged = j.append(records(7, 2))
    j.close()
    inspected(tmp_path)
    j = Journal(tmp_path)
    assert [lsn for lsn, _ in j.replay()] == [1, 2, 3, past + 1, acknowledged]
    assert j.append(records(9, 1)) == acknowledged + 1
    j.close()
    assert lsns(tmp_path) == [1, 2, 3, past + 1, acknowledged, acknowledged + 1]


def test_a_quiet_journal_gives_out_no_lsn_of_a_torn_tail_once_its_file_is_gone(tmp_path):
    """Nothing journaled after the cut: the segment the LSNs go on in is there already."""
    past = torn(tmp_path)
    inspected(tmp_path)
    j = Journal(tmp_path)
    assert j.last_lsn == past
    assert j.append(records(7, 1)) == past + 1
    j.close()
    assert lsns(tmp_path) == [1, 2, 3, past + 1]


def test_a_lost_tail_s_marker_removed_once_inspected_leaves_the_journal_readable(tmp_path):
    j = Journal(tmp_path, "os")
    j.append(records(1, 1))
    j.skip_past(3)  # a snapshot covers LSN 3: the tail past LSN 1 was lost
    assert (tmp_path / "quarantine" / f"{2:020d}.lost").exists()
    assert j.append(records(4, 1)) == 4
    j.sync()
    j.close()
    inspected(tmp_path)
    j = Journal(tmp_path, "os")
    assert [lsn for lsn, _ in j.replay()] == [1, 4] and j.last_lsn == 4


def test_a_quarantined_segment_removed_once_inspected_leaves_the_rest_readable(tmp_path):
    j = Journal(tmp_path, segment_bytes=1)  # one batch per segment
    for first in (1, 3, 5):
        j.append(records(first, 2))
    j.close()
    middle = tmp_path / f"{3:020d}.log"
    (tmp_path / "quarantine").mkdir()
    middle.rename(tmp_path / "quarantine" / middle.name)  # the way out (README)
    Journal(tmp_path, segment_bytes=1).close()  # the shard's next try opens it
    inspected(tmp_path)
    assert lsns(tmp_path) == [1, 2, 5, 6]


def old_journal(directory) -> None:
    """What an older Kairos left after a kept torn tail and a batch after it: a jump from
    LSN 4 to 20 that only the quarantined file accepts."""
    directory.mkdir()
    (directory / f"{1:020d}.log").write_bytes(frame(1, records(1, 3)))
    (directory / f"{20:020d}.log").write_bytes(frame(20, records(20, 2)))
    (directory / "quarantine").mkdir()
    (directory / "quarantine" / f"{4:020d}.torn").write_bytes(bytes(16))


def test_a_gap_an_older_kairos_left_in_quarantine_alone_is_accepted_and_recorded(tmp_path):
    journal = tmp_path / "s0"
    old_journal(journal)
    assert lsns(journal) == [1, 2, 3, 20, 21]  # read as it is
    Journal(journal).close()
    inspected(journal)
    assert lsns(journal) == [1, 2, 3, 20, 21]


def test_a_gap_nothing_accepts_keeps_the_segment_after_it_out_of_quarantine(tmp_path):
    """The segment after the gap is intact and holds acknowledged batches: the error says so,
    and its way out (an empty `.lost` file) brings them all back."""
    journal = tmp_path / "s0"
    old_journal(journal)
    inspected(journal)  # by an older Kairos: nothing recorded the gap
    with pytest.raises(JournalCorrupt) as raised:
        lsns(journal)
    message = str(raised.value)
    assert f"{20:020d}.log: starts at LSN 20, but the segment before it ends at LSN 3" in message
    assert "do not quarantine this segment" in message
    assert "until the segment is moved" not in message
    marker = journal / "quarantine" / f"{4:020d}.lost"
    assert str(marker) in message
    marker.parent.mkdir()
    marker.touch()
    assert lsns(journal) == [1, 2, 3, 20, 21]


def test_truncation_drops_a_gap_s_record_with_the_segments_before_it(tmp_path):
    past = torn(tmp_path)
    j = Journal(tmp_path)
    assert [p.name for p in tmp_path.glob("*.gap")] == [f"{4:020d}.gap"]
    last = j.append(records(7, 1))
    assert j.truncate(past) == 1
    assert not list(tmp_path.glob("*.gap"))
    j.close()
    inspected(tmp_path)
    assert lsns(tmp_path) == [last]


def test_a_segment_s_first_frame_kept_as_torn_leaves_it_empty_and_the_gap_accepted(tmp_path):
    j = Journal(tmp_path, segment_bytes=1)  # one batch per segment
    j.append(records(1, 2))
    j.append(records(3, 2))
    j.close()
    segment = tmp_path / f"{3:020d}.log"
    data = bytearray(segment.read_bytes())
    data[HEADER.size + 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    j = Journal(tmp_path, segment_bytes=1)
    assert segment.stat().st_size == 0
    last = j.append(records(5, 1))
    j.close()
    inspected(tmp_path)
    assert lsns(tmp_path) == [1, 2, last]


# -- Redis: an operator's quarantined batch, the one way a Redis journal gets a gap -----------

def redis_journal(redis_server, name: str):
    return open_store(f"{redis_server.url}?prefix={name}").journal("s0", "os")


def test_a_redis_batch_quarantined_then_removed_leaves_the_journal_readable(redis_server):
    j = redis_journal(redis_server, "gaps-removed")
    for k in (1, 2, 3):
        j.append([("event", 1, "ana", k)])
    j.r.eval(QUARANTINE, 1, j.key, 2)  # the way out (README)
    j = redis_journal(redis_server, "gaps-removed")  # the shard's next try
    assert j.append([("event", 1, "ana", 4)]) == 4
    j.r.delete(f"{j.key}:quarantine")  # inspected, removed
    j = redis_journal(redis_server, "gaps-removed")
    assert [lsn for lsn, _ in j.replay()] == [1, 3, 4]
    assert j.truncate(2) == 1  # the batch before the gap: its record goes with it
    assert j.r.zcard(f"{j.key}:gaps") == 0
    assert [lsn for lsn, _ in j.replay()] == [3, 4]


def test_a_redis_gap_nothing_accepts_keeps_the_batch_after_it_out_of_quarantine(redis_server):
    j = redis_journal(redis_server, "gaps-none")
    for k in (1, 2, 3):
        j.append([("event", 1, "ana", k)])
    j.r.zremrangebyscore(j.key, 2, 2)  # quarantined and removed before any writer opened
    with pytest.raises(StoreCorrupt) as raised:
        list(j.replay())
    message = str(raised.value)
    assert "the batch scored 3 holds LSNs 3-3, after LSN 1" in message
    assert "do not quarantine this batch" in message
    j.r.zadd(f"{j.key}:gaps", {"2": 2})  # the error's way out
    assert [lsn for lsn, _ in j.replay()] == [1, 3]


def test_an_owned_journal_that_finds_a_torn_tail_when_it_skips_goes_on_past_it(tmp_path):
    """OwnedJournal's `skip_past` reads the journal's end again, under the journal's lock: a
    torn tail another incarnation left there is kept and gone past the same way."""
    def opened(incarnation: str) -> DirectoryStore:
        store = DirectoryStore(tmp_path)
        store.own_journal("s0", incarnation, claim=True)
        return store
    z = opened("Z").journal("s0", "os")
    live = opened("L").journal("s0", "os")
    live.append(records(1, 3))
    live.append(records(4, 3))
    live.sync()
    live.close()
    segment = tmp_path / "journals" / "s0" / f"{1:020d}.log"
    data = bytearray(segment.read_bytes())
    data[-2] ^= 0xFF  # L's last frame whole, its CRC failing
    segment.write_bytes(bytes(data))
    opened("Z")  # claimed back
    skipping = threading.Thread(target=z.skip_past, args=(2,), daemon=True)
    skipping.start()
    skipping.join(10)
    assert not skipping.is_alive()
    assert z.last_lsn >= 6
    last = z.append(records(7, 1))
    z.close()
    inspected(tmp_path / "journals" / "s0")
    assert lsns(tmp_path / "journals" / "s0") == [1, 2, 3, last]


def test_a_dropped_redis_journal_leaves_no_record_of_its_gaps_or_its_truncation(redis_server):
    j = redis_journal(redis_server, "gaps-dropped")
    for k in (1, 2, 3):
        j.append([("event", 1, "ana", k)])
    j.r.eval(QUARANTINE, 1, j.key, 2)
    j = redis_journal(redis_server, "gaps-dropped")  # records the gap
    assert j.r.zcard(f"{j.key}:gaps") == 1
    j.truncate(1)
    assert j.r.exists(f"{j.key}:trimmed")
    open_store(f"{redis_server.url}?prefix=gaps-dropped").drop_journal("s0")
    assert not j.r.exists(f"{j.key}:gaps") and not j.r.exists(f"{j.key}:trimmed")
