"""Decision logs as a store keeps them: per shard name, entries of (time, customer id, data),
where `data` is a record packed by cluster/evidence/records.py (the store does not read it).

Every implementation has the same five operations (store.py's `DecisionLogLike`): `append` a
batch, `read` a time range, `trim` to the retention bounds, `erase` customers (ForgetCustomer)
and `size`. A shard appends to its own log only; any shard may read, trim or erase any log of
a shared store, so erasure reaches logs written by a shard that since lost the partition.

`MemoryLog` is a bounded deque in this process; `DirectoryLog` keeps segment files:

    decisions/<shard name>/<first entry's time, ms>.dlog   entries as frames (frames.py's
                                                            header: length, CRC-32)
    decisions/<shard name>/.lock                          flock: writers of this log, in turn

A writer starts a segment of its own when it opens the log (so nothing is appended behind a
torn tail a crash left), after a write that failed (whose part written it cuts off), and
when the segment passes SEGMENT_BYTES or SEGMENT_S. The
lock orders appends, trims and erasures across processes; an erasure rewrites a segment to a
temporary file and renames it into place, and the appender reopens the segment by name for
each batch, so it never writes to a file an erasure replaced. Readers take no lock: they see a
segment before or after a rewrite, and stop a segment at a frame that is not whole (the tail
being written, or torn by a crash, or damaged: its CRC fails). An erasure rewrites such a
segment without everything from that frame on, whoever's entries it holds (`erase`). A whole
frame whose CRC holds but that does not decode as an entry (a newer Kairos's, as the journal
keeps a newer format's batches) is skipped by readers and kept whole by erasures, with a
warning, unless its bytes hold an erased customer's id (`_names`). A file ending .dlog not named by a time is not a segment: it is left alone, with a
warning.

Retention drops whole segments, the newest too once its last entry is past the age bound: a
writer checks, under the lock, that its segment still exists before appending to it, so it
starts another. A log whose shard is gone for good (an orphan: shard names are not reused)
is removed once trimmed empty.
"""
from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import math
import os
import threading
import zlib
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import msgpack

from kairos.cluster.storage.frames import HEADER, fsync_directory
from kairos.cluster.storage.private_paths import FILE_MODE, make_private_dir
from kairos.cluster.storage.store import StoreUnavailable

log = logging.getLogger("kairos.store")
Entry = tuple[float, str, bytes]  # (time logged, customer id, packed record)
SEGMENT_BYTES = 4 << 20
MEMORY_LOG_BYTES = 64 << 20  # the most a MemoryLog keeps
SEGMENT_S = 3600.0
SUFFIX = ".dlog"
_tmp_names = itertools.count()
_foreign: set[Path] = set()  # files warned of as not segments
# what msgpack raises on bytes it did not pack, and unpacking them into an entry's three parts
_UNREADABLE = (ValueError, TypeError, msgpack.UnpackException)
Frame = Entry | bytes  # a segment's frame as read: its entry, or its bytes (one kept whole)


def entry_size(entry: Entry) -> int:
    """What an entry counts against a log's size bound."""
    return len(entry[1]) + len(entry[2]) + 16


class MemoryLog:
    """Entries in a deque, oldest first, at most MEMORY_LOG_BYTES of them whatever the
    retention settings (the oldest go first); a lock, as a reader's thread may look while the
    writer's thread appends."""

    def __init__(self) -> None:
        self._entries: deque[Entry] = deque()
        self._bytes = 0
        self._lock = threading.Lock()

    def append(self, entries: list[Entry]) -> None:
        with self._lock:
            self._entries.extend(entries)
            self._bytes += sum(map(entry_size, entries))
            self._drop_oldest(lambda e: self._bytes > MEMORY_LOG_BYTES)

    def read(self, since: float, until: float) -> Iterator[Entry]:
        with self._lock:
            entries = list(self._entries)
        return (e for e in entries if since <= e[0] <= until)

    def trim(self, before: float, max_bytes: int, orphan: bool = False,
             between_pages: Callable[[], object] | None = None) -> int:
        """(An orphan's log stays as long as the store: it holds them in a dict. No pages: a
        trim here costs what an append does, and `between_pages` is not called.)"""
        with self._lock:
            return self._drop_oldest(lambda e: e[0] < before or self._bytes > max_bytes)

    def erase(self, customer_ids: set[str]) -> int:
        with self._lock:
            kept = deque(e for e in self._entries if e[1] not in customer_ids)
            dropped = len(self._entries) - len(kept)
            self._entries, self._bytes = kept, sum(map(entry_size, kept))
            return dropped

    def size(self) -> int:
        return self._bytes

    def _drop_oldest(self, while_: Callable[[Entry], bool]) -> int:
        dropped = 0
        while self._entries and while_(self._entries[0]):
            self._bytes -= entry_size(self._entries.popleft())
            dropped += 1
        return dropped


