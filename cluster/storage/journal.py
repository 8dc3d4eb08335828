"""Journal: a shard's write-ahead log. A change is in it before the change is acknowledged.

A frame holds one batch (frames.py: its encoding, and how damage is told from a torn tail),
whose records have log sequence numbers that count from 1 and never repeat: a batch names its
first. Frames live in segment files named after their first LSN; a segment is closed
past `segment_bytes`, or `segment_s` (KAIROS_SNAPSHOT_AFTER_S) after it took its first batch,
so truncating after a snapshot deletes whole files and never rewrites one, and a record
outlives the snapshot covering it by about that long at most (a forgotten customer's, on
the shard its partition moved from, which never learns of the forget). Truncation marks how far
it goes first (truncation_marks.py): replay refuses a start past it that no gap accepts.

Formats: the records are opaque here, but each batch names the record format it was written
in (protocol.JOURNAL_FORMAT; frames.py), and readers pass `decode(record, format)` to `replay`
and `compact`. A batch of a newer format than this code knows raises JournalFormatError, while
opening as well as replaying: it is never misread, nor cut off as a torn tail.

Group commit: `append(records)` writes a whole batch as one frame with one write and, under the
default policy "fsync", one fsync: durability is paid per batch, not per record, and a batch is
in the journal whole or not at all (a process killed inside the write leaves a short frame,
which fails its length or CRC check). `append(records, sync=False)` leaves the fsync to
`sync()`, which another thread may run while appends go on (a shard applies the next round
while the last one's fsync runs, and answers a round only after a sync that started after it
was written). A failed fsync (a sync's, a roll's, an append's) makes the journal refuse appends
and syncs for good, as does closing it with batches unsynced; `close()` then cuts what was
written after the last good sync (none of it was acknowledged). "os" leaves the flush to the
operating system (a process crash loses nothing, a power cut the tail) but for `sync()` (and a
roll: the segment closed): the store runs it before a snapshot or homes name the journal's
LSNs (directory_store.py), so a power cut takes none they name; one fsync (and the directory's)
unless an earlier one covered them, so rounds appending meanwhile cost a batch none again.
"off" journals nothing (recovery then has only snapshots), and takes no LSNs: snapshots and
homes written under "off" carry the last LSN written before, so records journaled after a
restart under another policy continue above every LSN they name (had LSNs run on in memory, the
journal would start again below them, and replay would skip acknowledged records).

A crash can leave half a frame at the end of the last segment: opening the journal cuts the
file back to its last whole frame (that batch was never acknowledged). A failed write (disk
full) is cut back the same way before the error reaches the caller, so the journal never holds
half a batch. Anything else is corruption (JournalCorrupt, naming the file and the byte
offset), never a torn tail: a bad frame that an intact frame follows, a frame whose payload is
whole but whose length is wrong, a batch whose first LSN does not continue the one before it
(within a segment, or from one segment to the next). One case cannot be told apart from a torn
write: a whole-length last frame whose CRC fails (a power cut mid-write, or a bit flip in the
last acknowledged batch). It is cut off as a torn tail, its bytes kept in `quarantine/<lsn>.torn`
and LSNs go on past every LSN it could have held (Gaps): a customer's home may carry one.

Quarantine, the way out of corruption: the operator moves the damaged segment into the journal's
`quarantine/` folder, keeping its name, and the shard recovers from its snapshots, the records
before and after it and the customers' homes, losing only the quarantined records' changes that no
snapshot or home holds.

Gaps: LSNs given out that no segment holds (a torn tail's, a quarantined segment's, a lost tail's)
are recorded on opening as `<first LSN>.gap` beside the segments, holding the last (replay accepts
a jump to the LSN after it; an empty one, as first written, to any), and the segment the LSNs go on
in is created, both fsynced: quarantine/ is evidence only, removable once inspected (a gap an older
Kairos left there alone is accepted, and recorded). Truncation drops it with the segments before.

A batch whose frame would pass MAX_FRAME (what a reader accepts) is refused before anything is
written (JournalFrameTooLarge): it would be acknowledged and then never read back.

Lost tails: a journal can end before a snapshot of it (a disk that lied about an fsync, or "os"
before `sync` fsynced): recovery moves the next LSN past it (`skip_past`), as records numbered
again below it would be skipped by replay, and their snapshots refused: a gap (Gaps), shown as the
empty `quarantine/<its first LSN>.lost` (a crash before the next segment: skipped again).

Erasure: `compact(drop)` rewrites the segments holding records that `drop` selects (a forgotten
customer's), each through a temporary file that is fsynced and renamed over the old one, so a crash
leaves either segment whole. A dropped record leaves an empty frame with its LSN behind (replay
skips it), so LSNs stay contiguous and the last one survives reopening. So are the files in
`quarantine/` (frames.py's `scrub`), once a segment follows them: a rewritten file's size no longer
bounds the LSNs it could hold.

Fencing (store.py): `fence(directory)` creates the file `fenced` in the journal's directory and
fsyncs it and the directory; the writer stats it after each write it acknowledges (after the
fsync under "fsync", after the write under "os") and after each sync, and raises JournalFenced
once it is there (one stat per acknowledgement). A fenced journal is not opened for writing
again, and `drop` (directory_store.py) leaves its fence behind. `JournalReader` reads another
shard's journal without changing anything: no tail cut, no temporary file removed, no mode
changed; a torn tail of the last segment (its writer may be mid-write) ends the replay.

Permissions: the journal's directory (and any parent it creates) is made 0700 and every file it
writes 0600, by explicit modes whatever the umask. Opening a journal whose directory or segments
a group or others may use (an older Kairos wrote them by the umask) takes those bits away and
logs a warning; where it may not (another user owns them) it refuses with PermissionError.
`make_private_dir` and `make_private` are the same rules for directory_store.py.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from kairos.cluster.settings import JOURNAL_POLICIES, SNAPSHOT_AFTER_S
from kairos.cluster.storage import truncation_marks as marks
from kairos.cluster.storage.frames import (GAP, LOST, QUARANTINE, SUFFIX, Decode,
                                           ambiguous_tail, first_lsn, frame, fsync_directory,
                                           kept_records, misnumbered, past_gaps, read_frames,
                                           scrub, segment_batches, written)
from kairos.cluster.storage.private_paths import FILE_MODE, make_private, make_private_dir
from kairos.cluster.storage.store import JournalFenced

log = logging.getLogger("kairos.store")
TORN = ".torn"
FENCE = "fenced"  # in a journal's directory once another shard took its partitions over
FENCE_LOCK = "fence.lock"  # flock: fencing (exclusive) waits for snapshot writes (shared)


class JournalReader:
    """A journal read only (store.py `read_journal`): another shard's, whose writer may run."""

    tail_may_tear = True  # the last segment may end in a write its writer has not finished

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def replay(self, after_lsn: int = 0, decode: Decode | None = None
               ) -> Iterator[tuple[int, Any]]:
        """Every record with an LSN above `after_lsn`, in order (through `decode`, if given).
        JournalCorrupt where LSNs do not follow on from one segment read to the next, or the
        first starts past what a snapshot or truncation covers (truncation_marks.py)."""
        segments = self._segments()
        expect = None  # the first LSN the next segment read must start at
        for i, path in enumerate(segments):
            if i + 1 < len(segments) and first_lsn(segments[i + 1]) - 1 <= after_lsn:
                continue  # every record of this segment is at or below after_lsn
            if first_read := expect is None:  # no segment read before it to follow on from
                expect = marks.expected_start(self.directory, after_lsn, path,
                                               self._quarantined())
            if expect is not None:
                expect = past_gaps(self.directory, expect, first_lsn(path))
            if expect is not None and first_lsn(path) != expect and \
                    expect not in self._quarantined():  # a journal from before gaps' files
                raise misnumbered(path, expect, first_read)
            expect = first_lsn(path)
            tail = self.tail_may_tear and i + 1 == len(segments)
            for first, records, journal_format, _ in segment_batches(path, tail):
                expect = first + len(records)
                for lsn, record in enumerate(records, first):
                    if lsn > after_lsn and record is not None:
                        yield lsn, record if decode is None else decode(record, journal_format)

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{SUFFIX}"))

    def _quarantined(self) -> dict[int, int]:
        """First LSN -> size in bytes of each quarantined segment or torn tail."""
        return {int(path.stem): path.stat().st_size
                for path in (self.directory / QUARANTINE).glob("*") if path.stem.isdigit()}


