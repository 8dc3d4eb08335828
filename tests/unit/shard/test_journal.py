"""The journal: group commit, replay, torn tails, corruption, truncation, disk full, kill -9
while writing, and record formats."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
import zlib

import msgpack
import pytest

from kairos.cluster.protocol import JOURNAL_FORMAT
from kairos.cluster.storage import frames
from kairos.cluster.storage import journal as journal_module
from kairos.cluster.storage.frames import (HEADER, JournalCorrupt, JournalFormatError, pack_batch,
                                           unpack_batch)
from kairos.cluster.storage.journal import Journal
from kairos.cluster.storage.store import JournalFenced, StoreUnavailable


def records(first: int, n: int) -> list:
    return [["event", f"c{i % 7}", "page_view", 1.0 * i, {"category": "home"}]
            for i in range(first, first + n)]


def test_batches_replay_in_order_across_segments_and_reopening(tmp_path):
    j = Journal(tmp_path, segment_bytes=2000)
    for b in range(20):
        assert j.append(records(10 * b, 10)) == 10 * (b + 1)
    j.close()
    assert len(list(tmp_path.glob("*.log"))) > 3
    j = Journal(tmp_path, segment_bytes=2000)
    assert j.last_lsn == 200
    assert [r for _, r in j.replay()] == records(0, 200)
    assert [lsn for lsn, _ in j.replay(after_lsn=137)] == list(range(138, 201))
    assert j.append(records(200, 1)) == 201


def test_one_fsync_per_batch(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: calls.append(fd) or real(fd))
    j = Journal(tmp_path)
    j.append(records(0, 1))  # the first batch also makes the segment's name durable
    calls.clear()
    j.append(records(1, 500))
    assert len(calls) == 1
    j2 = Journal(tmp_path / "os", policy="os")
    calls.clear()
    j2.append(records(0, 5))
    assert calls == []


def test_policy_off_writes_nothing_and_a_bad_policy_is_refused(tmp_path):
    j = Journal(tmp_path, policy="off")
    assert j.append(records(0, 3)) == 0  # and takes no LSNs
    assert list(j.replay()) == []
    with pytest.raises(ValueError, match="journal policy must be one of fsync, os, off"):
        Journal(tmp_path, policy="sometimes")


def test_a_torn_tail_is_cut_at_the_last_whole_frame(tmp_path):
    j = Journal(tmp_path)
    j.append(records(0, 5))
    j.close()
    segment = sorted(tmp_path.glob("*.log"))[-1]
    whole = segment.stat().st_size
    with open(segment, "ab") as f:  # a crash in the middle of the next batch's write
        f.write(frames.frame(6, records(5, 1)[0])[:-3])
    j = Journal(tmp_path)
    assert segment.stat().st_size == whole and j.last_lsn == 5
    assert j.append(records(5, 1)) == 6
    assert [lsn for lsn, _ in j.replay()] == [1, 2, 3, 4, 5, 6]


def test_a_damaged_frame_before_the_tail_raises(tmp_path):
    j = Journal(tmp_path, segment_bytes=300)
    for b in range(6):
        j.append(records(b, 2))
    j.close()
    first = sorted(tmp_path.glob("*.log"))[0]
    data = bytearray(first.read_bytes())
    data[12] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match="damaged frame at byte 0"):
        list(Journal(tmp_path, segment_bytes=300).replay())


def test_truncate_drops_whole_segments_a_snapshot_covers(tmp_path):
    j = Journal(tmp_path, segment_bytes=1000)
    for b in range(30):
        j.append(records(b * 4, 4))
    segments = sorted(tmp_path.glob("*.log"))
    covered = int(segments[3].name[:-4]) - 1  # everything in the first three segments
    assert j.truncate(covered) == 3
    assert [lsn for lsn, _ in j.replay(covered)] == list(range(covered + 1, 121))
    assert j.truncate(0) == 0


def test_a_failed_write_leaves_no_half_batch(tmp_path, monkeypatch):
    j = Journal(tmp_path)
    j.append(records(0, 3))
    real_write = os.write

    def disk_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module.os, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        j.append(records(3, 10))
    monkeypatch.setattr(journal_module.os, "write", real_write)
    assert j.last_lsn == 3
    assert j.append(records(3, 1)) == 4
    j.close()
    assert [lsn for lsn, _ in Journal(tmp_path).replay()] == [1, 2, 3, 4]


WRITER = """
import sys
from kairos.cluster.storage.journal import Journal
j = Journal(sys.argv[1])
n = 0
while True:
    n = j.append([["event", "c", "page_view", float(n + k), {}] for k in range(50)])
    print(n, flush=True)  # acknowledged: durable before this line
