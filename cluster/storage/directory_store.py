"""DirectoryStore: the store in a local directory, the embedded default (store.py states the
contract)."""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import msgpack

from kairos.cluster.storage.decision_logs import DirectoryLog, directory_logs
from kairos.cluster.storage.frames import fsync_directory
from kairos.cluster.storage.journal import FENCE, Journal, JournalReader, fence, fence_lock
from kairos.cluster.storage.private_paths import (DIR_MODE, FILE_MODE, make_private,
                                                  make_private_dir)
from kairos.cluster.storage import directory_claim, lsn_records, owned_journal
from kairos.cluster.storage.owned_journal import OwnedJournal
from kairos.cluster.storage.store import JournalFenced, StoreCorrupt, StoreUnavailable

STALE_TMP_S = 600.0  # a temporary file this old is a crashed writer's leftover
STAGING = "staging"  # staging/<journal>/: its shard's temporary files (DirectoryStore)
# a batch of homes lets an heir's fence in (journal.py `fence` waits for the lock) after this
# many homes, or this long, as a Redis store ends a transaction at PIPELINE_BYTES
FENCE_HOLD_HOMES = 256
FENCE_HOLD_S = 0.05
_tmp_names = itertools.count()
_writing: set[Path] = set()  # the temporary files this process is writing, not renamed yet