class DirectoryLog:
    def __init__(self, directory: Path, fsync: bool = True):
        self.dir = directory
        self.fsync = fsync
        self._segment: Path | None = None  # the segment this writer appends to
        try:
            make_private_dir(directory)
        except OSError as exc:
            raise StoreUnavailable(f"opening decision log {directory.name}: {exc}") from exc

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        data = b"".join(_frame(e) for e in entries)
        try:
            with self._locked():
                created = self._segment is None or not self._segment.exists() or \
                    self._full(self._segment, entries[0][0])
                if created:
                    self._segment = self.dir / f"{int(entries[0][0] * 1000):016d}{SUFFIX}"
                self._write(self._segment, data)
                if created and self.fsync:
                    fsync_directory(self.dir)
        except OSError as exc:
            raise StoreUnavailable(f"appending to decision log {self.dir.name}: {exc}") from exc

    def _write(self, segment: Path, data: bytes) -> None:
        """Append `data` whole or not at all: readers stop a segment at its first frame that
        is not whole, so a part left by a failed write would hide every later append. If even
        the cut fails, the next append starts a segment of its own."""
        fd = os.open(segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if self.fsync:
                    os.fsync(fd)
            except OSError:
                self._segment = None
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)

    def _full(self, segment: Path, now: float) -> bool:
        return segment.stat().st_size >= SEGMENT_BYTES or now - _start(segment) >= SEGMENT_S

    def read(self, since: float, until: float) -> Iterator[Entry]:
        segments = self._segments()
        for k, segment in enumerate(segments):
            ends = _start(segments[k + 1]) if k + 1 < len(segments) else float("inf")
            if _start(segment) <= until and ends >= since:
                yield from (e for e in self._entries(segment)[0]
                            if not isinstance(e, bytes) and since <= e[0] <= until)

    def trim(self, before: float, max_bytes: int, orphan: bool = False,
             between_pages: Callable[[], object] | None = None) -> int:
        """Drop whole segments, oldest first: those whose every entry was logged before
        `before` (the newest too), and while the log is over `max_bytes` any but the newest.
        An `orphan` log (its shard is gone for good) left empty is removed. A segment goes
        with one unlink, so `between_pages` is not called (an append from it would wait for
        the lock this trim holds)."""
        try:
            with self._locked():
                self._sweep()
                dropped = self._drop_segments(before, max_bytes)
                emptied = orphan and not self._segments()
                if emptied:  # under the lock: a writer waiting for it then locks anew
                    with contextlib.suppress(FileNotFoundError):
                        (self.dir / ".lock").unlink()
            if emptied:
                self._remove()
        except OSError as exc:
            raise StoreUnavailable(f"trimming decision log {self.dir.name}: {exc}") from exc
        return dropped

    def _drop_segments(self, before: float, max_bytes: int) -> int:
        segments = self._segments()
        sizes = [s.stat().st_size for s in segments]
        total = sum(sizes)
        for k, segment in enumerate(segments):
            newest = k == len(segments) - 1
            if not (total > max_bytes and not newest or self._past(segments, k, before)):
                return k
            segment.unlink()
            total -= sizes[k]
            if newest:  # this writer's next append starts another (the others check)
                self._segment = None
        return len(segments)

    def _past(self, segments: list[Path], k: int, before: float) -> bool:
        """Whether every entry of segment `k` was logged before `before`: it ends where the
        next one begins, or at its last entry (read only for the segment at the bound)."""
        if k + 1 < len(segments) and _start(segments[k + 1]) <= before:
            return True
        return _start(segments[k]) < before and self._last(segments[k]) < before

    def _last(self, segment: Path) -> float:
        """The time of a segment's last whole entry (-inf if none)."""
        whole = [e for e in self._entries(segment)[0] if not isinstance(e, bytes)]
        return whole[-1][0] if whole else -math.inf

    def _remove(self) -> None:
        """Remove an orphan log's folder, its lock file gone and closed: on NFS a file removed
        while open stays (as .nfsXXXX) until it is closed. What a writer that came meanwhile
        left, or such a file another process still holds, keeps the folder till a later trim;
        only something not ours is warned of."""
        try:
            self.dir.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            with contextlib.suppress(OSError):
                if all(p.name == ".lock" or p.name.startswith(".nfs") or p.suffix == SUFFIX
                       for p in self.dir.iterdir()):
                    return
            log.warning("decision log %s: trimmed empty, its folder stays: %s",
                        self.dir.name, exc)

    def _sweep(self) -> None:
        """Delete temporary copies an erasure left when it failed without cleaning up (a
        crash): under the lock no erasure is under way, and they hold erased entries."""
        for tmp in self.dir.glob(f"*{SUFFIX}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def erase(self, customer_ids: set[str]) -> int:
        """Rewrite every segment that holds an entry of these customers without it, and every
        segment that does not read to its end without what follows its last whole frame.
        Those bytes (a torn tail, a damaged frame and the frames after it, which readers stop
        before) cannot be checked for the ids, and README promises that after ForgetCustomer
        the store holds none; nor do they hold anything the log promised to keep: a crash
        loses what its writer had not yet written (README, "The decision log": the log is
        not as durable as the journal, and no request waits for it), and no reader or export
        sees an entry past them."""
        dropped = 0
        try:
            with self._locked():  # no append is under way: what does not read was left so
                self._sweep()
                for segment in self._segments():
                    whole, stopped = self._entries(segment)
                    kept = [e for e in whole if not _names(e, customer_ids)]
                    if stopped is not None:
                        log.warning("decision log %s: erasure cuts segment %s at byte %d, "
                                    "dropping what does not read as entries there",
                                    self.dir.name, segment.name, stopped)
                    if len(kept) < len(whole) or stopped is not None:
                        self._rewrite(segment, kept)
                        dropped += len(whole) - len(kept)
        except OSError as exc:
            raise StoreUnavailable(f"erasing from decision log {self.dir.name}: {exc}") from exc
        return dropped

    def size(self) -> int:
        return sum(s.stat().st_size for s in self._segments())

    def _rewrite(self, segment: Path, entries: list[Frame]) -> None:
        tmp = segment.with_name(f"{segment.name}.{os.getpid()}.{next(_tmp_names)}.tmp")
        try:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE),
                           "wb") as f:
                f.write(b"".join(e if isinstance(e, bytes) else _frame(e) for e in entries))
                f.flush()
                os.fsync(f.fileno())  # an erasure is durable whatever the policy
            os.replace(tmp, segment)
        except BaseException:
            with contextlib.suppress(OSError):  # it holds the entries being erased
                tmp.unlink()
            raise
        fsync_directory(self.dir)

    def _segments(self) -> list[Path]:
        try:
            return sorted(p for p in self.dir.glob(f"*{SUFFIX}") if _is_segment(p))
        except OSError as exc:
            raise StoreUnavailable(f"listing decision log {self.dir.name}: {exc}") from exc

    def _entries(self, segment: Path) -> tuple[list[Frame], int | None]:
        """A segment's frames up to its first that is not whole (`_entry`), and the byte where
        that one starts (None: the segment reads to its end; a segment trimmed meanwhile reads
        as empty)."""
        try:
            data = segment.read_bytes()
        except FileNotFoundError:
            return [], None
        except OSError as exc:
            raise StoreUnavailable(f"reading decision log {self.dir.name}: {exc}") from exc
        whole, pos, foreign = [], 0, 0
        while pos < len(data):
            if (frame := _entry(data, pos)) is None:
                log.warning("decision log %s: segment %s has a frame that is not whole at "
                            "byte %d of %d (being written, torn by a crash, or damaged): read "
                            "up to there", self.dir.name, segment.name, pos, len(data))
                return whole, pos
            entry, end = frame
            whole.append(data[pos:end] if entry is None else entry)
            foreign += entry is None
            pos = end
        if foreign:
            log.warning("decision log %s: segment %s has %d whole frames that do not decode as "
                        "entries (a newer Kairos's?): skipped, and kept", self.dir.name,
                        segment.name, foreign)
        return whole, None

    @contextmanager
    def _locked(self):
        while True:
            fd = self._open_lock()
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _is_file(fd, self.dir / ".lock"):
                break
            os.close(fd)  # the log was removed as an orphan while this waited: lock anew
        try:
            yield
        finally:
            os.close(fd)  # releases the lock

    def _open_lock(self) -> int:
        try:
            return os.open(self.dir / ".lock", os.O_WRONLY | os.O_CREAT, FILE_MODE)
        except FileNotFoundError:  # removed as an orphan since this was opened
            make_private_dir(self.dir)
            return os.open(self.dir / ".lock", os.O_WRONLY | os.O_CREAT, FILE_MODE)


