"""Stores: where a shard's customers, its partitions' snapshots and its journal live.

One interface (Orleans calls these storage providers), three implementations:

- `MemoryStore`: in this process. Volatile; for tests and for runs that need no durability.
  Several in-process shards may share one, as they share a directory or a Redis.
- `DirectoryStore`: a local directory, the embedded default. Survives the process (and, with
  the journal policy "fsync", the machine); every shard of this machine can read it, so a
  partition can be recovered by any shard on the machine.
- `RedisStore` (redis_store.py): a real Redis server, for several machines and Kubernetes:
  any node can recover any partition.

What a store keeps, keyed by partition so that it moves with the partition:
- **homes**: a customer's packed state, written when the customer is passivated and kept while
  it is resident again, until the next passivation replaces it or ForgetCustomer deletes it;
- **snapshots**: one per partition, its resident customers, idempotency keys and alias
  directory, naming the journal and LSN they cover;
- **journals**: one per shard (see journal.py), the changes since the snapshots;
- **meta**: small named blobs (the controller's map).

Every failure to reach the store (disk full, Redis down) raises `StoreUnavailable`; a shard
that meets one answers UNAVAILABLE and rebuilds itself from the store once it is back.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol
from urllib.parse import urlparse

import msgpack

from kairos.cluster.storage.journal import Journal, fsync_directory


STALE_TMP_S = 600.0  # a temporary file this old is a crashed writer's leftover
_tmp_names = itertools.count()


class StoreUnavailable(Exception):
    """The store could not be written or read; nothing was acknowledged."""


class JournalLike(Protocol):
    last_lsn: int
    unsynced: bool  # appended with sync=False and not made durable yet

    def append(self, records: list[Any], sync: bool = True) -> int: ...

    def sync(self) -> None:
        """Make what was appended durable; may run on another thread than append."""

    def replay(self, after_lsn: int = 0) -> Iterator[tuple[int, Any]]: ...

    def truncate(self, upto_lsn: int) -> int: ...

    def compact(self, drop: Callable[[Any], bool]) -> int: ...

    def close(self) -> None: ...


class Store(Protocol):
    url: str
    shared: bool  # every shard that opens `url` sees the same data

    def put(self, partition: int, customer_id: str, blob: bytes) -> None: ...

    def get(self, partition: int, customer_id: str) -> bytes | None: ...

    def delete(self, partition: int, customer_id: str) -> None: ...

    def take_partition(self, partition: int) -> dict[str, bytes]:
        """Remove and return a partition's homes (a move between unshared stores)."""

    def count(self, partitions: Iterable[int]) -> int:
        """Customers with a home in these partitions."""

    def put_snapshots(self, snapshots: dict[int, bytes]) -> None: ...

    def get_snapshot(self, partition: int) -> bytes | None: ...

    def journal(self, name: str, policy: str = "fsync") -> JournalLike: ...

    def drop_journal(self, name: str) -> None: ...

    def put_meta(self, key: str, blob: bytes) -> None: ...

    def get_meta(self, key: str) -> bytes | None: ...


def open_store(url: str) -> Store:
    """`memory`, a directory path (or `file:///path`), or `redis://host:port/db[?prefix=p]`."""
    if url == "memory":
        return MemoryStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from kairos.cluster.storage.redis_store import RedisStore
        return RedisStore(url)
    if url.startswith("file://"):
        url = urlparse(url).path
    if "://" in url:
        raise ValueError(f"unknown store {url!r}: use 'memory', a directory, or "
                         f"redis://host:port/db")
    return DirectoryStore(os.path.expanduser(url))


# -- in memory ---------------------------------------------------------------------------------

class MemoryJournal:
    """A journal as a list; the store keeps it, so a shard re-created on the same store (in
    the same process) finds what the previous one wrote."""

    unsynced = False  # nothing is more durable than memory here

    def __init__(self) -> None:
        self.last_lsn = 0
        self.records: list[tuple[int, Any]] = []

    def sync(self) -> None:
        pass

    def append(self, records: list[Any], sync: bool = True) -> int:
        for record in records:
            self.last_lsn += 1
            self.records.append((self.last_lsn, msgpack.unpackb(
                msgpack.packb(record, use_bin_type=True), raw=False, strict_map_key=False)))
        return self.last_lsn

    def replay(self, after_lsn: int = 0) -> Iterator[tuple[int, Any]]:
        return iter([(lsn, r) for lsn, r in self.records if lsn > after_lsn and r is not None])

    def truncate(self, upto_lsn: int) -> int:
        before = len(self.records)
        self.records = [(lsn, r) for lsn, r in self.records if lsn > upto_lsn]
        return before - len(self.records)

    def compact(self, drop: Callable[[Any], bool]) -> int:
        dropped = sum(1 for _, r in self.records if r is not None and drop(r))
        self.records = [(lsn, None if r is None or drop(r) else r) for lsn, r in self.records]
        return dropped

    def close(self) -> None:
        pass


