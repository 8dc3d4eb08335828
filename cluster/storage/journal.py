"""Journal: a shard's write-ahead log. A change is in it before the change is acknowledged.

A frame holds one batch: a 4-byte length, the CRC-32 of the payload and the payload, msgpack
of `[first lsn, records, format]`, where the log sequence number counts records from 1 and
never repeats. Frames live in segment files named after their first LSN; a segment is closed
past `segment_bytes`, so truncating after a snapshot deletes whole files and never rewrites
one.

Formats: the records are opaque here, but each batch names the record format it was written
in (protocol.JOURNAL_FORMAT; batches written before formats were numbered have two elements
and are format 1), and readers pass `decode(record, format)` to `replay` and `compact` to see
records as they were meant. A batch of a format newer than this code knows raises
JournalFormatError, while opening as well as replaying: it is never misread, nor cut off as a
torn tail. `pack_batch`/`unpack_batch` are the batch encoding, for the stores that keep
batches elsewhere (redis_store.py).

Group commit: `append(records)` writes a whole batch as one frame with one write and, under
the default policy "fsync", one fsync, so the cost of durability is paid per batch, not per
record, and a batch is in the journal whole or not at all (a process killed inside the write
leaves a short frame, which fails its length or CRC check). `append(records, sync=False)`
leaves the fsync to `sync()`, which another thread may run while appends go on (a shard goes
on applying the next round while the last one's fsync runs, and answers a round only after
a sync that started after it was written). A failed sync makes the journal refuse appends;
`close()` then cuts what was written after the last good sync (none of it was acknowledged).
"os" leaves the flush to the operating system (survives a process crash, not a power cut);
"off" journals nothing (recovery then has only snapshots).

A crash can leave half a frame at the end of the last segment: opening the journal cuts the
file back to its last whole frame (that batch was never acknowledged). A bad frame anywhere
else is corruption and raises. A failed write (disk full) is cut back the same way before the
error reaches the caller, so the journal never holds half a batch.

Erasure: `compact(drop)` rewrites the segments holding records that `drop` selects (a forgotten
customer's), each through a temporary file that is fsynced and renamed over the old one, so a
crash leaves either segment whole. A dropped record leaves an empty frame with its LSN behind
(replay skips it), so LSNs stay contiguous and the last one survives reopening.

Permissions: the journal's directory (and any parent it creates) is made 0700 and every file it
writes (segments, a compaction's temporary file) 0600, by explicit modes whatever the umask.
Opening a journal whose directory or segments a group or others may use (an older Kairos wrote
them by the umask) takes those bits away and logs a warning; where it may not (another user
owns them) it refuses with PermissionError. `make_private_dir` and `make_private` are the same
rules for directory_store.py.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import struct
import threading
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import msgpack

from kairos.cluster.protocol import JOURNAL_FORMAT
from kairos.cluster.settings import JOURNAL_POLICIES

log = logging.getLogger("kairos.store")
DIR_MODE = 0o700  # every directory of a store: its owner's only
FILE_MODE = 0o600  # every file of a store
HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload
MAX_FRAME = 64 << 20
SUFFIX = ".log"


class JournalCorrupt(Exception):
    """A frame before the last segment's tail is damaged: the journal cannot be trusted."""


class JournalFormatError(ValueError):
    """A batch was written in a record format newer than this code reads (a newer Kairos
    wrote it): refused whole, never skipped or cut off."""


Decode = Callable[[Any, int], Any]  # (record as stored, its batch's format) -> record