"""


def test_kill_9_while_writing_loses_no_acknowledged_record(tmp_path):
    """20 times: a writer acknowledges batches (fsync first) and is killed at a random
    moment; every acknowledged record is there after reopening, and nothing twice."""
    directory = tmp_path / "j"
    acked = 0
    for round_ in range(20):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)],
                                  stdout=subprocess.PIPE, text=True)
        lines = []
        deadline = time.monotonic() + 0.05 + 0.01 * (round_ % 5)
        while time.monotonic() < deadline or not lines:
            lines.append(writer.stdout.readline())
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        acked = max(acked, int(lines[-1]))
        lsns = [lsn for lsn, _ in Journal(directory).replay()]
        assert lsns == list(range(1, len(lsns) + 1)) and len(lsns) >= acked
        assert len(lsns) % 50 == 0  # whole batches only


def test_a_deferred_sync_covers_what_was_appended_and_rolls_make_segments_durable(
        tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    j = Journal(tmp_path, segment_bytes=2000)
    j.append(records(0, 1))  # opens the first segment
    synced.clear()
    j.append(records(1, 2), sync=False)
    j.append(records(3, 3), sync=False)
    assert j.unsynced and j.synced_lsn == 1 and not synced
    j.sync()
    assert not j.unsynced and j.synced_lsn == 6 and len(synced) == 1
    j.sync()  # nothing new: no fsync
    assert len(synced) == 1
    while len(list(tmp_path.glob("*.log"))) < 3:  # each roll syncs the segment it closes
        j.append(records(j.last_lsn, 10), sync=False)
    assert j.synced_lsn >= 6 and j.unsynced


def test_a_failed_sync_refuses_appends_and_close_cuts_what_it_did_not_cover(tmp_path,
                                                                            monkeypatch):
    j = Journal(tmp_path)
    j.append(records(0, 5))
    j.append(records(5, 5), sync=False)

    def failing(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(journal_module.os, "fsync", failing)
    with pytest.raises(OSError, match="I/O error"):
        j.sync()
    with pytest.raises(OSError, match="the journal failed earlier"):
        j.append(records(10, 1), sync=False)
    monkeypatch.undo()
    j.close()
    j = Journal(tmp_path)
    assert j.last_lsn == 5  # the unsynced batch was never acknowledged
    assert [r for _, r in j.replay()] == records(0, 5)


@pytest.mark.parametrize("where", ["a roll", "an append"])
def test_a_failed_fsync_anywhere_fails_the_journal_for_good(tmp_path, monkeypatch, where):
    """Linux reports a failed writeback once: the next fsync succeeds over dropped pages, so
    no later sync may acknowledge what the failed one covered."""
    j = Journal(tmp_path, segment_bytes=1 if where == "a roll" else 64 << 20)
    j.append(records(0, 5))
    j.append(records(5, 5), sync=False)  # written, not yet acknowledged
    real = os.fsync
    failures = []

    def once(fd):
        if not failures:
            failures.append(fd)
            raise OSError(errno.EIO, "I/O error")
        return real(fd)

    monkeypatch.setattr(journal_module.os, "fsync", once)
    with pytest.raises(OSError, match="I/O error"):
        j.append(records(10, 1))  # rolls (fsyncing the batch before), or fsyncs itself
    with pytest.raises(OSError, match="the journal failed earlier"):
        j.sync()
    j.close()
    assert [r for _, r in Journal(tmp_path).replay()] == records(0, 5)


def test_a_sync_after_closing_acknowledges_nothing_it_did_not_sync(tmp_path, monkeypatch):
    """A dropped shard's journal is closed while a round still waits for its group commit:
    that sync must fail, not return as if it covered the round."""
    j = Journal(tmp_path)
    j.append(records(0, 5))
    j.append(records(5, 5), sync=False)
    j.close()
    with pytest.raises(OSError, match="closed with LSNs 6-10 not synced"):
        j.sync()
    with pytest.raises(OSError, match="closed with LSNs 6-10 not synced"):
        j.append(records(10, 1))  # a new segment would have let a sync cover 6-10
    assert [r for _, r in Journal(tmp_path).replay()] == records(0, 5)  # never acknowledged


def test_a_roll_that_cannot_open_its_segment_keeps_no_closed_descriptor(tmp_path,
                                                                         monkeypatch):
    j = Journal(tmp_path, segment_bytes=1)
    j.append(records(0, 1))
    real = os.open

    def full(path, *args, **kwargs):
        if str(path).endswith(".log"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(journal_module.os, "open", full)
    with pytest.raises(OSError, match="No space"):
        j.append(records(1, 1))
    assert j._fd is None  # not a number the process may hand to another file
    monkeypatch.undo()
    j.append(records(1, 1))  # the next append rolls again
    j.close()
    assert [r for _, r in Journal(tmp_path).replay()] == records(0, 2)


def write_frames(directory, batches) -> None:
    """A segment of frames whose payloads are `batches` as given (any layout, any format)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = b""
    for batch in batches:
        payload = msgpack.packb(batch, use_bin_type=True)
        data += HEADER.pack(len(payload), zlib.crc32(payload)) + payload
    (directory / f"{batches[0][0]:020d}.log").write_bytes(data)


