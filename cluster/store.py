"""Where a shard puts customers it passivates: one interface, keyed by partition.

Keys are (partition, customer id) so a partition's passivated customers can travel with it
when it moves to another shard. `MemoryStore` keeps them in the shard's process;
`DirectoryStore` writes them to a local directory, where they outlive the process (a restarted
shard finds them; a shard on another node of the same machine can take a partition over).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

import msgpack

from .journal import fsync_directory


class Store(Protocol):
    def put(self, partition: int, customer_id: str, blob: bytes) -> None: ...

    def take(self, partition: int, customer_id: str) -> bytes | None:
        """Remove and return a customer's blob (None: not passivated here)."""

    def take_partition(self, partition: int) -> dict[str, bytes]:
        """Remove and return every blob of a partition (it is moving away)."""

    def count(self) -> int: ...


class MemoryStore:
    """Passivated customers held as packed blocks in this process."""

    def __init__(self) -> None:
        self._partitions: dict[int, dict[str, bytes]] = {}

    def put(self, partition: int, customer_id: str, blob: bytes) -> None:
        self._partitions.setdefault(partition, {})[customer_id] = blob

    def take(self, partition: int, customer_id: str) -> bytes | None:
        blobs = self._partitions.get(partition)
        return None if blobs is None else blobs.pop(customer_id, None)

    def take_partition(self, partition: int) -> dict[str, bytes]:
        return self._partitions.pop(partition, {})

    def count(self) -> int:
        return sum(len(b) for b in self._partitions.values())


class DirectoryStore:
    """Passivated customers as files, `p<partition>/<hash of the id>.blk`, each holding the
    id and the blob. Writes go to a temporary file that is fsynced and renamed into place, so
    a crash leaves the old blob or the new one, never half of one."""

    def __init__(self, directory: str | os.PathLike, fsync: bool = True):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        for leftover in self.directory.glob("p*/*.tmp"):  # a crash between write and rename
            leftover.unlink()
        self._count = sum(1 for _ in self.directory.glob("p*/*.blk"))

    def put(self, partition: int, customer_id: str, blob: bytes) -> None:
        path = self._path(partition, customer_id)
        path.parent.mkdir(exist_ok=True)
        existed = path.exists()
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(msgpack.packb([customer_id, blob], use_bin_type=True))
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.fsync:
            fsync_directory(path.parent)
        self._count += not existed

    def take(self, partition: int, customer_id: str) -> bytes | None:
        path = self._path(partition, customer_id)
        try:
            _, blob = msgpack.unpackb(path.read_bytes(), raw=False)
        except FileNotFoundError:
            return None
        path.unlink()
        self._count -= 1
        return blob

    def take_partition(self, partition: int) -> dict[str, bytes]:
        out = {}
        for path in sorted((self.directory / f"p{partition}").glob("*.blk")):
            customer_id, blob = msgpack.unpackb(path.read_bytes(), raw=False)
            out[customer_id] = blob
            path.unlink()
            self._count -= 1
        return out

    def count(self) -> int:
        return self._count

    def _path(self, partition: int, customer_id: str) -> Path:
        name = hashlib.blake2b(customer_id.encode(), digest_size=16).hexdigest()
        return self.directory / f"p{partition}" / f"{name}.blk"
