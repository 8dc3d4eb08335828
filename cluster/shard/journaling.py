"""The write side of a shard's journal: what each round changed, journaled as one batch.

Every change a round makes is noted as a record (protocol.py: an `EventRecord` for an applied
event, the request itself for the rest, a `Take` with the state it handed over), and `commit`
appends the round's records as one batch (group commit) before any answer leaves the shard.
If the append fails, `commit` raises StoreUnavailable: the round is not acknowledged, and the
caller discards the Shard and builds a new one from the store, so no half-applied state is
ever served.

Each record's LSN is stamped on the profile row it changed, so a customer's home in the store
(its passivated copy) names the last change it holds and replay skips what a home already has.
Partitions with changes not yet in a snapshot are `dirty`, from the LSN of their oldest such
change: the journal must keep everything from there on (durability.py snapshots them).
"""
from __future__ import annotations

from typing import Callable

from kairos.cluster.protocol import STAMPED, Record
from kairos.cluster.shard.context import ShardContext
from kairos.cluster.storage.store import JournalLike, StoreUnavailable


class Journaling:
    def __init__(self, ctx: ShardContext, policy: str):
        self._ctx = ctx
        self.journal: JournalLike = ctx.store.journal(ctx.name, policy)
        # each round's batch is durable before `commit` returns; ShardHost turns this off and
        # syncs on a thread of its own before it answers (host.py)
        self.sync_commits = True
        # replaying the journal: the handlers apply what it holds and record nothing new
        self.replaying = False
        self.stamps_of = ctx.name  # the journal whose LSNs the rows' stamps are
        # partition -> (first LSN, time) of its oldest change not yet in a snapshot
        self.dirty: dict[int, tuple[int, float]] = {}
        self._records: list[Record] = []  # this round's, in the order they were applied
        self._erase: dict[int, set[str]] = {}  # partition -> ids to erase from the journal
        self._erasing: dict[int, set[str]] = {}  # those of the rewrite under way
        # partition -> homes to delete from the store once a snapshot covers the records that
        # justify it (durability.py: `delete_homes`); until then nothing may load them
        self.deletes: dict[int, set[str]] = {}

    @property
    def pending(self) -> bool:
        """Whether changes of the round are recorded and not yet journaled."""
        return bool(self._records)

    def record(self, record: Record) -> None:
        if not self.replaying:
            self._records.append(record)

    def commit(self) -> None:
        """Journal the round's records as one batch; stamp the rows they changed."""
        records, self._records = self._records, []
        if not records:
            return
        before = self.journal.last_lsn
        try:
            last = self.journal.append(records, sync=self.sync_commits)
        except (OSError, StoreUnavailable) as exc:
            raise StoreUnavailable(f"{self._ctx.name}: journal: {exc}") from exc
        now = self._ctx.clock()
        # a journal that writes nothing (policy "off") takes no LSNs: every record is at the
        # last one written (stamping it lower would have replay apply again what a home holds)
        lsns = range(before + 1, last + 1) if last > before else [last] * len(records)
        for lsn, record in zip(lsns, records):
            self.mark_dirty(record.partition, lsn, now)
            if record.kind in STAMPED:
                self.stamp(record.customer_id, lsn)

    def sync(self) -> None:
        """Make the journal durable up to its last record. Before a snapshot or a home is
        written: they name the LSNs they cover, and a journal cut back after a failed sync
        must never be behind them."""
        if self.journal.unsynced:
            try:
                self.journal.sync()
            except OSError as exc:
                raise StoreUnavailable(f"{self._ctx.name}: journal: {exc}") from exc

    def stamp(self, customer_id: str, lsn: int) -> None:
        t = self._ctx.engine.table
        row = t.index.get(customer_id)
        if row is not None:
            t.lsn[row] = lsn

    def holds(self, customer_id: str, lsn: int) -> bool:
        """Whether the customer's row already holds the change at `lsn` (its home was written
        after it)."""
        t = self._ctx.engine.table
        row = t.index.get(customer_id)
        return row is not None and t.lsn[row] >= lsn

    def mark_dirty(self, partition: int, lsn: int, when: float) -> None:
        if partition not in self.dirty:
            self.dirty[partition] = (lsn, when)

    def erase_later(self, partition: int, customer_id: str) -> None:
        """Rewrite the journal without the customer's records at the next `erase`."""
        self._erase.setdefault(partition, set()).add(customer_id)

    def delete_later(self, partition: int, customer_id: str) -> None:
        """Delete the customer's home once a snapshot covers this round's records: deleted
        sooner, a crash would lose it with no record of why (or, the home holding a forgotten
        customer's aliases, without them)."""
        self.deletes.setdefault(partition, set()).add(customer_id)

    def take_erasures(self, due: Callable[[int], bool]) -> dict[int, set[str]]:
        """The erasures of the partitions `due` selects, now under way: snapshots name them
        (`erasures_of`) until `erasures_done`, or `erase_again` when the rewrite failed."""
        self._erasing = {p: ids for p, ids in self._erase.items() if due(p)}
        for p in self._erasing:
            del self._erase[p]
        return self._erasing

    def erasures_of(self, partition: int) -> set[str]:
        """The ids still to be erased from the partition's records, the rewrite's included."""
        return self._erase.get(partition, set()) | self._erasing.get(partition, set())

    def erasures_done(self) -> None:
        self._erasing = {}

    def erase_again(self) -> None:
        """The rewrite failed: its erasures are asked for again at the next `erase`."""
        for p, ids in self._erasing.items():
            self._erase.setdefault(p, set()).update(ids)
        self._erasing = {}

    def forget(self, partition: int) -> None:
        """The partition moved away: its new owner snapshotted it when it adopted it. (Its
        forgotten customers' records here are still erased at the next `erase`.)"""
        self.dirty.pop(partition, None)
        self.deletes.pop(partition, None)
