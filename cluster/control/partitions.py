"""Partitions: which shard owns a customer, and how ownership moves when shards come and go.

A customer id hashes to one of a fixed number of partitions (stable across processes and
releases); the controller's versioned `PartitionMap` says which shard owns each partition.
Scaling moves whole partitions, a bounded share per round (Akka Cluster Sharding moves at most
10 %), choosing the moves so that every shard ends within one partition of the mean.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from kairos.cluster.settings import MAX_MOVE_FRACTION

DEFAULT_PARTITIONS = 4096  # about 10x the most shards planned


def partition_of(customer_id: str, n_partitions: int = DEFAULT_PARTITIONS) -> int:
    """Stable partition of a customer id (blake2b: Python's hash() is salted per process)."""
    digest = hashlib.blake2b(customer_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n_partitions


@dataclass(frozen=True)
class Move:
    partition: int
    source: str
    target: str


@dataclass
class PartitionMap:
    """Owner shard per partition, with a version that every change bumps."""

    owners: list[str]
    version: int = 1
    shards: list[str] = field(default_factory=list)

    @classmethod
    def initial(cls, shards: list[str], n_partitions: int = DEFAULT_PARTITIONS) -> "PartitionMap":
        if not shards:
            raise ValueError("a partition map needs at least one shard")
        if len(set(shards)) != len(shards):
            raise ValueError(f"duplicate shard names in {shards}")
        return cls([shards[p % len(shards)] for p in range(n_partitions)], 1, list(shards))

    @property
    def n_partitions(self) -> int:
        return len(self.owners)

    def shards_in_use(self) -> list[str]:
        """Shards that own at least one partition, sorted."""
        return sorted(set(self.owners))

    def partitions_of(self, shard: str) -> list[int]:
        return [p for p, owner in enumerate(self.owners) if owner == shard]

    def plan(self, shards: list[str], max_moves: int | None = None) -> list[Move]:
        """The next round of moves towards an even spread over `shards`.

        Partitions of shards that are leaving go first; then the most loaded shards give to
        the least loaded. At most `max_moves` (default 10 % of the partitions) per round, so a
        scale-out converges over a few rounds while traffic flows.
        """
        if not shards:
            raise ValueError("cannot spread partitions over no shards")
        budget = max(1, int(self.n_partitions * MAX_MOVE_FRACTION)) if max_moves is None \
            else max_moves
        load = {s: self.partitions_of(s) for s in shards}
        leaving = [p for p, owner in enumerate(self.owners) if owner not in load]
        base, extra = divmod(self.n_partitions, len(shards))
        # the shards already holding the most keep the +1 slots, so fewer partitions move
        ranked = sorted(shards, key=lambda s: -len(load[s]))
        target = {s: base + (1 if i < extra else 0) for i, s in enumerate(ranked)}
        donors = [p for s in ranked for p in load[s][target[s]:]]
        moves: list[Move] = []
        for p in leaving + donors:
            if len(moves) == budget:
                break
            receiver = min(shards, key=lambda s: (len(load[s]) - target[s], shards.index(s)))
            if len(load[receiver]) >= target[receiver]:
                break
            moves.append(Move(p, self.owners[p], receiver))
            load[receiver].append(p)
        return moves

    def apply(self, moves: list[Move], shards: list[str]) -> "PartitionMap":
        """A new map version with the moves done."""
        owners = list(self.owners)
        for move in moves:
            if owners[move.partition] != move.source:
                raise ValueError(f"partition {move.partition} is owned by "
                                 f"{owners[move.partition]}, not {move.source}")
            owners[move.partition] = move.target
        return PartitionMap(owners, self.version + 1, list(shards))
