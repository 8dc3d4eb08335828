"""Residency: which customers are in memory, and their way in and out of it.

Each customer is a virtual actor (Orleans' grains, Akka's sharded entities): activated on
first use, from its home in the store if it has one; passivated to that home when idle, or
when the shard holds more than its resident limit (least recent first). Residency keeps the
members of each partition (in memory; a partition's snapshot and handoff are its members),
the recency order, and the customers' timers.

A home is sealed (storage/sealed.py: a BLAKE2b checksum), so damage is seen, not misread. A
damaged one (`HomeDamaged`) refuses its customer's requests and the round goes on for everyone
else: found before a round's handlers run for events, decisions, profiles and watches
(`probe`), and where the handlers load a customer for the others (an outcome, a link's steps;
a forget deletes the home); replay skips its customer's records. The home stays as it is for
an operator to restore or remove (README, "Corruption"). Homes written before they were
sealed are read unchecked.

A customer's state outside the profile table travels with it in its block's extras: its
armed timers (kept here), and the state of the parts registered as `CustomerState` (its
watches, its aliases and links). Loading a block replaces what a customer had here; folding
one (an anonymous profile merged in) adds to it. A resident's extras also say whether it has a
home in the store (the profile table's `home` column), so that the shard's `passivated`
counts only the homes of customers not resident, after a recovery or a handoff too (older
blocks say none has).

Passivation (passivation.py) goes at the store's pace, within a budget each tick; past the
resident limit and its overflow, the shard `admits` no request that would bring in a customer
not resident until ticks have passivated some.

A customer passivated with armed timers is a sleeper: the timer wheel (timers.py) keeps its
earliest due time per partition and activates it when that comes, so its timer fires on
time. A partition's sleepers travel with it (`sleepers`: its snapshots and handoffs; older
snapshots have none, and their customers' timers fire when something activates them).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Protocol, Sequence

from kairos.core.merge import merge_profiles

from kairos.cluster.identity import fingerprint
from kairos.cluster.settings import PASSIVATE_CHUNK, RESIDENT_OVERFLOW, SHARD_ROUND_LIMIT
from kairos.cluster.shard.context import ShardContext
from kairos.cluster.shard.journaling import Journaling
from kairos.cluster.shard.outcomes import outcome_secret
from kairos.cluster.shard.ownership import Ownership
from kairos.cluster.shard.passivation import Passivation
from kairos.cluster.shard.timers import WAKE_LIMIT, Timers
from kairos.cluster.shard.watches import folded
from kairos.cluster.storage import blocks
from kairos.cluster.storage.sealed import unseal
from kairos.cluster.storage.store import StoreCorrupt

log = logging.getLogger("kairos.shard")
# the key of a profile being folded into another: a lone surrogate, which no UTF-8 (gRPC,
# msgpack, a journal, a store) can carry, so no customer's id is it, now or kept from before
MERGING = "\ud800merging"
WAKE_TICKS = 2  # ticks of woken sleepers the profile table reserves rows for
# customers `admits` found with a home, remembered until the next passivation (a tick's) so
# that each request refused at the ceiling does not read a whole home again: at most so many
HOMED_KEPT = 65_536


def checked_sleepers(value: Any) -> dict[str, float]:
    """A partition's sleepers as its snapshot or handoff carries them, from the store or
    another process: ValueError unless they are customer ids with finite due times."""
    if not isinstance(value, dict) or not all(
            isinstance(c, str) and type(due) in (int, float) and math.isfinite(due)
            for c, due in value.items()):
        raise ValueError("a partition's sleepers are not customer ids with due times")
    return {c: float(due) for c, due in value.items()}


def overflow_of(resident_limit: int) -> int:
    """How many residents may wait past the limit for the ticks' budget (RESIDENT_OVERFLOW,
    at most the limit)."""
    return min(RESIDENT_OVERFLOW, resident_limit)


def table_rows(resident_limit: int, overflow: int) -> int:
    """The profile table's rows for a shard's residents: the limit, the overflow past it, one
    round's new customers and the sleepers WAKE_TICKS ticks wake (full rows, past the
    overflow: nothing refuses a timer), so that reaching the overflow never copies the table
    to grow it (state.py); a longer backlog of wakes than the ticks' budget writes does."""
    return resident_limit + overflow + SHARD_ROUND_LIMIT + WAKE_TICKS * WAKE_LIMIT