def directory_logs(root: Path) -> list[str]:
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []


def _frame(entry: Entry) -> bytes:
    payload = msgpack.packb(entry, use_bin_type=True)
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _entry(data: bytes, pos: int) -> tuple[Entry | None, int] | None:
    """The frame at `pos`, if it is whole and its CRC holds: its entry (None for one that
    does not decode as an entry `_frame` wrote) and where it ends."""
    if pos + HEADER.size > len(data):
        return None
    size, crc = HEADER.unpack_from(data, pos)
    end = pos + HEADER.size + size
    payload = data[pos + HEADER.size:end]
    if len(payload) < size or zlib.crc32(payload) != crc:
        return None
    try:
        logged, customer_id, record = msgpack.unpackb(payload, raw=False)
    except _UNREADABLE:
        return None, end
    return checked_entry(logged, customer_id, record), end


def _names(frame: Frame, customer_ids: set[str]) -> bool:
    """Whether a frame names one of the customers: an entry of theirs, or a frame kept whole
    (a newer release's) whose bytes hold one's id as msgpack packs a string (`packed_id`): it
    cannot be read, so it goes, with whatever else it held, rather than keep the id."""
    if isinstance(frame, bytes):
        return any(packed_id(customer_id) in frame for customer_id in customer_ids)
    return frame[1] in customer_ids