class Journal(JournalReader):
    tail_may_tear = False  # opening it cut its torn tail, and it alone writes it

    def __init__(self, directory: str | os.PathLike, policy: str = "fsync",
                 segment_bytes: int = 64 << 20, segment_s: float = SNAPSHOT_AFTER_S):
        if policy not in JOURNAL_POLICIES:
            raise ValueError(f"journal policy must be one of {', '.join(JOURNAL_POLICIES)}, "
                             f"got {policy!r}")
        super().__init__(directory)
        self._fence = self.directory / FENCE
        self.fenced = False
        self.check_fence()  # before anything is cut or created: another shard reads it
        make_private_dir(self.directory)
        self.policy = policy
        self.segment_bytes = segment_bytes
        self.segment_s = segment_s
        self._opened = time.monotonic()  # when the current segment took its first batch
        self.last_lsn = 0
        self.synced_lsn = 0  # durable up to here (under "fsync"; else it follows last_lsn)
        self.failed: OSError | None = None  # a sync (or a cut) failed: nothing more is appended
        self._fd: int | None = None
        self._size = 0
        self._synced_size = 0  # of the current segment
        self._before_last: tuple[int, int] | None = None  # (LSN, size) before the last append
        self._lock = threading.Lock()  # a sync against rolling, compacting and closing
        self._recover_tail()
        self.synced_lsn, self._synced_size = self.last_lsn, self._size
        self._disk_lsn = self.last_lsn  # under "os": on disk up to here, names too (`sync`)

    # -- writing -------------------------------------------------------------------------------

    def append(self, records: list[Any], sync: bool = True) -> int:
        """Write the records as one batch (durable per the policy, or once `sync()` ran when
        `sync` is false); the LSN of the last. JournalFenced, the batch unacknowledged, if
        the journal was fenced before it was durable."""
        if self.fenced:
            raise JournalFenced.of(self.directory.name)
        if self.failed is not None:
            raise OSError(f"the journal failed earlier: {self.failed}")
        if not records or self.policy == "off":
            return self.last_lsn  # nothing written: no LSN taken (see the policies above)
        first = self.last_lsn + 1
        data = frame(first, records)
        if self._fd is None or self._size >= self.segment_bytes or \
                self._size and time.monotonic() - self._opened >= self.segment_s:
            self._roll()
        if not self._size:
            self._opened = time.monotonic()
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError as exc:
            try:  # never leave half a batch behind
                os.ftruncate(self._fd, self._size)
                os.lseek(self._fd, self._size, os.SEEK_SET)
            except OSError as cut:  # half a batch may be left: nothing more goes after it
                self.failed = cut
                raise exc from cut
            raise
        if sync and self.policy == "fsync":
            self._fsync()
        self._before_last = (self.last_lsn, self._size)
        self._size += len(data)
        self.last_lsn += len(records)
        if sync or self.policy != "fsync":
            self.synced_lsn, self._synced_size = self.last_lsn, self._size
            self.check_fence()  # acknowledged once this returns: written first, then checked
        return self.last_lsn

    @property
    def unsynced(self) -> bool:
        return self.synced_lsn < self.last_lsn

    def sync(self, needed: int | None = None) -> None:
        """Make every batch appended so far durable (any thread; one sync at a time), under
        "os" on disk while it is open, unless it is up to `needed` already (the LSN a snapshot
        or homes name); JournalFenced if the journal was fenced before it was."""
        with self._lock:
            upto, size = self.last_lsn, self._size
            if min(upto, upto if needed is None else needed) <= (
                    self.synced_lsn if self.policy != "os" or self._fd is None
                    else self._disk_lsn):
                return
            if self.failed is not None:
                raise OSError(f"the journal failed earlier: {self.failed}")
            self._fsync()
            if self.policy == "os":  # the segments it rolled are fsynced, not their names
                fsync_directory(self.directory)
                self._disk_lsn = upto
            if upto > self.synced_lsn:
                self.synced_lsn, self._synced_size = upto, size
            self.check_fence()  # what it covers is acknowledged once this returns

    def retract(self, after_lsn: int) -> bool:
        """Take back the last batch, appended after `after_lsn`, unless a sync covered it:
        its round failed once it was written, and is answered UNAVAILABLE, so replay must not
        apply it. Whether nothing after `after_lsn` is left."""
        with self._lock:
            if self.last_lsn == after_lsn:
                return True
            if self._before_last is None or self._before_last[0] != after_lsn or \
                    self._fd is None or self.policy == "fsync" and self.synced_lsn > after_lsn:
                return False
            (self.last_lsn, self._size), self._before_last = self._before_last, None
            self._disk_lsn = min(self._disk_lsn, after_lsn)  # its LSNs are given out again
            self.synced_lsn, self._synced_size = min(self.synced_lsn, after_lsn), \
                min(self._synced_size, self._size)
            os.ftruncate(self._fd, self._size)
            return True

    def check_fence(self) -> None:
        """JournalFenced once another shard fenced the journal (`fence`): one stat."""
        if not self.fenced:
            try:
                os.stat(self._fence)
            except FileNotFoundError:
                return
            self.fenced = True
        raise JournalFenced.of(self.directory.name)

    def _fsync(self) -> None:
        """fsync the segment being appended. One that fails makes the journal refuse appends
        and syncs for good: Linux reports a failed writeback once, and a later fsync would
        succeed over the pages it dropped, acknowledging batches the disk does not hold."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self.failed = exc
            raise

    def _roll(self) -> None:
        with self._lock:
            self._next_segment()

    def _next_segment(self, durable: bool = False) -> None:
        if self._fd is not None:
            if self.policy == "fsync" and self.synced_lsn < self.last_lsn or \
                    self.policy == "os" and self._disk_lsn < self.last_lsn:
                self._fsync()  # a sync never spans two segments
            self.synced_lsn = self.last_lsn
            fd, self._fd = self._fd, None  # never a closed number, whatever follows
            os.close(fd)
        path = self.directory / f"{self.last_lsn + 1:020d}{SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        self._size = self._synced_size = os.fstat(self._fd).st_size
        if durable or self.policy == "fsync":  # the new file's name must survive a crash
            fsync_directory(self.directory)

    # -- trimming (reading: JournalReader) ------------------------------------------------------

    def truncate(self, upto_lsn: int) -> int:
        """Drop the segments holding only records up to `upto_lsn` (a snapshot covers them);
        the number of files removed. A current segment that holds only such records is closed
        first (the next batch starts a new one): a quiet shard's last records, those of a
        partition since moved or forgotten there, go too."""
        if self._size and upto_lsn >= self.last_lsn:
            self._roll()
        segments = self._segments()
        gone = [path for path, following in zip(segments, segments[1:])
                if first_lsn(following) - 1 <= upto_lsn]
        if gone and upto_lsn > self.trimmed:  # marked before any goes (truncation_marks.py)
            marks.write(self.directory, upto_lsn)
            self.trimmed = upto_lsn
        for path in gone:
            path.unlink()
        start = first_lsn(segments[len(gone)]) if segments else 0
        for gap in self.directory.glob(f"*{GAP}") if self.trimmed >= start - 1 else ():
            if int(gap.name[:-len(GAP)]) < start:
                gap.unlink()  # before the start, and the mark past it: nothing to accept
        if gone and self.policy == "fsync":
            fsync_directory(self.directory)
        return len(gone)

    def compact(self, drop: Callable[[Any], bool], decode: Decode | None = None) -> int:
        """Rewrite the segments without the records `drop` selects (it sees them through
        `decode`, if given); how many were dropped. Each batch keeps its format."""
        self.sync()
        with self._lock:
            return self._compact(drop, decode)

    def _compact(self, drop: Callable[[Any], bool], decode: Decode | None) -> int:
        dropped = 0
        for path in self._segments():
            batches = [(first, *kept_records(records, journal_format, drop, decode),
                        journal_format) for first, records, journal_format, _ in
                       segment_batches(path)]
            gone = sum(k for _, _, k, _ in batches)
            if not gone:
                continue
            dropped += gone
            data = b"".join(frame(first, kept, journal_format)
                            for first, kept, _, journal_format in batches)
            tmp = written(path.with_suffix(".tmp"), data, FILE_MODE)
            if path == self._segments()[-1] and self._fd is not None:
                fd, self._fd = self._fd, None  # the segment being appended: reopen the new
                os.close(fd)  # file (should that fail, the next append rolls a segment)
                os.replace(tmp, path)
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                self._size = self._synced_size = len(data)
            else:
                os.replace(tmp, path)
        if dropped:
            fsync_directory(self.directory)
        return dropped + self._scrub_quarantine(drop, decode)

    def _scrub_quarantine(self, drop: Callable[[Any], bool], decode: Decode | None) -> int:
        """The quarantined files without the records `drop` selects; how many went."""
        dropped = 0
        for path in sorted((self.directory / QUARANTINE).glob("*")):
            if not (path.stem.isdigit() and path.suffix in (SUFFIX, TORN)):
                continue  # not a journal's file: the operator's own
            kept, gone, cut = scrub(path, path.read_bytes(), drop, decode)
            if gone or cut:
                if self._fd is None:
                    self._next_segment()
                os.replace(written(path.with_name(f".{path.name}.tmp"), kept, FILE_MODE), path)
                fsync_directory(path.parent)
                dropped += gone
        return dropped

    def close(self) -> None:
        """Close the segment. Batches no sync covered are cut (none was acknowledged), and
        the journal takes no more appends or syncs: nothing could make them durable now. A
        cut that fails raises its error, the file closed all the same: what it left (whole
        batches never acknowledged) is replayed by the next opening, which the caller must
        know."""
        with self._lock:
            if self._fd is None:
                return
            if self.failed is None and self.synced_lsn < self.last_lsn:
                self.failed = OSError(f"closed with LSNs {self.synced_lsn + 1}-"
                                      f"{self.last_lsn} not synced")
            fd, self._fd = self._fd, None
            try:
                if self.failed is not None:  # written after the last good sync: never acked
                    os.ftruncate(fd, self._synced_size)
            finally:
                os.close(fd)

    # -- opening -------------------------------------------------------------------------------

    def _recover_tail(self) -> None:
        """Find the last LSN, past every LSN a quarantined file could hold ("Gaps"); cut a
        torn tail off the last segment; drop a compaction's temporary files (theirs are whole)."""
        for leftover in [*self.directory.glob("*.tmp"),
                         *(self.directory / QUARANTINE).glob(".*.tmp")]:
            leftover.unlink()
        segments = self._segments()
        for segment in segments:
            make_private(segment)
        first, last = (first_lsn(segments[0]), first_lsn(segments[-1])) if segments else (0, 0)
        self.trimmed = marks.opened(self.directory, max(first - 1, 0))  # truncated up to it
        self.last_lsn, size = self._cut_tail(segments[-1]) if segments else (0, 0)
        quarantined, starts = self._quarantined(), [first_lsn(s) for s in segments]
        # past any LSN they could hold from the last segment on (one before it held fewer)
        past = max([self.last_lsn] + [g + n - 1 for g, n in quarantined.items() if g >= last])
        for gap in (gap for gap in quarantined if gap >= min(first, self.trimmed + 1)):
            # a quarantined segment's (or one an older Kairos left), up to the next segment
            self._record_gap(gap, min((s - 1 for s in starts if s > gap), default=past))
        if segments and past == self.last_lsn:  # else the LSNs go on in a segment of their own
            self._fd, self._size = os.open(segments[-1], os.O_WRONLY | os.O_APPEND), size
        self._go_past(past)

    def _cut_tail(self, last: Path) -> tuple[int, int]:
        """The last segment's last LSN and size once its torn tail is cut."""
        data = last.read_bytes()
        good, lsn = 0, first_lsn(last) - 1
        for first, records, _, end in read_frames(last, data, tail=True):
            lsn, good = first + len(records) - 1, end
        if good < len(data):
            if ambiguous_tail(data, good):
                self._keep_torn(data[good:], lsn + 1)
            else:
                log.warning("%s: cut a torn tail of %d bytes at byte %d (a write the process "
                            "did not finish; never acknowledged)", last, len(data) - good, good)
            with open(last, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        return lsn, good

    def skip_past(self, lsn: int) -> None:
        """Give out no LSN up to `lsn`, which a snapshot covers past the end ("Lost tails")."""
        if lsn <= self.last_lsn:
            return
        self._quarantine(f"{self.last_lsn + 1:020d}{LOST}", b"")
        log.error("%s: ends at LSN %d, but a snapshot covers it up to LSN %d (its tail was lost): "
                  "LSNs go on past it", self.directory, self.last_lsn, lsn)
        with self._lock:
            self._go_past(lsn)

    def _go_past(self, lsn: int) -> None:
        """Give out no LSN up to `lsn`, which no segment holds ("Gaps"): the gap recorded, then
        the segment the LSNs go on in created (under the lock, or opening, which it may hold)."""
        if lsn <= self.last_lsn:
            return
        self._record_gap(self.last_lsn + 1, lsn)
        self.last_lsn = lsn
        self._next_segment(durable=True)

    def _record_gap(self, lsn: int, last: int) -> None:
        """Replay accepts a gap from `lsn` to `last`, whatever is in quarantine/."""
        path = self.directory / f"{lsn:020d}{GAP}"
        if not path.exists():
            fsync_directory(written(path, str(last).encode(), FILE_MODE).parent)

    def _keep_torn(self, data: bytes, lsn: int) -> None:
        """Keep a tail that may have been an acknowledged batch (see the module's text)."""
        path = self._quarantine(f"{lsn:020d}{TORN}", data)
        log.error("%s: the last frame's checksum fails though it is whole: cut off as a torn "
                  "tail, its bytes kept in %s; LSNs go on past every LSN it could hold",
                  self.directory, path)

    def _quarantine(self, name: str, data: bytes) -> Path:
        make_private_dir(self.directory / QUARANTINE)
        path = written(self.directory / QUARANTINE / name, data, FILE_MODE)
        fsync_directory(path.parent)
        return path


def fence(directory: Path) -> None:
    """Fence the journal in `directory` (the module's text), durably: the file, its name and the
    directory's in its parent (a shard that never journaled has none yet), once the snapshot
    writes that found no fence (`unfenced`) are done; the caller reads the journal only then."""
    with fence_lock(directory, exclusive=True):
        fd = os.open(directory / FENCE, os.O_WRONLY | os.O_CREAT, FILE_MODE)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_directory(directory)
        fsync_directory(directory.parent)


@contextlib.contextmanager
def fence_lock(directory: Path, exclusive: bool) -> Iterator[None]:
    make_private_dir(directory)
    fd = os.open(directory / FENCE_LOCK, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # and with it the lock