class Journal:
    def __init__(self, directory: str | os.PathLike, policy: str = "fsync",
                 segment_bytes: int = 64 << 20):
        if policy not in JOURNAL_POLICIES:
            raise ValueError(f"journal policy must be one of {', '.join(JOURNAL_POLICIES)}, "
                             f"got {policy!r}")
        self.directory = Path(directory)
        make_private_dir(self.directory)
        self.policy = policy
        self.segment_bytes = segment_bytes
        self.last_lsn = 0
        self.synced_lsn = 0  # durable up to here (under "fsync"; else it follows last_lsn)
        self.failed: OSError | None = None  # a sync failed: nothing more is appended
        self._fd: int | None = None
        self._size = 0
        self._synced_size = 0  # of the current segment
        self._lock = threading.Lock()  # a sync against rolling, compacting and closing
        self._recover_tail()
        self.synced_lsn, self._synced_size = self.last_lsn, self._size

    # -- writing -------------------------------------------------------------------------------

    def append(self, records: list[Any], sync: bool = True) -> int:
        """Write the records as one batch (durable per the policy, or once `sync()` ran when
        `sync` is false); the LSN of the last."""
        if self.failed is not None:
            raise OSError(f"the journal failed earlier: {self.failed}")
        if not records or self.policy == "off":
            self.last_lsn += len(records)
            self.synced_lsn = self.last_lsn
            return self.last_lsn
        if self._fd is None or self._size >= self.segment_bytes:
            self._roll()
        first = self.last_lsn + 1
        data = _frame(first, records)
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            if sync and self.policy == "fsync":
                os.fsync(self._fd)
        except OSError:
            os.ftruncate(self._fd, self._size)  # never leave half a batch behind
            os.lseek(self._fd, self._size, os.SEEK_SET)
            raise
        self._size += len(data)
        self.last_lsn += len(records)
        if sync or self.policy != "fsync":
            self.synced_lsn, self._synced_size = self.last_lsn, self._size
        return self.last_lsn

    @property
    def unsynced(self) -> bool:
        return self.synced_lsn < self.last_lsn

    def sync(self) -> None:
        """Make every batch appended so far durable (any thread; one sync at a time)."""
        with self._lock:
            upto, size = self.last_lsn, self._size
            if upto <= self.synced_lsn or self._fd is None:
                return
            if self.failed is not None:
                raise OSError(f"the journal failed earlier: {self.failed}")
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self.failed = exc
                raise
            if upto > self.synced_lsn:
                self.synced_lsn, self._synced_size = upto, size

    def _roll(self) -> None:
        with self._lock:
            if self._fd is not None:
                if self.policy == "fsync" and self.synced_lsn < self.last_lsn:
                    os.fsync(self._fd)  # a sync never spans two segments
                os.close(self._fd)
            path = self.directory / f"{self.last_lsn + 1:020d}{SUFFIX}"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
            self._size = self._synced_size = os.fstat(self._fd).st_size
            self.synced_lsn = self.last_lsn
            if self.policy == "fsync":
                fsync_directory(self.directory)  # the new file's name must survive a crash

    # -- reading -------------------------------------------------------------------------------

    def replay(self, after_lsn: int = 0, decode: Decode | None = None
               ) -> Iterator[tuple[int, Any]]:
        """Every record with an LSN above `after_lsn`, in order (through `decode`, if given)."""
        segments = self._segments()
        for i, path in enumerate(segments):
            if i + 1 < len(segments) and _first_lsn(segments[i + 1]) - 1 <= after_lsn:
                continue  # every record of this segment is at or below after_lsn
            for first, records, journal_format, _ in _batches(path):
                for lsn, record in enumerate(records, first):
                    if lsn > after_lsn and record is not None:
                        yield lsn, record if decode is None else decode(record, journal_format)

    def truncate(self, upto_lsn: int) -> int:
        """Drop the segments holding only records up to `upto_lsn` (a snapshot covers them);
        the number of files removed."""
        segments = self._segments()
        removed = 0
        for path, following in zip(segments, segments[1:]):
            if _first_lsn(following) - 1 <= upto_lsn:
                path.unlink()
                removed += 1
        if removed and self.policy == "fsync":
            fsync_directory(self.directory)
        return removed

    def compact(self, drop: Callable[[Any], bool], decode: Decode | None = None) -> int:
        """Rewrite the segments without the records `drop` selects (it sees them through
        `decode`, if given); how many were dropped. Each batch keeps its format."""
        self.sync()
        with self._lock:
            return self._compact(drop, decode)

    def _compact(self, drop: Callable[[Any], bool], decode: Decode | None) -> int:
        dropped = 0
        for path in self._segments():
            batches, gone = [], 0
            for first, records, journal_format, _ in _batches(path):
                kept = []
                for r in records:
                    if r is not None and drop(r if decode is None else decode(r, journal_format)):
                        r, gone = None, gone + 1  # an empty frame slot keeps its LSN
                    kept.append(r)
                batches.append((first, kept, journal_format))
            if not gone:
                continue
            dropped += gone
            data = b"".join(_frame(first, kept, journal_format)
                            for first, kept, journal_format in batches)
            tmp = path.with_suffix(".tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()  # so that the file is created, with FILE_MODE
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE),
                           "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if path == self._segments()[-1] and self._fd is not None:
                os.close(self._fd)  # the segment being appended: reopen the new file
                os.replace(tmp, path)
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                self._size = self._synced_size = len(data)
            else:
                os.replace(tmp, path)
        if dropped:
            fsync_directory(self.directory)
        return dropped

    def close(self) -> None:
        with self._lock:
            if self._fd is None:
                return
            if self.failed is not None:  # written after the last good sync: never acked
                os.ftruncate(self._fd, self._synced_size)
            os.close(self._fd)
            self._fd = None

    def destroy(self) -> None:
        """Close and delete the whole journal (its partitions are snapshotted elsewhere)."""
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- opening -------------------------------------------------------------------------------

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{SUFFIX}"))

    def _recover_tail(self) -> None:
        """Find the last LSN; cut a torn tail off the last segment (and drop a compaction's
        temporary file: the segment it was to replace is whole)."""
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink()
        segments = self._segments()
        for segment in segments:
            make_private(segment)
        if not segments:
            return
        last = segments[-1]
        good, lsn = 0, _first_lsn(last) - 1
        for first, records, _, end in _batches(last, whole_only=False):
            lsn, good = first + len(records) - 1, end
        if good < last.stat().st_size:
            with open(last, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        self.last_lsn = lsn
        self._fd = os.open(last, os.O_WRONLY | os.O_APPEND)
        self._size = good


def pack_batch(first_lsn: int, records: list[Any], journal_format: int = JOURNAL_FORMAT
               ) -> bytes:
    """A batch as stored: msgpack of `[first lsn, records, format]` (format 1: without it,
    as it was written before formats were numbered)."""
    batch = [first_lsn, records] if journal_format == 1 else [first_lsn, records, journal_format]
    return msgpack.packb(batch, use_bin_type=True)


def unpack_batch(data: bytes) -> tuple[int, list, int]:
    """(first LSN, records, format) of a stored batch; JournalFormatError for a format newer
    than this code writes."""
    first, records, *rest = msgpack.unpackb(data, raw=False, strict_map_key=False)
    journal_format = rest[0] if rest else 1
    if journal_format > JOURNAL_FORMAT:
        raise JournalFormatError(f"journal batch at LSN {first} has record format "
                                 f"{journal_format}; this Kairos reads formats up to "
                                 f"{JOURNAL_FORMAT}")
    return first, records, journal_format


def _frame(first_lsn: int, records: list[Any], journal_format: int = JOURNAL_FORMAT) -> bytes:
    payload = pack_batch(first_lsn, records, journal_format)
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _batches(path: Path, whole_only: bool = True) -> Iterator[tuple[int, list, int, int]]:
    """(first LSN, records, format, end offset) of each intact frame from the start of a
    segment. With `whole_only`, a bad frame raises JournalCorrupt; else the batches stop
    before it. A whole frame of a newer format raises JournalFormatError either way."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        if pos + HEADER.size <= len(data):
            length, crc = HEADER.unpack_from(data, pos)
            start, end = pos + HEADER.size, pos + HEADER.size + length
            if length <= MAX_FRAME and end <= len(data) and zlib.crc32(data[start:end]) == crc:
                yield *unpack_batch(data[start:end]), end
                pos = end
                continue
        if whole_only:
            raise JournalCorrupt(f"{path}: damaged frame at byte {pos} of {len(data)}")
        return


def _first_lsn(path: Path) -> int:
    return int(path.name[:-len(SUFFIX)])


def make_private(path: Path) -> None:
    """Take the group's and others' permission bits off an existing path, with a warning (an
    older Kairos, or another tool, made it by the umask); PermissionError where this user may
    not (it is not the owner)."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if not mode & 0o077:
        return
    try:
        os.chmod(path, mode & ~0o077)
    except PermissionError as exc:
        raise PermissionError(exc.errno, f"{path} has mode {mode:04o} and cannot be made its "
                                         f"owner's only ({exc.strerror}); a store's files must "
                                         f"not be readable by others", str(path)) from None
    log.warning("%s had mode %04o: made it %04o (a store's files are its owner's only)",
                path, mode, mode & ~0o077)


def make_private_dir(directory: Path) -> None:
    """Create `directory` and its missing parents with mode 0700 (whatever the umask), or make
    an existing one private (`make_private`)."""
    missing = []
    path = Path(directory)
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another shard process was first
            os.mkdir(path, DIR_MODE)
    make_private(Path(directory))


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