def packed_id(customer_id: str) -> bytes:
    """An id as msgpack packs it, its length in its header: "12345" is not found in a frame
    of "123456", as its bare bytes were."""
    return msgpack.packb(customer_id)


def checked_entry(logged: object, customer_id: object, record: object) -> Entry | None:
    """An entry from what a store held, if its parts have an entry's types (a time, a
    customer id, a packed record); else None: not an entry `append` wrote."""
    if isinstance(logged, (int, float)) and not isinstance(logged, bool) and \
            isinstance(customer_id, str) and isinstance(record, bytes):
        return logged, customer_id, record
    return None


def _start(segment: Path) -> float:
    return int(segment.name[:-len(SUFFIX)]) / 1000


def _is_file(fd: int, path: Path) -> bool:
    """Whether `fd` is open on the file at `path` (not on one removed meanwhile)."""
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


def _is_segment(path: Path) -> bool:
    """Whether a file is named as a segment (an operator's copy may not be)."""
    stem = path.name[:-len(SUFFIX)]
    if stem.isascii() and stem.isdigit():
        return True
    if path not in _foreign:
        _foreign.add(path)
        log.warning("decision log %s: %s is not named by a time, so it is not read as a "
                    "segment, nor trimmed", path.parent.name, path.name)
    return False