def test_batches_carry_the_record_format_and_format_1_batches_still_read(tmp_path):
    """Journals written before formats were numbered hold `[first lsn, records]` frames: they
    read as format 1, beside the new ones, and `decode` is told each batch's format."""
    write_frames(tmp_path, [[1, records(0, 2)], [3, records(2, 1)]])
    j = Journal(tmp_path)
    assert j.last_lsn == 3
    assert j.append(records(3, 2)) == 5
    seen = [(lsn, journal_format) for lsn, (_, journal_format)
            in j.replay(decode=lambda record, journal_format: (record, journal_format))]
    assert seen == [(1, 1), (2, 1), (3, 1), (4, JOURNAL_FORMAT), (5, JOURNAL_FORMAT)]
    assert [r for _, r in j.replay()] == records(0, 5)
    first, batch, journal_format = unpack_batch(pack_batch(4, records(3, 2)))
    assert (first, batch, journal_format) == (4, records(3, 2), JOURNAL_FORMAT)
    assert msgpack.unpackb(pack_batch(1, [], 1)) == [1, []]


def test_compaction_keeps_each_batchs_format(tmp_path):
    write_frames(tmp_path, [[1, records(0, 3)]])
    j = Journal(tmp_path)
    j.append(records(3, 3))
    formats = []

    def drop(record_and_format):
        record, journal_format = record_and_format
        formats.append(journal_format)
        return record[1] == "c1"
    assert j.compact(drop, decode=lambda record, journal_format: (record, journal_format)) == 1
    assert formats == [1, 1, 1] + [JOURNAL_FORMAT] * 3
    j.close()
    j = Journal(tmp_path)
    assert [lsn for lsn, _ in j.replay()] == [1, 3, 4, 5, 6]
    assert [fmt for _, (_, fmt) in j.replay(decode=lambda r, fmt: (r, fmt))] == \
        [1, 1] + [JOURNAL_FORMAT] * 3


def test_a_batch_of_a_newer_format_is_refused_not_cut_off(tmp_path):
    newer = JOURNAL_FORMAT + 1
    write_frames(tmp_path, [[1, records(0, 2), newer]])
    size = sorted(tmp_path.glob("*.log"))[0].stat().st_size
    with pytest.raises(JournalFormatError, match=f"record format {newer}; this Kairos reads "
                                                 f"formats up to {JOURNAL_FORMAT}"):
        Journal(tmp_path)  # opening reads the last segment's tail
    assert sorted(tmp_path.glob("*.log"))[0].stat().st_size == size
    assert isinstance(JournalFormatError("x"), ValueError)


# -- corruption: told apart from a torn tail, quarantined by the operator ----------------------

def flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def frame_offsets(path) -> list[int]:
    """Where each frame of a segment starts."""
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        out.append(pos)
        pos += HEADER.size + HEADER.unpack_from(data, pos)[0]
    return out


def test_a_bit_flip_in_the_middle_of_the_last_segment_is_corruption_not_a_torn_tail(tmp_path):
    j = Journal(tmp_path)
    for b in range(5):
        j.append(records(3 * b, 3))
    j.close()
    segment = sorted(tmp_path.glob("*.log"))[-1]
    size, second = segment.stat().st_size, frame_offsets(segment)[1]
    flip(segment, second + HEADER.size + 5)
    with pytest.raises(JournalCorrupt,
                       match=f"{segment.name}: damaged frame at byte {second} of {size}"):
        Journal(tmp_path)
    assert segment.stat().st_size == size  # nothing acknowledged was cut off
    assert isinstance(JournalCorrupt("x"), StoreUnavailable)


def test_a_frame_whose_length_is_damaged_is_corruption_even_at_the_end(tmp_path):
    j = Journal(tmp_path)
    j.append(records(0, 3))
    j.append(records(3, 3))
    j.close()
    segment = sorted(tmp_path.glob("*.log"))[-1]
    size, last = segment.stat().st_size, frame_offsets(segment)[-1]
    flip(segment, last + 1)  # the length now runs past the end of the file
    with pytest.raises(JournalCorrupt, match=f"damaged frame at byte {last}"):
        Journal(tmp_path)
    assert segment.stat().st_size == size


def test_lsns_that_do_not_follow_on_are_corruption(tmp_path):
    write_frames(tmp_path / "within", [[1, records(0, 2)], [5, records(2, 1)]])
    with pytest.raises(JournalCorrupt,
                       match="the batch at byte .* starts at LSN 5, not 3"):
        Journal(tmp_path / "within")
    write_frames(tmp_path / "across", [[1, records(0, 2)]])
    write_frames(tmp_path / "across", [[7, records(2, 1)]])
    j = Journal(tmp_path / "across")
    with pytest.raises(JournalCorrupt,
                       match="starts at LSN 7, but the segment before it ends at LSN 2"):
        list(j.replay())


def test_a_whole_last_frame_that_fails_its_crc_is_cut_kept_and_its_lsns_never_reused(tmp_path):
    j = Journal(tmp_path)
    j.append(records(0, 3))
    j.append(records(3, 3))
    j.close()
    segment = sorted(tmp_path.glob("*.log"))[-1]
    last = frame_offsets(segment)[-1]
    torn = segment.read_bytes()[last:]
    flip(segment, last + HEADER.size + 3)
    j = Journal(tmp_path)
    assert [lsn for lsn, _ in j.replay()] == [1, 2, 3]
    kept = tmp_path / "quarantine" / f"{4:020d}.torn"
    assert kept.read_bytes()[:HEADER.size] == torn[:HEADER.size]
    lsn = j.append(records(6, 1))
    assert lsn > 6  # LSNs 4-6 may be on a customer's home: never given out again
    j.close()
    j = Journal(tmp_path)
    assert [n for n, _ in j.replay()] == [1, 2, 3, lsn] and j.last_lsn == lsn


def test_a_quarantined_segment_lets_the_journal_open_and_replay_the_rest(tmp_path):
    j = Journal(tmp_path, segment_bytes=300)
    for b in range(8):
        j.append(records(2 * b, 2))
    j.close()
    segments = sorted(tmp_path.glob("*.log"))
    assert len(segments) == 3
    bad = segments[1]
    flip(bad, HEADER.size + 4)
    with pytest.raises(JournalCorrupt, match=f"{bad.name}: damaged frame"):
        list(Journal(tmp_path, segment_bytes=300).replay())
    (tmp_path / "quarantine").mkdir()
    bad.rename(tmp_path / "quarantine" / bad.name)  # the documented way out
    j = Journal(tmp_path, segment_bytes=300)
    lost = range(int(bad.stem), int(segments[2].stem))
    assert [lsn for lsn, _ in j.replay()] == [n for n in range(1, 17) if n not in lost]
    assert j.append(records(16, 1)) == 17
    # the last segment quarantined: the LSNs it held are never given out again
    last = sorted(tmp_path.glob("*.log"))[-1]
    j.close()
    last.rename(tmp_path / "quarantine" / last.name)
    j = Journal(tmp_path, segment_bytes=300)
    assert j.append(records(17, 1)) > 17
    assert [lsn for lsn, _ in j.replay()][-1] == j.last_lsn