class DirectoryStore:
    """A directory on this machine:

        customers/p<partition>/<hash of the id>.blk   a customer's home (id + blob)
        snapshots/p<partition>.snap                   a partition's snapshot (sealed.py)
        snapshots/p<partition>.lsn                    msgpack [journal, LSN] of its newest
        staging/<shard name>/p<partition>.<file>.<pid>.<n>.tmp   a snapshot or home being
                                                       written by that shard (below)
        journals/<shard name>/<first lsn>.log          a shard's journal segments
        journals/<shard name>/quarantine/             damaged segments and kept torn tails
        journals/<shard name>/fenced                  another shard took its partitions over
        journals/<shard name>/owner                   its shard's incarnation that writes it
        meta/<key>                                     named blobs
        decisions/<shard name>/                        a shard's decision log (decision_logs.py)
        owner.lock                                     the cluster that holds the store (claim:
                                                       directory_claim.py)

    Every file is written to a temporary name of its own writer, fsynced and renamed into
    place (then its directory fsynced), so a crash leaves the old version or the new one, never
    half of one. A crash before the rename leaves the temporary file, and a snapshot's or
    home's holds customers that a ForgetCustomer may erase later. So a shard's snapshots and
    homes (writes naming its journal, or by a store that owns one) go first to its staging
    folder, named after their partition. Only the incarnations of that shard write there, and
    a claim of its journal by a new one, or a fence by an heir, waits for the writes under way
    and refuses the earlier ones' next: so both delete every file there, whatever its age.
    And writing a partition's snapshot (erasure does, after the forget) deletes every
    temporary file of that partition this process is not writing, beside the snapshots and in
    every staging folder: only the partition's owner writes them (a stray writer whose file
    goes fails its write, nothing more). Other temporary files (meta's, and those of writes
    naming no journal, beside their files) may be other live processes': they are removed at
    opening once older than STALE_TMP_S, as are staged ones a shard never started again left.
    OSErrors (ENOSPC, EIO, EROFS) surface as StoreUnavailable.

    Permissions (DESIGN.md "Security defaults": the store's files are their owner's only):
    every directory the store creates is 0700 and every file it writes (homes, snapshots,
    meta, journal segments, temporary files) 0600, by explicit modes on mkdir/open, whatever
    the process umask. Opening a store fixes what an older Kairos (or a loose umask) left open:
    the root, its directories, the partition and journal directories, snapshots, meta and
    journal segments lose their group and other bits, with a warning naming each path and its
    old mode. Customer homes are not walked (there may be millions): the root at 0700 already
    keeps everyone else from reaching them, and each home is rewritten 0600 at its next
    passivation. A path this user may not chmod (another user owns it) is refused:
    StoreUnavailable, naming it.
    """

    shared = True

    def __init__(self, directory: str | os.PathLike, fsync: bool = True):
        self.root = Path(directory)
        self.url = str(self.root)
        self.fsync = fsync
        self._owners: dict[str, str] = {}  # journal -> the incarnation written as (own_journal)
        self._writer: str | None = None  # the journal owned last, whose shard this store is
        self._journals: dict[str, Journal] = {}  # the last opened of each name (`_unless_fenced`)
        self._unsynced: set[Path] = set()  # folders with deletes not synced yet
        # partition folders whose names this store synced into customers/: once each, made
        # here or not (its maker may have died, or its own sync failed, before syncing it)
        self._listed: set[Path] = set()
        try:
            make_private_dir(self.root)
            for sub in ("customers", "snapshots", "journals", "meta", "decisions"):
                make_private_dir(self.root / sub)
            for pattern in ("customers/p*", "journals/*", "snapshots/*", "meta/*", "decisions/*"):
                for path in self.root.glob(pattern):
                    try:
                        make_private(path)
                    except FileNotFoundError:  # another process renamed or removed it
                        pass
        except PermissionError as exc:
            raise StoreUnavailable(f"opening the store {self.root}: {exc.strerror}") from exc
        stale = time.time() - STALE_TMP_S
        for pattern in ("customers/p*/*.tmp", "snapshots/*.tmp", "meta/*.tmp",
                        f"{STAGING}/*/*.tmp"):
            for leftover in self.root.glob(pattern):  # a crash before the rename
                try:
                    if leftover.stat().st_mtime < stale:
                        leftover.unlink()
                except FileNotFoundError:
                    pass

    def put(self, partition: int, customer_id: str, blob: bytes,
            unless_fenced: str | None = None) -> None:
        self.put_many([(partition, customer_id, blob)], unless_fenced)

    def put_many(self, homes: Iterable[tuple[int, str, bytes]],
                 unless_fenced: str | None = None, lsn: int | None = None) -> None:
        """Each file synced, then each folder once. The fence lock is held for a chunk of
        homes (FENCE_HOLD_HOMES, or FENCE_HOLD_S of writing) and taken again, the fence
        checked, for the next: an heir's fence waits for one chunk, not the whole batch, and
        stops the batch there (JournalFenced, the homes after it not written). With `lsn`
        (the homes name journal `unless_fenced` up to it), that journal is synced up to it
        once, not before each chunk up to what was appended meanwhile (`_unless_fenced`)."""
        homes = iter(homes)
        folders = set()
        home = next(homes, None)  # a chunk's first is packed outside the lock (an heir may
        # take it meanwhile); the rest inside it, bounded by FENCE_HOLD_S
        while home is not None:
            with self._unless_fenced(unless_fenced, "writing customers", lsn):
                until = time.monotonic() + FENCE_HOLD_S
                folders.add(self._put_home(*home, unless_fenced))
                for home in itertools.islice(homes, FENCE_HOLD_HOMES - 1):
                    folders.add(self._put_home(*home, unless_fenced))
                    if time.monotonic() >= until:
                        break
            home = next(homes, None)
        if self.fsync:
            with self._unless_fenced(None, "writing customers"):
                for folder in folders:
                    fsync_directory(folder)

    def _put_home(self, partition: int, customer_id: str, blob: bytes, journal: str | None
                  ) -> Path:
        """Write a home, its folder not synced; that folder."""
        path = self._home(partition, customer_id)
        self._write(path, msgpack.packb([customer_id, blob], use_bin_type=True),
                    make_parent=True, sync_parent=False, writer=journal or self._writer,
                    partition=partition)
        return path.parent

    def get(self, partition: int, customer_id: str) -> bytes | None:
        """The customer's home; StoreCorrupt if its file is not one, or another id's."""
        path = self._home(partition, customer_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailable(f"reading a customer: {exc}") from exc
        stored_id, blob = _unpack_home(path, data)
        if stored_id != customer_id:
            raise StoreCorrupt(f"{path}: the home of another customer id")
        return blob

    def get_many(self, partition: int, customer_ids: list[str]) -> list[bytes | None]:
        """A file each: local reads have no round trip to save."""
        return [self.get(partition, c) for c in customer_ids]

    def delete(self, partition: int, customer_id: str, unless_fenced: str | None = None
               ) -> None:
        self.delete_many([(partition, customer_id)], unless_fenced)

    def delete_many(self, homes: Iterable[tuple[int, str]], unless_fenced: str | None = None
                    ) -> None:
        """Delete homes, durably, under one hold of the fence lock: each folder synced once,
        and until then in `_unsynced`, so that a delete retried after a failure (which finds
        no file) syncs it all the same."""
        with self._unless_fenced(unless_fenced, "deleting customers"):
            for partition, customer_id in homes:
                path = self._home(partition, customer_id)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    if self.fsync:
                        self._unsynced.add(path.parent)
            for folder in list(self._unsynced):
                fsync_directory(folder)
                self._unsynced.discard(folder)

    def take_partition(self, partition: int) -> dict[str, bytes]:
        """Every home read before any is removed: a read that fails (StoreUnavailable) takes
        none, and the take can be tried again."""
        try:
            paths = sorted((self.root / "customers" / f"p{partition}").glob("*.blk"))
            out = dict(_unpack_home(path, path.read_bytes()) for path in paths)
            for path in paths:
                path.unlink()
        except OSError as exc:
            raise StoreUnavailable(f"moving partition {partition}: {exc}") from exc
        return out

    def count(self, partitions: Iterable[int]) -> int:
        total = 0
        for p in partitions:
            try:
                total += sum(1 for name in os.listdir(self.root / "customers" / f"p{p}")
                             if name.endswith(".blk"))
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StoreUnavailable(f"counting customers: {exc}") from exc
        return total

    def put_snapshots(self, snapshots: dict[int, bytes], unless_fenced: str | None = None,
                      lsn: int | None = None) -> None:
        """With `lsn`, each partition's `.lsn` file is checked before its snapshot is
        written, and written once the snapshots are durable, never before (beside an older
        snapshot it would be corruption), without an fsync of its own: a crash may leave an
        older one or none, a weaker check, not a false one."""
        writer = unless_fenced or self._writer
        with self._unless_fenced(unless_fenced, "writing snapshots", lsn):
            if lsn is not None:
                for p in snapshots:
                    journal, newer = self.snapshot_lsn(p) or (None, 0)
                    if journal == unless_fenced and newer > lsn:
                        raise JournalFenced.stale(str(unless_fenced), p, lsn, newer)
            for p, blob in snapshots.items():
                self._write(self.root / "snapshots" / f"p{p}.snap", blob, sync_parent=False,
                            writer=writer, partition=p)
            if snapshots:  # the class's text: what a crash left of them goes
                names = {f"p{p}" for p in snapshots}
                # homes a release before staging left beside them: the partition's own
                unstaged = [self.root / "customers" / name for name in names]
                self._remove_tmp([self.root / "snapshots", *self.root.glob(f"{STAGING}/*"),
                                  *unstaged],
                                 lambda tmp: tmp.parent in unstaged
                                 or tmp.name.split(".", 1)[0] in names)
            if snapshots and self.fsync:
                fsync_directory(self.root / "snapshots")
            for p in snapshots if lsn is not None else ():
                self._write(self.root / "snapshots" / f"p{p}.lsn",
                            lsn_records.packed(str(unless_fenced), lsn), sync=False,
                            writer=writer, partition=p)

    def snapshot_lsn(self, partition: int) -> tuple[str, int] | None:
        """(One that does not decode, a crash's, is as none: lsn_records.py.)"""
        try:
            data = (self.root / "snapshots" / f"p{partition}.lsn").read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailable(f"reading a snapshot's LSN: {exc}") from exc
        return lsn_records.unpacked(data)

    def get_snapshot(self, partition: int) -> bytes | None:
        try:
            return (self.root / "snapshots" / f"p{partition}.snap").read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailable(f"reading a snapshot: {exc}") from exc

    def journal(self, name: str, policy: str = "fsync") -> Journal:
        try:
            journal = OwnedJournal(self.root / "journals" / name, policy, self._owners[name]) \
                if name in self._owners else Journal(self.root / "journals" / name, policy)
        except OSError as exc:
            raise StoreUnavailable(f"opening journal {name}: {exc}") from exc
        self._journals[name] = journal
        return journal

    def own_journal(self, name: str, owner: str, claim: bool) -> None:
        """(owned_journal.py: the file and its lock.)"""
        try:
            if claim:
                owned_journal.claim(self.root / "journals" / name, owner)
                self._clear_staging(name)
            else:
                owned_journal.check(self.root / "journals" / name, owner)
        except OSError as exc:
            raise StoreUnavailable(f"claiming journal {name}: {exc}") from exc
        self._owners[name] = owner
        self._writer = name

    def read_journal(self, name: str) -> JournalReader:
        return JournalReader(self.root / "journals" / name)

    def fence_journal(self, name: str) -> None:
        try:
            fence(self.root / "journals" / name)
            self._clear_staging(name)
        except OSError as exc:
            raise StoreUnavailable(f"fencing journal {name}: {exc}") from exc

    def drop_journal(self, name: str) -> None:
        self._journals.pop(name, None)
        drop(self.root / "journals" / name)
        self._listed.discard(self.root / STAGING / name)
        shutil.rmtree(self.root / STAGING / name, ignore_errors=True)  # fenced, or its own

    def put_meta(self, key: str, blob: bytes) -> None:
        self._write(self.root / "meta" / key, blob)

    def get_meta(self, key: str) -> bytes | None:
        try:
            return (self.root / "meta" / key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailable(f"reading meta {key}: {exc}") from exc

    def claim(self, owner: str, holder: str) -> None:
        directory_claim.claim(self.root, owner, holder)

    def release(self, owner: str) -> None:
        directory_claim.release(self.root, owner)

    def claimed_by(self) -> tuple[str, str] | None:
        return directory_claim.claimed_by(self.root)

    def decision_log(self, name: str) -> DirectoryLog:
        return DirectoryLog(self.root / "decisions" / name, self.fsync)

    def decision_logs(self) -> list[str]:
        return directory_logs(self.root / "decisions")

    def erased(self) -> None:
        pass  # its files are rewritten (replaced) by the erasure: no history of them is kept

    @contextlib.contextmanager
    def _unless_fenced(self, journal: str | None, what: str, lsn: int | None = None
                       ) -> Iterator[None]:
        """With `journal` named, hold off its fencing while the block writes (JournalFenced
        if it is fenced already: `unfenced`), and sync it first, up to `lsn` if given (else
        all appended): what the block writes (a snapshot, a home) names its LSNs, which must
        outlive a power cut under "os" too (journal.py); a sync that covers them is skipped,
        so a batch of homes of LSNs up to `lsn` syncs once however many rounds append
        meanwhile. OSErrors as StoreUnavailable."""
        try:
            with (contextlib.nullcontext() if journal is None
                  else unfenced(self.root / "journals" / journal)):
                if journal in self._owners:
                    owned_journal.check(self.root / "journals" / journal, self._owners[journal])
                if self.fsync and journal in self._journals:
                    self._journals[journal].sync(lsn)
                yield
        except OSError as exc:
            raise StoreUnavailable(f"{what}: {exc}") from exc

    def _clear_staging(self, journal: str) -> None:
        """Delete the temporary files earlier writers of `journal` left (claimed anew, or
        fenced: none of them renames one again), holding the fence lock, as a claim does, so
        that no write of it is under way in this process either."""
        with fence_lock(self.root / "journals" / journal, exclusive=True):
            self._remove_tmp([self.root / STAGING / journal], lambda tmp: True)

    def _remove_tmp(self, folders: Iterable[Path], doomed: Callable[[Path], bool]) -> None:
        """Delete the temporary files in `folders` that `doomed` picks and this process is not
        writing, each folder synced after: they may hold a forgotten customer."""
        for folder in folders:
            try:
                names = [n for n in os.listdir(folder) if n.endswith(".tmp")]
            except FileNotFoundError:
                continue
            removed = False
            for tmp in (folder / name for name in names):
                if doomed(tmp) and tmp not in _writing:
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
                        removed = True
            if removed and self.fsync:
                fsync_directory(folder)

    def _home(self, partition: int, customer_id: str) -> Path:
        name = hashlib.blake2b(customer_id.encode(), digest_size=16).hexdigest()
        return self.root / "customers" / f"p{partition}" / f"{name}.blk"

    def _write(self, path: Path, data: bytes, make_parent: bool = False,
               sync_parent: bool = True, sync: bool = True, writer: str | None = None,
               partition: int | None = None) -> None:
        """`sync` false: neither the file nor its folder fsynced. `writer`: the journal whose
        shard writes the file, of `partition` (its temporary file is staged: the class's
        text)."""
        unique = f"{os.getpid()}.{next(_tmp_names)}.tmp"
        tmp = path.with_name(f"{path.name}.{unique}") if writer is None else \
            self.root / STAGING / writer / f"p{partition}.{path.name}.{unique}"
        _writing.add(tmp)
        try:
            if make_parent and path.parent not in self._listed:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path.parent, DIR_MODE)
                if self.fsync:  # the new folder's name, as a file's, must survive a crash
                    fsync_directory(path.parent.parent)
                self._listed.add(path.parent)
            if tmp.parent not in self._listed and writer is not None:
                make_private_dir(tmp.parent)
                self._listed.add(tmp.parent)
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE),
                           "wb") as f:
                f.write(data)
                if self.fsync and sync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            if self.fsync and sync and sync_parent:
                fsync_directory(path.parent)
        except OSError as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise StoreUnavailable(f"writing {path.name}: {exc}") from exc
        finally:
            _writing.discard(tmp)


