"""MemoryStore: the store in this process's memory (store.py states the contract)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import msgpack

from kairos.cluster.protocol import JOURNAL_FORMAT
from kairos.cluster.storage.decision_logs import MemoryLog
from kairos.cluster.storage.store import JournalDisowned, JournalFenced, StoreCorrupt, StoreInUse


class MemoryJournal:
    """A journal as a list; the store keeps it, so a shard re-created on the same store (in
    the same process) finds what the previous one wrote. A fence is a flag on it, so it fences
    only the shards of this process: which is all there is to fence, as the journal dies with
    the process."""

    unsynced = False  # nothing is more durable than memory here

    def __init__(self, name: str) -> None:
        self.name = name
        self.last_lsn = 0
        self.records: list[tuple[int, Any]] = []
        self.fenced = False

    def sync(self) -> None:
        pass

    def skip_past(self, lsn: int) -> None:
        """StoreCorrupt: nothing in memory loses a journal's tail and keeps its snapshots."""
        raise StoreCorrupt(f"journal {self.name} ends at LSN {self.last_lsn}, but a snapshot "
                           f"covers it up to LSN {lsn}")

    def append(self, records: list[Any], sync: bool = True) -> int:
        for record in records:
            self.last_lsn += 1
            self.records.append((self.last_lsn, msgpack.unpackb(
                msgpack.packb(record, use_bin_type=True), raw=False, strict_map_key=False)))
        self.check_fence()  # written first, then checked, as the other stores (store.py)
        return self.last_lsn

    def check_fence(self) -> None:
        if self.fenced:
            raise JournalFenced.of(self.name)

    def replay(self, after_lsn: int = 0, decode: Callable[[Any, int], Any] | None = None
               ) -> Iterator[tuple[int, Any]]:
        # records kept in memory are always of this code's format
        return iter([(lsn, r if decode is None else decode(r, JOURNAL_FORMAT))
                     for lsn, r in self.records if lsn > after_lsn and r is not None])

    def truncate(self, upto_lsn: int) -> int:
        before = len(self.records)
        self.records = [(lsn, r) for lsn, r in self.records if lsn > upto_lsn]
        return before - len(self.records)

    def retract(self, after_lsn: int) -> bool:
        self.records = [(lsn, r) for lsn, r in self.records if lsn <= after_lsn]
        self.last_lsn = after_lsn
        return True

    def compact(self, drop: Callable[[Any], bool],
                decode: Callable[[Any, int], Any] | None = None) -> int:
        gone = {lsn for lsn, r in self.records if r is not None and
                drop(r if decode is None else decode(r, JOURNAL_FORMAT))}
        self.records = [(lsn, None if lsn in gone else r) for lsn, r in self.records]
        return len(gone)

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
        self._fenced: set[str] = set()  # journals fenced, dropped or not
        # journal -> its owner (own_journal): the start of a shard's incarnation claims it,
        # and its rebuild checks it; writes do not (one process's incarnations share this
        # object, so it cannot tell them apart: the other stores' objects are each one's)
        self._owners: dict[str, str] = {}
        self._covers: dict[int, tuple[str, int]] = {}  # partition -> snapshot_lsn
        self._meta: dict[str, bytes] = {}
        self._logs: dict[str, MemoryLog] = {}
        self._claim: tuple[str, str] | None = None  # (owner, holder) while claimed

    def put(self, partition: int, customer_id: str, blob: bytes,
            unless_fenced: str | None = None) -> None:
        self.put_many([(partition, customer_id, blob)], unless_fenced)

    def put_many(self, homes: Iterable[tuple[int, str, bytes]],
                 unless_fenced: str | None = None, lsn: int | None = None) -> None:
        self._check_unfenced(unless_fenced)
        for partition, customer_id, blob in homes:
            self._homes.setdefault(partition, {})[customer_id] = blob

    def get(self, partition: int, customer_id: str) -> bytes | None:
        return self._homes.get(partition, {}).get(customer_id)

    def get_many(self, partition: int, customer_ids: list[str]) -> list[bytes | None]:
        homes = self._homes.get(partition, {})
        return [homes.get(c) for c in customer_ids]

    def delete(self, partition: int, customer_id: str, unless_fenced: str | None = None
               ) -> None:
        self.delete_many([(partition, customer_id)], unless_fenced)

    def delete_many(self, homes: Iterable[tuple[int, str]], unless_fenced: str | None = None
                    ) -> None:
        self._check_unfenced(unless_fenced)
        for partition, customer_id in homes:
            self._homes.get(partition, {}).pop(customer_id, None)

    def take_partition(self, partition: int) -> dict[str, bytes]:
        return self._homes.pop(partition, {})

    def count(self, partitions: Iterable[int]) -> int:
        return sum(len(self._homes.get(p, ())) for p in partitions)

    def put_snapshots(self, snapshots: dict[int, bytes], unless_fenced: str | None = None,
                      lsn: int | None = None) -> None:
        self._check_unfenced(unless_fenced)
        if lsn is not None:
            for p in snapshots:
                journal, newer = self._covers.get(p, (None, 0))
                if journal == unless_fenced and newer > lsn:
                    raise JournalFenced.stale(str(unless_fenced), p, lsn, newer)
            self._covers.update((p, (str(unless_fenced), lsn)) for p in snapshots)
        self._snapshots.update(snapshots)

    def get_snapshot(self, partition: int) -> bytes | None:
        return self._snapshots.get(partition)

    def snapshot_lsn(self, partition: int) -> tuple[str, int] | None:
        return self._covers.get(partition)

    def own_journal(self, name: str, owner: str, claim: bool) -> None:
        if claim:
            self._owners[name] = owner
        elif self._owners.get(name, owner) != owner:
            raise JournalDisowned.of(name)

    def journal(self, name: str, policy: str = "fsync") -> MemoryJournal:
        if name in self._fenced:
            raise JournalFenced.of(name)
        return self._journals.setdefault(name, MemoryJournal(name))

    def read_journal(self, name: str) -> MemoryJournal:
        return self._journals.get(name) or MemoryJournal(name)

    def fence_journal(self, name: str) -> None:
        self._fenced.add(name)
        self._journals.setdefault(name, MemoryJournal(name)).fenced = True

    def drop_journal(self, name: str) -> None:
        self._journals.pop(name, None)  # a writer holding it still finds it fenced

    def put_meta(self, key: str, blob: bytes) -> None:
        self._meta[key] = blob

    def get_meta(self, key: str) -> bytes | None:
        return self._meta.get(key)

    def decision_log(self, name: str) -> MemoryLog:
        return self._logs.setdefault(name, MemoryLog())

    def decision_logs(self) -> list[str]:
        return sorted(self._logs)

    def claim(self, owner: str, holder: str) -> None:
        # no other process sees it: only another cluster in this one (tests) is kept out
        if self._claim is not None and self._claim[0] != owner:
            raise StoreInUse.of(self.url, self._claim[1])
        self._claim = (owner, holder)

    def release(self, owner: str) -> None:
        if self._claim is not None and self._claim[0] == owner:
            self._claim = None

    def claimed_by(self) -> tuple[str, str] | None:
        return self._claim

    def erased(self) -> None:
        pass  # no history of its writes is kept

    def _check_unfenced(self, journal: str | None) -> None:
        if journal in self._fenced:  # one process: the check and the write are one step
            raise JournalFenced.of(journal)