def test_a_batch_past_the_frame_limit_is_refused_before_anything_is_written(tmp_path,
                                                                             monkeypatch):
    j = Journal(tmp_path)
    j.append(records(0, 2))
    size = sorted(tmp_path.glob("*.log"))[-1].stat().st_size
    monkeypatch.setattr(frames, "MAX_FRAME", 1000)
    with pytest.raises(StoreUnavailable,
                       match=r"a batch of 100 records from LSN 3 packs to \d+ bytes, past the "
                             r"journal's 1000-byte frame limit"):
        j.append(records(2, 100))
    assert j.last_lsn == 2 and sorted(tmp_path.glob("*.log"))[-1].stat().st_size == size
    assert j.append(records(2, 1)) == 3
    j.close()
    assert [lsn for lsn, _ in Journal(tmp_path).replay()] == [1, 2, 3]


def test_a_zero_filled_tail_from_a_power_cut_is_cut_as_torn_and_never_misread(tmp_path):
    """A file system may extend a file before its data lands: zeros read as a frame of
    length 0 whose CRC (0) holds, which no batch ever is: a torn tail, cut quietly
    (tests/unit/storage/test_zero_tail.py)."""
    j = Journal(tmp_path)
    j.append(records(0, 3))
    j.close()
    segment = sorted(tmp_path.glob("*.log"))[-1]
    with open(segment, "ab") as f:
        f.write(bytes(64))
    j = Journal(tmp_path)
    assert [lsn for lsn, _ in j.replay()] == [1, 2, 3]
    assert not (tmp_path / "quarantine").exists()
    assert j.append(records(3, 1)) == 4


def test_records_journaled_after_running_with_the_journal_off_are_never_skipped(tmp_path,
                                                                                compiled):
    """Under "off" LSNs ran on in memory and snapshots named them; restarted under "fsync",
    the journal began again at 1, and replay skipped every record the snapshot's LSN
    covered: acknowledged events lost. And a round's records under "off" are stamped with
    the last LSN written, not numbers below it (replay would apply them again)."""
    from kairos.cluster.shard.shard import Shard
    from kairos.cluster.storage.directory_store import DirectoryStore
    from tests.unit.shard.test_shard import N_PARTITIONS, T0, Clock, event, profile
    clock = Clock()

    def started(policy: str) -> Shard:
        s = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS,
                  store=DirectoryStore(tmp_path), clock=clock, journal_policy=policy,
                  idle_s=10.0)
        s.recover()
        return s

    def applied(s: Shard) -> int:
        return s.process([profile("ana", T0 + 200)])[0][0].value["events_applied"]

    s = started("fsync")
    for i in range(5):
        s.process([event("ana", "page_view", T0 + i, category="home")])  # LSNs 1-5
    s.close()
    s = started("off")
    for i in range(50):  # in rounds of several records, ana's first
        s.process([event(c, "page_view", T0 + 10 + i, category="home")
                   for c in ("ana", "bob", "cy")])
    clock.now += 10**6
    s.passivate(clock.now)  # homes name the LSN they hold: 5, not one below
    s.close()
    s = started("fsync")
    assert applied(s) == 55  # the journal's LSNs 1-5 are not applied again over the home
    for i in range(10):
        s.process([event("ana", "page_view", T0 + 100 + i, category="home")])
    assert applied(s) == 65
    s.close()  # a crash: the home has 55, the journal the 10 since
    assert applied(started("fsync")) == 65