class HomeDamaged(StoreCorrupt):
    """A customer's home fails its checksum, does not read as a customer block, or the store
    finds it damaged (its envelope around the sealed blob, or another customer's)."""


class CustomerState(Protocol):
    """Per-customer state a part keeps beside the profile, riding in the customer's block."""

    def extra(self, customer_id: str) -> dict[str, Any]:
        """The customer's state, as keys of its block's extras."""

    def restore(self, customer_id: str, extra: dict[str, Any]) -> None:
        """Add what `extra` holds to what the customer has here."""

    def drop(self, customer_id: str, evicted: bool) -> None:
        """Forget the customer's state (`evicted`: it leaves memory, else it is reloaded)."""


class Residency(Passivation):
    def __init__(self, ctx: ShardContext, ownership: Ownership, journaling: Journaling,
                 keepers: Sequence[CustomerState], idle_s: float, resident_limit: int):
        self._ctx, self._ownership, self._journaling = ctx, ownership, journaling
        self._keepers = tuple(keepers)
        self.idle_s = idle_s
        self.resident_limit = resident_limit
        # past the limit, while the ticks' budget catches up; then the shard admits no others
        self.overflow = overflow_of(resident_limit)
        self.chunk = PASSIVATE_CHUNK
        self._home_s = 0.0  # what writing a home takes, smoothed (passivation.py PACE_WEIGHT)
        self._holes = 0  # residents evicted since `recent` was last compacted
        self._kept = 0  # residents kept by this pass of walks so far
        # residents -> when last used, least recent first: a plain dict keeps insertion order
        # in half an OrderedDict's memory per entry (moving to the end is a pop and an insert)
        self.recent: dict[str, float] = {}
        # passivate need not walk `recent` before this (its oldest entry falls idle then)
        self._quiet_until = -math.inf
        self._held: set[int] = set()  # partitions leaving or arriving as passivate last saw
        self.timers = Timers(self._wake)
        self._homeless: set[str] = set()  # found with no home this round (`probe`)
        self._homed: set[str] = set()  # found with a home since the last passivation (`admits`)
        self._crowded: set[str] = set()  # refused at the ceiling this round (`admits`)
        self._damaged: set[str] = set()  # customers whose damaged home was logged

    def activate(self, customer_id: str, partition: int, create: bool = True,
                 stored: bool = True) -> bool:
        """Make the customer resident (from the store if passivated; not `stored`: the caller
        just found no home there); False if unknown and not `create`. A profile the engine
        made itself (an outcome for a customer shown a decision before it had one) becomes
        a resident here, of the partition its id hashes to, not whichever a request named."""
        row = self._ctx.engine.table.index.get(customer_id)
        if row is None:
            # a home waiting to be deleted belongs to a customer taken or forgotten
            stored = stored and customer_id not in self._homeless and \
                customer_id not in self._journaling.deletes.get(partition, ())
            if stored and self._load_home(partition, customer_id):
                self.timers.woke(partition, customer_id)  # its timers are armed here now
                self._ctx.counts["activations"] += 1
            elif not create:
                return False
            row = self._ctx.engine.activate([customer_id])[0]
        table = self._ctx.engine.table
        if table.partition[row] < 0:  # new: here, or made by the engine
            table.partition[row] = self._ctx.partition_of(customer_id)
        customer_id = table.ids[row]  # held once: requests bring copies
        self.recent.pop(customer_id, None)
        self.recent[customer_id] = self._ctx.seen()
        return True

    def _load_home(self, partition: int, customer_id: str) -> bool:
        """Load the customer's home, if it has one (whether it had); HomeDamaged, logged and
        counted once a damage, if it is damaged (nothing of it is loaded then: a block is
        validated whole first), the store's envelope around it included."""
        try:
            blob = self._ctx.store.get(partition, customer_id)
            if blob is None:
                return False
            self.load(blocks.unpack(unseal(blob, "a customer's home")[0]))
            self._house(customer_id, True)
        except (StoreCorrupt, blocks.BlockCorrupt) as exc:
            if customer_id not in self._damaged:
                self._damaged.add(customer_id)
                self._ctx.counts["damaged_homes"] += 1
                # not the home's path: an unkeyed hash of the id, which logs (no forget
                # erases them) must not keep
                log.error("%s: customer %s: its stored profile (partition %d) is damaged (%s); "
                          "its requests are refused until the home is restored or removed "
                          "(README, Corruption)", self._ctx.name,
                          fingerprint(customer_id, outcome_secret(self._ctx.store)), partition,
                          type(exc).__name__)
            # nor its answer, which the gateway logs: the damage's detail names the path
            raise HomeDamaged(f"this customer's stored profile (partition {partition}) is "
                              f"damaged") from None
        self._damaged.discard(customer_id)  # restored: a later damage is logged again
        return True

    def probe(self, customer_id: str, partition: int) -> str | None:
        """Before a round's handlers run: load the customer from its home if it has one.
        Why its requests are refused if the home is damaged, else None."""
        if customer_id in self._ctx.engine.table or customer_id in self._homeless:
            return None
        try:
            if not self.activate(customer_id, partition, create=False):
                self._homeless.add(customer_id)  # the handlers need not ask the store again
        except HomeDamaged as exc:
            return str(exc)
        return None

    def round_done(self) -> None:
        """Homes may appear between rounds (passivation, handoffs): ask the store again."""
        self._homeless.clear()
        self._crowded.clear()

    def admits(self, customer_id: str, partition: int, creates: bool) -> bool:
        """Whether a request may bring the customer in (make it, or load its home): a
        resident's always, another's while residents are fewer than the limit and its
        overflow (the shard answers it Busy: ticks passivate at their budget's pace); past
        that, one that makes no customer (not `creates`: a decision, profile read or watch)
        while the customer has no home to load (nor a damaged one: `probe` answers it). None
        of a customer refused earlier in the round: room may have come since (a forget), and
        its later request applied would overtake the refused one."""
        if customer_id in self._crowded:
            return False
        if customer_id in self.recent or len(self.recent) < self.resident_limit + self.overflow:
            return True
        if not creates and self._homeless_now(customer_id, partition):
            return True
        self._crowded.add(customer_id)
        return False

    def _homeless_now(self, customer_id: str, partition: int) -> bool:
        if customer_id in self._homeless or \
                customer_id in self._journaling.deletes.get(partition, ()):
            return True
        if customer_id in self._homed:
            return False
        try:
            if self._ctx.store.get(partition, customer_id) is not None:
                if len(self._homed) < HOMED_KEPT:
                    self._homed.add(customer_id)
                return False
        except StoreCorrupt:  # nothing to load: `probe` answers the damage
            return True
        self._homeless.add(customer_id)  # `probe` need not ask the store again this round
        return True

    def passivated(self, homes: int) -> int:
        """How many of `homes` (the count of the store's homes in the shard's partitions)
        are of customers not resident: a resident keeps its home until its next passivation,
        and one new here has none."""
        return max(homes - self._ctx.engine.table.housed(), 0)

    def members_of(self, partitions: Iterable[int]) -> dict[int, list[str]]:
        """Each of the partitions with its residents, in a stable order (one pass for all)."""
        return self._ctx.engine.table.members_of(partitions)

    def residents(self, partitions: Iterable[int]) -> list[str]:
        """The partitions' resident customers, in a stable order."""
        return [c for cs in self.members_of(partitions).values() for c in cs]

    def sleepers(self, partition: int) -> dict[str, float]:
        """The partition's passivated customers with armed timers, each with its earliest
        due time: what its snapshot or handoff carries besides its residents."""
        return dict(self.timers.asleep.get(partition, {}))

    def take_sleepers(self, partition: int, sleepers: dict[str, float]) -> None:
        """Wake the partition's sleepers (`sleepers`, checked: `checked_sleepers`) when their
        timers fall due."""
        self.timers.sleep_all(partition, sleepers)

    def _wake(self, partition: int, customer_id: str) -> bool:
        """The timer wheel's: a sleeper's timer fell due, so make it resident (its timers are
        armed then, and fire); False while its partition is being handed over (the timer
        fires after a thaw, or the sleeper leaves with the partition), or adopted and not
        confirmed (handoff.py, `arriving`: an undone move's source wakes it)."""
        if partition in self._ownership.leaving or partition in self._ownership.arriving:
            return False
        try:
            self.activate(customer_id, partition, create=False)  # no home: forgotten or taken
        except HomeDamaged:  # logged: its timers fire once the home is restored and read
            pass
        return True

    # -- blocks --------------------------------------------------------------------------------

    def export(self, customer_ids: Sequence[str]) -> dict[str, Any]:
        """The customers (resident) as a block, with their timers and keepers' state."""
        extras = [self.extra(c) for c in customer_ids]
        return blocks.export_block(self._ctx.engine, customer_ids, extras, self._ctx.name)

    def load(self, block: dict[str, Any]) -> list[str]:
        """Make a block's customers resident in their partitions, replacing what they had."""
        ids = blocks.import_block(self._ctx.engine, block, self._journaling.stamps_of,
                                  shard=True)
        table = self._ctx.engine.table
        for customer_id, extra in zip(ids, block["extras"]):
            self.timers.take(customer_id)
            for keeper in self._keepers:
                keeper.drop(customer_id, evicted=False)
            self._restore(customer_id, extra)
            self._house(customer_id, bool(extra.get("home")))
            table.partition[table.index[customer_id]] = self._ctx.partition_of(customer_id)
            self.recent[customer_id] = self._ctx.seen()
        return ids

    def reload(self, block: dict[str, Any]) -> None:
        """Load every resident customer again, into the engine of a new catalog (their timers
        are armed afresh under its numbering; sleepers' homes name theirs)."""
        self.timers.disarm_all()
        self.load(block)

    def fold(self, customer_id: str, block: dict[str, Any]) -> None:
        """Merge a one-customer block (an anonymous profile handed over by a link) into the
        customer: counts and decayed sums add, last values keep the newest, histories
        interleave (core/merge.py); timers, watches and aliases join the customer's."""
        extra = folded(block["extras"][0], block["ids"][0])
        block["ids"] = [MERGING]
        engine = self._ctx.engine
        engine.activate([customer_id])  # a customer known only by id so far
        blocks.import_block(engine, block)
        merge_profiles(self._ctx.compiled, engine.table, customer_id, MERGING)
        engine.table.evict(MERGING)
        self._restore(customer_id, extra)

    def evict(self, customer_id: str, partition: int) -> None:
        """Drop the customer from memory (its home, if any, stays in the store). The pass of
        passivation walks starts again: residents leaving behind where it stopped would make
        those it kept seem to be every resident left, and the idle ones after them skipped."""
        self._kept = 0
        self._evict(customer_id)

    def _evict(self, customer_id: str) -> None:
        self._ctx.engine.table.evict(customer_id)
        self.timers.take(customer_id)
        self.drop_kept(customer_id)
        if self.recent.pop(customer_id, None) is not None:
            self._holes += 1

    def drop_kept(self, customer_id: str) -> None:
        """Forget what the keepers hold of the customer, resident or not (a watch of a
        customer not seen yet is held without a profile)."""
        for keeper in self._keepers:
            keeper.drop(customer_id, evicted=True)

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Evict every member of the partitions (they moved away), and forget their sleepers."""
        for p, residents in self.members_of(partitions).items():
            for customer_id in residents:
                self.evict(customer_id, p)
            self.timers.drop_partition(p)

    def extra(self, customer_id: str) -> dict[str, Any]:
        names = self._ctx.compiled.timer_names
        extra = {"timers": {names[k]: due
                            for k, due in self.timers.armed.get(customer_id, {}).items()}}
        for keeper in self._keepers:
            extra.update(keeper.extra(customer_id))
        table = self._ctx.engine.table
        if table.home[table.index[customer_id]]:  # so that a snapshot or handoff says so
            extra["home"] = True
        return extra

    def _house(self, customer_id: str, home: bool) -> None:
        """Note whether the resident has a home in the store (activated from it, or so its
        snapshot or handoff says): the homes of the others are the passivated customers'
        (`passivated`). A row's flag goes with its eviction."""
        self._ctx.engine.table.home[self._ctx.engine.table.index[customer_id]] = home

    def _restore(self, customer_id: str, extra: dict[str, Any]) -> None:
        """Add a customer's timers and keepers' state to what it has here (a timer armed on
        both sides keeps the later due time, as the later start would have)."""
        index = {name: k for k, name in enumerate(self._ctx.compiled.timer_names)}
        armed = self.timers.armed.get(customer_id, {})
        for name, due in extra["timers"].items():
            k = index.get(name)
            if k is not None and not armed.get(k, -math.inf) >= due:
                self.timers.arm(customer_id, k, due)
        for keeper in self._keepers:
            keeper.restore(customer_id, extra)