class MemoryStore:
    """Everything in this process's memory (it goes with the process)."""

    url = "memory"

    def __init__(self, shared: bool = False) -> None:
        self.shared = shared
        self._homes: dict[int, dict[str, bytes]] = {}
        self._snapshots: dict[int, bytes] = {}
        self._journals: dict[str, MemoryJournal] = {}
        self._meta: dict[str, bytes] = {}

    def put(self, partition: int, customer_id: str, blob: bytes) -> None:
        self._homes.setdefault(partition, {})[customer_id] = blob

    def get(self, partition: int, customer_id: str) -> bytes | None:
        return self._homes.get(partition, {}).get(customer_id)

    def delete(self, partition: int, customer_id: str) -> None:
        self._homes.get(partition, {}).pop(customer_id, None)

    def take_partition(self, partition: int) -> dict[str, bytes]:
        return self._homes.pop(partition, {})

    def count(self, partitions: Iterable[int]) -> int:
        return sum(len(self._homes.get(p, ())) for p in partitions)

    def put_snapshots(self, snapshots: dict[int, bytes]) -> None:
        self._snapshots.update(snapshots)

    def get_snapshot(self, partition: int) -> bytes | None:
        return self._snapshots.get(partition)

    def journal(self, name: str, policy: str = "fsync") -> MemoryJournal:
        return self._journals.setdefault(name, MemoryJournal())

    def drop_journal(self, name: str) -> None:
        self._journals.pop(name, None)

    def put_meta(self, key: str, blob: bytes) -> None:
        self._meta[key] = blob

    def get_meta(self, key: str) -> bytes | None:
        return self._meta.get(key)


# -- in a directory ----------------------------------------------------------------------------

class DirectoryStore:
    """A directory on this machine:

        customers/p<partition>/<hash of the id>.blk   a customer's home (id + blob)
        snapshots/p<partition>.snap                   a partition's snapshot
        journals/<shard name>/<first lsn>.log          a shard's journal segments
        meta/<key>                                     named blobs

    Every file is written to a temporary name of its own writer, fsynced and renamed into
    place (then its directory fsynced), so a crash leaves the old version or the new one, never
    half of one. Several shard processes share the directory, so a temporary file is only
    removed as a crash's leftover once it is older than STALE_TMP_S. OSErrors (ENOSPC, EIO,
    EROFS) surface as StoreUnavailable.
    """

    shared = True

    def __init__(self, directory: str | os.PathLike, fsync: bool = True):
        self.root = Path(directory)
        self.url = str(self.root)
        self.fsync = fsync
        for sub in ("customers", "snapshots", "journals", "meta"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        stale = time.time() - STALE_TMP_S
        for pattern in ("customers/p*/*.tmp", "snapshots/*.tmp", "meta/*.tmp"):
            for leftover in self.root.glob(pattern):  # a crash before the rename
                try:
                    if leftover.stat().st_mtime < stale:
                        leftover.unlink()
                except FileNotFoundError:
                    pass

    def put(self, partition: int, customer_id: str, blob: bytes) -> None:
        path = self._home(partition, customer_id)
        self._write(path, msgpack.packb([customer_id, blob], use_bin_type=True),
                    make_parent=True)

    def get(self, partition: int, customer_id: str) -> bytes | None:
        try:
            return msgpack.unpackb(self._home(partition, customer_id).read_bytes(),
                                   raw=False)[1]
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailable(f"reading a customer: {exc}") from exc

    def delete(self, partition: int, customer_id: str) -> None:
        path = self._home(partition, customer_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreUnavailable(f"deleting a customer: {exc}") from exc
        if self.fsync:
            fsync_directory(path.parent)

    def take_partition(self, partition: int) -> dict[str, bytes]:
        out = {}
        for path in sorted((self.root / "customers" / f"p{partition}").glob("*.blk")):
            customer_id, blob = msgpack.unpackb(path.read_bytes(), raw=False)
            out[customer_id] = blob
            path.unlink()
        return out

    def count(self, partitions: Iterable[int]) -> int:
        total = 0
        for p in partitions:
            try:
                total += sum(1 for name in os.listdir(self.root / "customers" / f"p{p}")
                             if name.endswith(".blk"))
            except FileNotFoundError:
                pass
        return total

    def put_snapshots(self, snapshots: dict[int, bytes]) -> None:
        for p, blob in snapshots.items():
            self._write(self.root / "snapshots" / f"p{p}.snap", blob, sync_parent=False)
        if snapshots and self.fsync:
            fsync_directory(self.root / "snapshots")

    def get_snapshot(self, partition: int) -> bytes | None:
        try:
            return (self.root / "snapshots" / f"p{partition}.snap").read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailable(f"reading a snapshot: {exc}") from exc

    def journal(self, name: str, policy: str = "fsync") -> Journal:
        try:
            return Journal(self.root / "journals" / name, policy)
        except OSError as exc:
            raise StoreUnavailable(f"opening journal {name}: {exc}") from exc

    def drop_journal(self, name: str) -> None:
        Journal(self.root / "journals" / name, "off").destroy()

    def put_meta(self, key: str, blob: bytes) -> None:
        self._write(self.root / "meta" / key, blob)

    def get_meta(self, key: str) -> bytes | None:
        try:
            return (self.root / "meta" / key).read_bytes()
        except FileNotFoundError:
            return None

    def _home(self, partition: int, customer_id: str) -> Path:
        name = hashlib.blake2b(customer_id.encode(), digest_size=16).hexdigest()
        return self.root / "customers" / f"p{partition}" / f"{name}.blk"

    def _write(self, path: Path, data: bytes, make_parent: bool = False,
               sync_parent: bool = True) -> None:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{next(_tmp_names)}.tmp")
        try:
            if make_parent:
                path.parent.mkdir(exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            if self.fsync and sync_parent:
                fsync_directory(path.parent)
        except OSError as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise StoreUnavailable(f"writing {path.name}: {exc}") from exc