@pytest.mark.parametrize("policy", ["fsync", "os"])
def test_a_round_that_fails_once_its_records_are_written_leaves_none_for_replay(
        tmp_path, compiled, policy):
    """It is answered UNAVAILABLE and the shard rebuilt: replaying its records applied what
    nobody was told had happened."""
    from kairos.cluster.shard.shard import Shard
    from kairos.cluster.storage.directory_store import DirectoryStore
    from tests.unit.shard.test_shard import N_PARTITIONS, T0, Clock, event, profile
    clock = Clock()

    def started() -> Shard:
        s = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS,
                  store=DirectoryStore(tmp_path), clock=clock, journal_policy=policy)
        s.sync_commits = False  # as under ShardHost: a round is synced after it returns
        s.recover()
        return s

    s = started()
    s.process([event("ana", "app_open", T0)])
    s.journal.sync()

    def failing_flush():
        raise RuntimeError("a bug in the decision log")

    s.decision_log.flush = failing_flush
    with pytest.raises(RuntimeError):
        s.process([event("ana", "app_open", T0 + 1), event("bob", "app_open", T0 + 1)])
    s.journal.sync()  # as ShardHost does for the dropped Shard's earlier rounds
    s.close()
    again = started()
    assert again.process([profile("ana", T0 + 2)])[0][0].value["events_applied"] == 1
    assert again.process([profile("bob", T0 + 2)])[0][0].status == "missing"


def snapshot_of(directory) -> dict:
    """Every file under `directory`: its bytes and mode."""
    return {path.relative_to(directory): (path.read_bytes(), path.stat().st_mode)
            for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("tail", ["torn", "whole but failing its CRC"])
def test_reading_another_shards_journal_changes_nothing(tmp_path, tail):
    """Its writer may be mid-write: the reader neither cuts nor keeps aside its tail, removes
    no temporary file, changes no mode, and stops at the tail."""
    j = Journal(tmp_path / "j", segment_bytes=400)
    for b in range(6):
        j.append(records(2 * b, 2))
    segment = sorted((tmp_path / "j").glob("*.log"))[-1]
    with open(segment, "ab") as f:  # the next batch, as far as the writer got
        whole = frames.frame(13, records(12, 2))
        f.write(whole[:-3] if tail == "torn" else whole[:-1] + bytes([whole[-1] ^ 0xFF]))
    (tmp_path / "j" / "00000000000000000009.tmp").write_bytes(b"a compaction's")
    os.chmod(segment, 0o644)
    before = snapshot_of(tmp_path / "j")
    reader = journal_module.JournalReader(tmp_path / "j")
    assert [r for _, r in reader.replay()] == records(0, 12)
    assert [lsn for lsn, _ in reader.replay(after_lsn=9)] == [10, 11, 12]
    assert snapshot_of(tmp_path / "j") == before
    assert list(journal_module.JournalReader(tmp_path / "none").replay()) == []
    assert not (tmp_path / "none").exists()
    assert j.append(records(12, 2)) == 14  # the writer is none the wiser


@pytest.mark.parametrize("step", ["an append", "a deferred sync", "an append under os"])
def test_a_fence_that_overtakes_a_write_refuses_to_acknowledge_it(tmp_path, monkeypatch,
                                                                  step):
    """The heir fences the journal while its writer is between the write (and fsync) and the
    acknowledgement: the writer checks the fence after them, so it refuses; everything it
    acknowledged before is in what the heir then reads, and it writes nothing more."""
    j = Journal(tmp_path, policy="os" if step == "an append under os" else "fsync")
    j.append(records(0, 3))
    if step == "a deferred sync":
        j.append(records(3, 2), sync=False)
    overtaken = "write" if step == "an append under os" else "fsync"
    real = getattr(os, overtaken)

    def then_fenced(*args):
        done = real(*args)
        monkeypatch.undo()  # the fence fsyncs too
        journal_module.fence(tmp_path)
        return done
    monkeypatch.setattr(journal_module.os, overtaken, then_fenced)
    with pytest.raises(JournalFenced, match=f"journal {tmp_path.name} is fenced"):
        j.sync() if step == "a deferred sync" else j.append(records(3, 2))
    assert [r for _, r in journal_module.JournalReader(tmp_path).replay()][:3] == records(0, 3)
    size = sum(path.stat().st_size for path in tmp_path.glob("*.log"))
    with pytest.raises(JournalFenced):
        j.append(records(5, 1))
    with pytest.raises(JournalFenced):
        Journal(tmp_path)  # rebuilding the shard
    j.close()
    assert sum(path.stat().st_size for path in tmp_path.glob("*.log")) == size
