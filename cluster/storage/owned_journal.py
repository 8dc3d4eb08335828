"""A directory journal's owner (store.py, "Owners"): the incarnation of its shard that writes it.

The file `owner` in the journal's directory holds the owning incarnation's token. A claim
writes it (a temporary file, fsynced and renamed over it, the directory fsynced) holding
`fence.lock` exclusively, as fencing does; every write of the shard's checks it holding the
lock shared, so no write that found the old owner lands after a claim. `OwnedJournal` is the
journal such an incarnation writes: each append, take-back, truncation, compaction and skip
past a lost tail checks the owner first, and one that finds another's raises JournalDisowned
(a JournalFenced) with nothing written (two writers appending to one segment would give out
the same LSNs twice).
The check is a `stat` of the file, read only when it changed (a claim renames a new file
in), and a shared `flock` on a descriptor the journal keeps open: about 3.5 µs more per append
(3.8 µs became 7.2 µs without fsync in python -m bench.costs,
bench/results/costs-20261206T003319Z.md; an fsync is 200 µs and more).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from kairos.cluster.storage.frames import Decode, fsync_directory
from kairos.cluster.storage.journal import FENCE, FENCE_LOCK, Journal, fence_lock
from kairos.cluster.storage.private_paths import FILE_MODE
from kairos.cluster.storage.store import JournalDisowned, JournalFenced

OWNER = "owner"


def claim(directory: Path, owner: str) -> None:
    """Make `owner` the journal's owner, durably, once the writes that found the last one
    are done."""
    with fence_lock(directory, exclusive=True):
        tmp = directory / f"{OWNER}.{os.getpid()}.tmp"
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE),
                       "wb") as f:
            f.write(owner.encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / OWNER)
        fsync_directory(directory)


def check(directory: Path, owner: str) -> None:
    """JournalDisowned unless `owner` owns the journal (call holding `fence.lock`); JournalFenced
    where the journal is fenced, the first reason (dropping it took its owner)."""
    if stored(directory) != owner:
        if (directory / FENCE).exists():
            raise JournalFenced.of(directory.name)
        raise JournalDisowned.of(directory.name)


def stored(directory: Path) -> str | None:
    try:
        return (directory / OWNER).read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return None


class OwnedJournal(Journal):
    """A journal written as the incarnation `owner` (the module's text)."""

    def __init__(self, directory: str | os.PathLike, policy: str, owner: str):
        self.owner = owner
        self._seen: tuple[int, int] | None = None  # (inode, mtime) of the owner file found ours
        directory = Path(directory)
        self._lock_fd: int | None = None
        self._owner_file = f"{directory}/{OWNER}"
        self._holding = False  # the lock, and the owner found: a check inside needs no stat
        with fence_lock(directory, exclusive=False):
            self._check_owner(directory)
            super().__init__(directory, policy)

    @contextlib.contextmanager
    def _owned(self) -> Iterator[None]:
        """Hold off a claim while the block writes; JournalDisowned if another owns it. Only
        on the thread that writes: another thread's unlock of the same descriptor would
        end this one's hold (a sync's `check_fence` takes no lock)."""
        if self._lock_fd is None:
            self._lock_fd = os.open(self.directory / FENCE_LOCK, os.O_RDWR | os.O_CREAT,
                                    FILE_MODE)
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
        try:
            self._check_owner(self.directory)
            self._holding = True
            yield
        finally:
            self._holding = False
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _check_owner(self, directory: Path) -> None:
        if self._holding:
            return
        try:
            st = os.stat(self._owner_file)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_ino, st.st_mtime_ns) == self._seen:
            return
        try:
            check(directory, self.owner)
        except JournalFenced:
            self.fenced, self._seen = True, None
            raise
        self._seen = st and (st.st_ino, st.st_mtime_ns)

    def append(self, records: list[Any], sync: bool = True) -> int:
        with self._owned():
            return super().append(records, sync)

    def check_fence(self) -> None:
        """The owner (without the lock: the writes themselves hold it), then the fence."""
        self._check_owner(self.directory)
        super().check_fence()

    def retract(self, after_lsn: int) -> bool:
        with self._owned():
            return super().retract(after_lsn)

    def truncate(self, upto_lsn: int) -> int:
        with self._owned():
            return super().truncate(upto_lsn)

    def compact(self, drop: Callable[[Any], bool], decode: Decode | None = None) -> int:
        with self._owned():
            return super().compact(drop, decode)

    def skip_past(self, lsn: int) -> None:
        """From the journal's end as it is now: an incarnation that claimed it since this one
        opened it may have written past what this one read (then this one claimed it back)."""
        with self._owned():
            with self._lock:  # the owner's lock held: nobody else writes it
                if self._fd is not None:
                    fd, self._fd = self._fd, None
                    os.close(fd)
                self._size, self._before_last = 0, None
                self._recover_tail()
                self.synced_lsn, self._synced_size = self.last_lsn, self._size
                self._disk_lsn = self.last_lsn
            super().skip_past(lsn)

    def close(self) -> None:
        super().close()
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)
