"""Snapshots, erasure and recovery: what lets a shard be rebuilt from its store.

Partitions are snapshotted a while after they change (`checkpoint`, from `tick`), when they
move and at catalog switches; the journal is then truncated behind the oldest change not yet
in a snapshot. A snapshot holds a partition's resident customers (each with its idempotency
keys), its passivated customers waiting for timers (residency.py's sleepers: not in a
snapshot written before them), the watches of its customers not seen yet (watches.py's
`unseen`: none in a snapshot written before them, so those are lost at a restart from one)
and its share of the alias directory, and names the journal and LSN it covers.
Recovery loads each partition's snapshot and replays the journal it names through the same
handlers that applied the records (a partition never snapshotted replays from the start). A
customer's home in the store carries the LSN of its last change, so replay skips what a home
already holds; but for a Forget only its eviction and the home's deletion: a newer home is a
profile made again under the id, and the forget's tombstones and erasures still stand.
Passivating writes no snapshot, so a snapshot's residents may since live in their homes: once
the snapshots loaded hold more than the resident limit, those whose homes are as new as their
copies stay there (sleepers, with timers armed), so a restart holds no more than the shard did.
ForgetCustomer is finished by `erase`: the partitions are snapshotted without the customer
but naming the ids to erase, the journal is rewritten without their records, and the
partitions are snapshotted again without the ids (a rewrite that fails is tried again, by a
rebuilt shard too). The homes a Take or a Forget leave are deleted only once a snapshot
covers the record (`delete_homes`, after the snapshot: at the erase, a checkpoint, or before
a handoff), whatever the journal policy: a crash before then replays the record (or, with
nothing journaled, loses it and keeps the home), which asks again; the snapshot names the
homes until they are deleted. The directory's share in a snapshot carries the tombstones of
forgotten customers' links (identity.py), and a snapshot names the customers whose
decision-log erasure is not done yet (decisionlog.py), for recovery to ask again; once it is
done, the partition is snapshotted again (`_unname_erased`).

Snapshots are sealed with a checksum (storage/sealed.py; format 2). A snapshot whose checksum
fails, or whose block does not hold together, stops recovery with SnapshotCorrupt naming the
partition and the store: the shard stays UNAVAILABLE (retrying) until an operator removes
the snapshot (README, "Corruption"). Format 1 snapshots, written before sealing, are read
unchecked and counted in the recovery's `unchecked_snapshots`.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Iterable

from kairos.core.models import ModelTable

from kairos.cluster.identity import Directory, fingerprint, link_ids
from kairos.cluster.protocol import (INVALID, STAMPED, Event, EventRecord, Record, Reply,
                                     Request, Unclaim, record_from, route_key)
from kairos.cluster.settings import SNAPSHOT_BACKLOG
from kairos.cluster.shard.context import ShardContext
from kairos.cluster.shard.decisionlog import DecisionLog
from kairos.cluster.shard.journaling import Journaling
from kairos.cluster.shard.ownership import Ownership
from kairos.cluster.shard.residency import Residency, checked_sleepers
from kairos.cluster.shard.watches import Watches, checked_unseen
from kairos.cluster.storage import blocks
from kairos.cluster.storage.sealed import SnapshotCorrupt, seal, unseal
from kairos.cluster.storage.store import JournalReader, StoreCorrupt, intact_homes, redact

log = logging.getLogger("kairos.shard")
SNAPSHOT_FORMAT = 2  # 2: sealed with a checksum
REPLAY_CHUNK = 512  # journal records replayed per round
HOMES_READ = 1024  # homes read at once by a recovery past the resident limit
SNAPSHOT_WRITE_BYTES = 64 << 20  # snapshots packed before they go to the store


class Durability:
    def __init__(self, ctx: ShardContext, ownership: Ownership, residency: Residency,
                 directory: Directory, journaling: Journaling,
                 apply: Callable[[list[Request]], list[Reply]], decision_log: DecisionLog,
                 watches: Watches):
        """`apply`: run requests through the shard's handlers (no commit, no pushes)."""
        self._ctx = ctx
        self._watches = watches
        self._decision_log = decision_log
        self._ownership = ownership
        self._residency = residency
        self._directory = directory
        self._journaling = journaling
        self._apply = apply
        self._truncated = 0  # the journal holds nothing at or below this LSN that is needed
        self._unnaming: set[int] = set()  # to be snapshotted without erased ids (_unname_erased)

    def snapshot(self, partitions: Iterable[int]) -> int:
        """Write the partitions' snapshots, covering this journal up to its last LSN; the
        number of customers written. Partitions being handed over are left alone: their new
        owner writes theirs when it adopts them."""
        partitions = [p for p in partitions if p not in self._ownership.leaving]
        self._journaling.sync()
        journal = self._journaling.journal
        # a shard replaced while it still runs must not overwrite its heir's snapshots with
        # ones naming its fenced journal: each write is refused once the fence is up (the
        # store makes the check and the write one step against fence_journal)
        journal.check_fence()
        lsn, snapshots, size, customers = journal.last_lsn, {}, 0, 0
        # the snapshot covers the Forget records that asked for these erasures: they must be
        # asked for again after a restart (the ids are kept only until the log is erased)
        unerased: dict[int, list[str]] = {}
        for customer_id in self._decision_log.unerased():
            unerased.setdefault(self._ctx.partition_of(customer_id), []).append(customer_id)
        unseen: dict[int, dict[str, list[list]]] = {}
        for customer_id, registrations in self._watches.unseen(partitions).items():
            unseen.setdefault(self._ctx.partition_of(customer_id), {})[customer_id] = \
                registrations
        deletes = self._journaling.deletes
        members = self._residency.members_of(partitions)  # one pass over the table for all
        for i, p in enumerate(partitions):
            residents = members[p]
            customers += len(residents)
            snapshots[p] = seal(blocks.pack({
                "format": SNAPSHOT_FORMAT, "partition": p, "journal": self._ctx.name,
                "lsn": lsn, "catalog": self._ctx.compiled.version,
                "block": self._residency.export(residents),
                "sleepers": self._residency.sleepers(p),
                "unseen": unseen.get(p, {}),
                "directory": self._directory.export([p]),
                "unerased": sorted(unerased.get(p, [])),
                # the homes and journal records still to erase: this snapshot covers the
                # records that asked, so recovery asks again (a failed delete or rewrite, or
                # a crash, came first)
                "deleting": sorted(deletes.get(p, ())),
                "erasing": sorted(self._journaling.erasures_of(p))}))
            size += len(snapshots[p])
            if size >= SNAPSHOT_WRITE_BYTES or i == len(partitions) - 1:
                # bounded: a shard is gigabytes
                self._ctx.store.put_snapshots(snapshots, unless_fenced=self._ctx.name, lsn=lsn)
                snapshots, size = {}, 0
        for p in partitions:
            self._journaling.dirty.pop(p, None)
        self._ctx.counts["snapshots"] += len(partitions)
        # only now: deleted before the snapshot covers the Take or Forget that asked, a crash
        # (or a journal that keeps nothing: policy off, os at a power cut) would lose what the
        # home held, the state handed over or the forgotten customer's aliases
        self.delete_homes(partitions)
        if not self._unnaming.isdisjoint(partitions):  # the last write naming erased ids
            self._unnaming.difference_update(partitions)
            self._ctx.store.erased()
        return customers

    def checkpoint(self, changed_before: float, limit: int, budget_s: float = math.inf) -> int:
        """Snapshot up to `limit` partitions, oldest change first, whose oldest unsnapshotted
        change is older than `changed_before` or SNAPSHOT_BACKLOG journal records back, for
        at most `budget_s` (at least one partition); then truncate the journal behind the
        oldest change still waiting. The number of partitions written."""
        journal, dirty = self._journaling.journal, self._journaling.dirty
        backlog = journal.last_lsn - SNAPSHOT_BACKLOG
        due = sorted((first, p) for p, (first, when) in dirty.items()
                     if when <= changed_before or first <= backlog)[:limit]
        started, written = time.perf_counter(), 0
        for _, p in due:
            self.snapshot([p])
            written += 1
            if time.perf_counter() - started >= budget_s:
                break
        oldest = min((first for first, _ in dirty.values()), default=None)
        upto = journal.last_lsn if oldest is None else oldest - 1
        if upto > self._truncated:
            # an heir that fenced the journal may have read snapshots older than those just
            # written (they came after its read, so after the fence): it replays what this would cut
            journal.check_fence()
            journal.truncate(upto)
            self._truncated = upto
        return written

    def delete_homes(self, partitions: Iterable[int] | None = None) -> int:
        """Delete the homes that Take and Forget left (of these partitions, default all); the
        number deleted. Only once a snapshot covers the records that asked (`snapshot`): a
        crash before then replays them, which ask again, and one after reads the homes left
        in the snapshot (`deleting`)."""
        deletes = self._journaling.deletes
        due = [p for p in (list(deletes) if partitions is None else partitions) if p in deletes]
        if not due:
            return 0
        self._journaling.sync()
        homes = [(p, customer_id) for p in due for customer_id in deletes[p]]
        # in one batch (one fence check per transaction); the ids leave the sets once all are
        # deleted: if it fails, all stay for the next try (a home deleted twice is no harm)
        self._ctx.store.delete_many(homes, unless_fenced=self._ctx.name)
        for p in due:
            del deletes[p]
        return len(homes)

    def erase(self) -> int:
        """Delete the homes Take and Forget left that a snapshot covers (a delete after it
        failed); finish ForgetCustomer: snapshot the partitions without the forgotten
        customers (and their homes), rewrite the journal without their records, snapshot
        them again without their ids; the records dropped. A partition's records are dropped
        only once a snapshot holds it that recovery reads instead: this shard's, or its new
        owner's."""
        dirty = self._journaling.dirty
        # a snapshot covers their records, but a delete after it failed
        self.delete_homes([p for p in self._journaling.deletes if p not in dirty])
        self._unname_erased()
        owned, leaving = self._ownership.owned, self._ownership.leaving
        # being handed over: not snapshotted here (the new owner will), so its records stay
        # until it has moved (then they are dropped), or stayed (then snapshotted)
        erase = self._journaling.take_erasures(lambda p: p not in owned or p not in leaving)
        if not erase:
            return 0
        mine = [p for p in erase if p in owned]  # a released one: its owner's snapshot is read
        try:
            # written naming the erasures: a rewrite that fails leaves them to a rebuilt shard
            self.snapshot(mine)
            dropped = self._compact(erase)
        except BaseException:
            self._journaling.erase_again()
            raise
        self._journaling.erasures_done()
        try:
            self.snapshot(mine)  # again without their ids (one that fails: erased again later)
        finally:  # the journal is rewritten, the homes deleted: asked even if that snapshot fails
            self._ctx.store.erased()  # Redis: its AOF rewritten (storage/redis_aof.py)
        return dropped

    def _compact(self, erase: dict[int, set[str]]) -> int:
        """Rewrite the journal without the records naming these customers; how many went."""

        def mentions(record: Record) -> bool:
            gone = erase.get(record.partition)
            # every id a record names after its kind and partition (customer, anonymous id,
            # link target, alias key) may be the forgotten customer
            return gone is not None and any(isinstance(value, str) and value in gone
                                            for value in record[2:])
        dropped = self._journaling.journal.compact(mentions, decode=record_from)
        self._ctx.counts["erased_records"] += dropped
        return dropped

    def _unname_erased(self) -> None:
        """A customer whose decision-log erasure is done may still be named in its partition's
        snapshot (written while it was under way): the partition is marked changed, so the
        next checkpoint writes it without the id. Else a quiet partition's snapshot would
        keep the id, and every restart would erase it again."""
        # no record of the journal is needed for it: the change is past the last LSN
        owned, lsn, now = self._ownership.owned, self._journaling.journal.last_lsn + 1, \
            self._ctx.clock()
        for customer_id in self._decision_log.erased():
            p = self._ctx.partition_of(customer_id)
            if p in owned:  # else the snapshot recovery reads is its owner's, not this one's
                self._journaling.mark_dirty(p, lsn, now)
                self._unnaming.add(p)

    def recover(self, sources: dict[int, str] | None = None,
                leaving: Iterable[int] = ()) -> dict[str, Any]:
        """Load every owned partition from its snapshot and replay the journal the snapshot
        names (a partition never snapshotted replays `sources[p]`'s journal, by default this
        shard's). The `sources` journals, of a shard the controller replaced, are fenced
        first (store.py), so that should it still run, it acknowledges nothing this recovery
        does not read; every other shard's journal is read only, as its writer may run.
        Partitions recovered from another shard's journal are snapshotted here, so
        that journal may go; not those `leaving` (a move froze them before this shard was
        rebuilt): their new owner may have adopted them, and its snapshot must stay the one
        its recovery reads. Models start from the priors: the learner has what this shard had
        sent, and the next interval's sync or watch (shard/modelsync.py) brings it."""
        ctx, journaling = self._ctx, self._journaling
        started = time.perf_counter()
        for name in sorted(set((sources or {}).values()) - {ctx.name}):
            ctx.store.fence_journal(name)  # before its snapshots and journal are read
        plans: dict[str, dict[int, int]] = {}  # journal -> partition -> LSN its snapshot covers
        unchecked = 0
        # the customers loaded whose homes were not read: each block's journal, ids, LSNs, extras
        unread: list[tuple[str | None, list[str], Any, list]] = []
        for p in sorted(self._ownership.owned):
            blob = ctx.store.get_snapshot(p)
            if blob is None:
                plans.setdefault((sources or {}).get(p, ctx.name), {})[p] = 0
                continue
            snap, checked = self._read_snapshot(p, blob)
            self._check_newest(p, snap)
            unchecked += not checked
            for customer_id in snap.get("deleting", []):  # none in snapshots from before
                journaling.delete_later(p, customer_id)
            for customer_id in snap.get("erasing", []):
                journaling.erase_later(p, customer_id)
            journaling.stamps_of = snap["journal"]
            self._residency.load(snap["block"])
            self._residency.take_sleepers(p, snap["sleepers"])
            self._watches.take_unseen(snap["unseen"])
            self._directory.load(snap["directory"])
            for customer_id in snap.get("unerased", []):  # none in snapshots from before
                self._decision_log.forget(customer_id)
            plans.setdefault(snap["journal"], {})[p] = snap["lsn"]
            block = snap["block"]
            unread.append((block.get("journal"), block["ids"], block["lsn"], block["extras"]))
            if len(self._residency.recent) > self._residency.resident_limit:
                for loaded in unread:
                    self._leave_passivated(*loaded)
                unread = []
        # a snapshot past the journal's end: it lost its tail (journal.py, "Lost tails")
        own = max(plans.get(ctx.name, {}).values(), default=0)
        if own > journaling.journal.last_lsn:
            journaling.journal.skip_past(own)
        replayed = 0
        for name, after in plans.items():
            journaling.stamps_of = name
            journal = journaling.journal if name == ctx.name else ctx.store.read_journal(name)
            replayed += self._replay(journal, after)
            if name != ctx.name:  # this journal's LSNs mean nothing to ours
                for customer_id in self._residency.residents(after):
                    journaling.stamp(customer_id, 0)
        journaling.stamps_of = ctx.name
        leaving = set(leaving)
        foreign = [p for name, after in plans.items() if name != ctx.name for p in after]
        self.snapshot([p for p in foreign if p not in leaving])
        for p in leaving.intersection(foreign):  # replayed at another journal's LSNs, which
            journaling.dirty.pop(p, None)  # would hold back this journal's truncation
        ctx.engine.use_models(ModelTable(ctx.compiled))
        ctx.counts["recoveries"] += 1
        return {"shard": ctx.name, "partitions": len(self._ownership.owned),
                "resident": len(ctx.engine.table), "replayed": replayed,
                "journals": sorted(plans), "unchecked_snapshots": unchecked,
                "seconds": time.perf_counter() - started}

    def _leave_passivated(self, journal: str | None, ids: list[str], lsns: Any,
                          extras: list) -> None:
        """Evict the customers of a snapshot's block (`ids`, at `lsns` of `journal`, with
        `extras`) whose homes hold their copies (`_holds`): passivated since the snapshot
        (which passivation marks for the next checkpoint to write again), their homes hold
        what replay would have added to the copies. Each whose home has timers armed sleeps
        until the earliest. A home waiting to be deleted, one damaged or one at another
        journal's LSNs leaves its customer's copy where it is. The homes are read HOMES_READ
        at a time (a round trip each, on Redis)."""
        if journal is None:  # a block from before they named one: its LSNs compare to none
            return
        deletes, store = self._journaling.deletes, self._ctx.store
        for start in range(0, len(ids), HOMES_READ):
            chunk = ids[start:start + HOMES_READ]
            p = self._ctx.partition_of(chunk[0])  # a snapshot's block is one partition's
            # None for a damaged home too: its copy stays, the journal's records complete it
            blobs = intact_homes(store, p, chunk)
            for i, (customer_id, blob) in enumerate(zip(chunk, blobs), start):
                if blob is None or customer_id in deletes.get(p, ()):
                    continue
                try:
                    home = blocks.unpack(unseal(blob, "a customer's home")[0])
                    blocks.validate(home, shard=True)
                except (StoreCorrupt, blocks.BlockCorrupt):
                    continue
                if home["ids"] != [customer_id] or home.get("journal") != journal or \
                        not _holds(home["lsn"][0], home["extras"][0], lsns[i], extras[i]):
                    continue
                self._residency.evict(customer_id, p)
                timers = home["extras"][0].get("timers") or {}
                if timers:
                    self._residency.take_sleepers(p, {customer_id: min(timers.values())})

    def _read_snapshot(self, partition: int, blob: bytes) -> tuple[dict[str, Any], bool]:
        """A stored snapshot, and whether a checksum vouched for it; SnapshotCorrupt (logged
        with the way out) when it is damaged, in its journal's name or LSN too (read past here)."""
        what = f"the snapshot of partition {partition} in {redact(self._ctx.store.url)}"
        try:
            payload, checked = unseal(blob, what)
            snap = blocks.unpack(payload)
            if not isinstance(snap, dict) or snap.get("partition", partition) != partition or \
                    (type(snap.get("journal")), type(snap.get("lsn"))) != (str, int):
                raise SnapshotCorrupt(f"{what}: it is not this partition's snapshot of a journal")
            blocks.validate(snap["block"], shard=True)
            snap["sleepers"] = checked_sleepers(snap.get("sleepers", {}))
            snap["unseen"] = checked_unseen(snap.get("unseen", {}))  # none in older ones
            return snap, checked
        except (SnapshotCorrupt, blocks.BlockCorrupt, ValueError, KeyError, TypeError) as exc:
            error = exc if isinstance(exc, SnapshotCorrupt) else SnapshotCorrupt(
                f"{what}: {type(exc).__name__}: {exc}")
            log.error("%s: %s; this shard serves nothing until it is removed (its partition then "
                      "recovers from the journal and the customers' homes)", self._ctx.name, error)
            raise error from exc

    def _check_newest(self, partition: int, snap: dict[str, Any]) -> None:
        """SnapshotCorrupt (logged with the way out) when a newer snapshot of the partition,
        naming the same journal, was written than the one the store holds (store.py,
        "Owners"): its journal may since have been truncated behind the newer one, losing
        the records between, which replay could not tell."""
        newest = self._ctx.store.snapshot_lsn(partition)
        if newest is None or newest[0] != snap["journal"] or newest[1] <= snap["lsn"]:
            return
        error = SnapshotCorrupt(
            f"the snapshot of partition {partition} in {redact(self._ctx.store.url)} covers "
            f"journal {snap['journal']} up to LSN {snap['lsn']}, but one up to LSN {newest[1]} "
            f"was written before it (the older was written over it: an older Kairos, or a "
            f"copy restored), and the journal may no longer hold the records between")
        log.error("%s: %s; this shard serves nothing until an operator accepts the loss by "
                  "removing the partition's snapshot LSN record (README, \"Corruption\")",
                  self._ctx.name, error)
        raise error

    def _replay(self, journal: JournalReader, after: dict[int, int]) -> int:
        """Apply the journal's records of these partitions newer than their snapshots."""
        chunk: list[tuple[int, Record]] = []
        replayed = 0
        for lsn, record in journal.replay(min(after.values(), default=0), decode=record_from):
            if record.partition in after and lsn > after[record.partition]:
                chunk.append((lsn, record))
                if len(chunk) >= REPLAY_CHUNK:
                    replayed += self._apply_replayed(chunk)
                    chunk = []
        return replayed + self._apply_replayed(chunk)

    def _apply_replayed(self, chunk: list[tuple[int, Record]]) -> int:
        """Replay records through the handlers, skipping what a customer's home already holds
        (its stamp is at or past the record's LSN)."""
        journaling = self._journaling
        kept: list[tuple[int, Record]] = []
        applied = 0
        for lsn, record in chunk:
            # not in a snapshot yet: the journal must keep it
            journaling.mark_dirty(record.partition, lsn, self._ctx.clock())
            # a claim is noted in the directory, not in the home: whatever it holds, damaged or not
            if record.kind in STAMPED and record.kind != "claim":
                damaged = self._residency.probe(record.customer_id, record.partition)
                held = journaling.holds(record.customer_id, lsn)
                if record.kind == "forget" and held:
                    # in order: the records before it may be its customer's
                    applied += self._apply_kept(kept) + self._forget_beside(lsn, record)
                    kept = []
                    continue
                # not applied over nothing (a forget is: it deletes the home), nor over a
                # home that holds it (its keys came with it too)
                if (damaged is not None and record.kind != "forget") or held:
                    # a home that holds the merge holds the alias: its claim goes; a damaged
                    # one may come back from a backup older than the merge, so the claim
                    # stays for a forget to find
                    if record.kind == "merge" and damaged is None and self._links(record):
                        kept.append((lsn, Unclaim(partition=record.partition, key=record.key,
                                                  customer_id=record.customer_id,
                                                  link=record.link)))
                    elif record.kind == "merge" and damaged is None:
                        # a home without the link is a profile made again after a forget of
                        # the id, which (replayed) must bury the alias the merge gave the old
                        # one: noted as claimed, as it is not in the home (not a Claim
                        # record, whose stamp would take the home's back)
                        applied += self._apply_kept(kept)
                        kept = []
                        self._directory.claim(record.partition, record.customer_id,
                                              record.key)
                    continue
            kept.append((lsn, record))
        return applied + self._apply_kept(kept)

    def _links(self, merge: Record) -> bool:
        """Whether the merge's customer, resident, holds its link."""
        links = self._residency.extra(merge.customer_id).get("links") or ()
        return any(link in links for link in link_ids(merge.key, merge.customer_id))

    def _forget_beside(self, lsn: int, record: Record) -> int:
        """Replay a Forget whose customer's home is newer than it: the id was made again
        after the forget, and that profile passivated. The home is the new profile's, so it
        is neither evicted nor deleted; the rest of the forget is replayed (its directory
        tombstones, the decision log's erasure, the journal's), which the home does not hold.
        The new profile is kept from the handler as a home being deleted would be, and then
        loaded again, as `probe` had left it."""
        p, customer_id = record.partition, record.customer_id
        self._residency.evict(customer_id, p)
        hidden = self._journaling.deletes.setdefault(p, set())
        hidden.add(customer_id)  # not there before: `activate` would not have loaded it
        try:
            applied = self._apply_kept([(lsn, record)])
        finally:
            hidden.discard(customer_id)
            if not hidden:
                del self._journaling.deletes[p]
        self._residency.probe(customer_id, p)
        return applied

    def _apply_kept(self, kept: list[tuple[int, Record]]) -> int:
        """Apply records through the handlers and stamp the rows they changed."""
        if not kept:
            return 0
        journaling = self._journaling
        journaling.replaying = True
        try:
            replies = self._apply([_request(record) for _, record in kept])
        finally:
            journaling.replaying = False
        for (lsn, record), reply in zip(kept, replies):
            if reply.status == INVALID:  # the catalog changed under an unfinished switch
                log.warning("%s: replaying %s for id %s: %s: %s", self._ctx.name,
                            record.kind, fingerprint(route_key(record), self._directory.secret),
                            reply.field,
                            reply.reason)
            if record.kind in STAMPED:
                journaling.stamp(record.customer_id, lsn)
        return len(kept)


def _holds(lsn: int, extra: dict[str, Any], copy_lsn: int, copy: dict[str, Any]) -> bool:
    """Whether a customer's home (its LSN and extras) holds a snapshot's copy of it: newer,
    with every link of the copy (else it is a profile made again after a forget, whose
    replay needs the copy's aliases: `_apply_replayed`), or as new, with the same extras but
    whether it has a home (what was shown to the customer changes without a record)."""
    if lsn > copy_lsn:
        return set(copy.get("links") or ()) <= set(extra.get("links") or ())
    return lsn == copy_lsn and {**extra, "home": None} == {**copy, "home": None}


def _request(record: Record) -> Request:
    """The request that made a journal record (an event's record carries its sequence
    number besides)."""
    if isinstance(record, EventRecord):
        return Event(partition=record.partition, customer_id=record.customer_id,
                     event_type=record.event_type, time=record.time,
                     attributes=record.attributes, idempotency_key=record.idempotency_key)
    return record