def _unpack_home(path: Path, data: bytes) -> tuple[str, bytes]:
    """A home file's customer id and blob; StoreCorrupt if it holds no such pair (the blob's
    checksum, sealed.py, does not cover this envelope)."""
    try:
        customer_id, blob = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise StoreCorrupt(f"{path}: not a customer's home ({exc})") from None
    if not isinstance(customer_id, str) or not isinstance(blob, bytes):
        raise StoreCorrupt(f"{path}: not a customer's home (an id and a blob)")
    return customer_id, blob


@contextlib.contextmanager
def unfenced(directory: Path) -> Iterator[None]:
    """Hold off fencing the journal in `directory` while the block runs (a snapshot write of
    its shard); JournalFenced if it is fenced already. A check before the write alone would
    let a fence and its heir's snapshots come between the check and the write."""
    with fence_lock(directory, exclusive=False):
        if (directory / FENCE).exists():
            raise JournalFenced.of(directory.name)
        yield


def drop(directory: Path) -> None:
    """Delete a journal (its partitions are snapshotted elsewhere). A fenced one keeps its
    fence, alone: a writer still running stays refused, and the name is never journaled
    again (shard names are not reused)."""
    if not (directory / FENCE).exists():
        shutil.rmtree(directory, ignore_errors=True)
        return
    for path in directory.iterdir():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.name != FENCE:
            path.unlink(missing_ok=True)
