"""Where a shard puts customers it passivates: one interface, keyed by partition.

Keys are (partition, customer id) so a partition's passivated customers can travel with it
when it moves to another shard. `MemoryStore` is the in-process store of the embedded
default; durable stores (a local directory, Redis) implement the same methods.
"""
from __future__ import annotations

from typing import Protocol


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
