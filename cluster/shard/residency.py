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

Passivation runs on the shard's thread, requests waiting meanwhile, so a tick passivates
within PASSIVATE_BUDGET_S (one home at least), in chunks sized by the store's pace, and leaves
the rest to later ticks: customers that fell idle together (a bulk load, 15 minutes on) leave
at the store's pace within that budget (some 10 to 100 a second from a directory store, one
fsynced file a home), and meanwhile stay resident. Past the resident limit they go the same
way, least recent first, and up to RESIDENT_OVERFLOW of them may wait past it: at that ceiling
the shard `admits` no request that would bring in a customer not resident (it answers Busy,
to its caller, unretried) until ticks have passivated some. Residents so number at most the
limit and its overflow, plus the new customers of one round (admitted before any of them is
resident) and the sleepers a tick wakes; a shard that full takes new customers as fast as a
tick after such refusals writes homes in PASSIVATE_CROWDED_S (shard.py).

A customer passivated with armed timers is a sleeper: the timer wheel (timers.py) keeps its
earliest due time per partition and activates it when that comes, so its timer fires on
time. A partition's sleepers travel with it (`sleepers`: its snapshots and handoffs; older
snapshots have none, and their customers' timers fire when something activates them).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Iterable, Protocol, Sequence

from kairos.core.merge import merge_profiles

from kairos.cluster.identity import fingerprint
from kairos.cluster.settings import PASSIVATE_CHUNK, RESIDENT_OVERFLOW, SHARD_ROUND_LIMIT
from kairos.cluster.shard.context import ShardContext
from kairos.cluster.shard.journaling import Journaling
from kairos.cluster.shard.outcomes import outcome_secret
from kairos.cluster.shard.ownership import Ownership
from kairos.cluster.shard.timers import WAKE_LIMIT, Timers
from kairos.cluster.shard.watches import folded
from kairos.cluster.storage import blocks
from kairos.cluster.storage.sealed import seal, unseal
from kairos.cluster.storage.store import StoreCorrupt

log = logging.getLogger("kairos.shard")
# the key of a profile being folded into another: a lone surrogate, which no UTF-8 (gRPC,
# msgpack, a journal, a store) can carry, so no customer's id is it, now or kept from before
MERGING = "\ud800merging"
VISITS_TIMED = 256  # a passivation walk checks its deadline every so many residents
# how much a chunk's pace moves the estimate that sizes the next chunks: one fast or slow
# chunk (a cache, a stall) sizes the next ones by a quarter of its difference
PACE_WEIGHT = 0.25
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


class Residency:
    def __init__(self, ctx: ShardContext, ownership: Ownership, journaling: Journaling,
                 keepers: Sequence[CustomerState], idle_s: float, resident_limit: int):
        self._ctx, self._ownership, self._journaling = ctx, ownership, journaling
        self._keepers = tuple(keepers)
        self.idle_s = idle_s
        self.resident_limit = resident_limit
        # past the limit, while the ticks' budget catches up; then the shard admits no others
        self.overflow = overflow_of(resident_limit)
        self.chunk = PASSIVATE_CHUNK
        self._home_s = 0.0  # what writing a home takes, smoothed over chunks (PACE_WEIGHT)
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

    def passivate(self, now: float, budget_s: float = math.inf) -> int:
        """Send idle customers (and the least recent, past the resident limit) to the store;
        how many went. Within `budget_s` (the tick's: PASSIVATE_BUDGET_S), in chunks that
        the store's pace so far says fit in what is left of it (at most `chunk`, at least one
        home); the rest go on later calls (past the limit and `overflow`, the shard admits no
        customer not resident meanwhile). Unbudgeted, they all go in one batch.

        A customer with an armed timer stays resident while idle; the resident limit
        passivates it as a sleeper, which the timer wheel activates when its timer falls due.
        """
        self._homed.clear()  # forgets and handoffs remove homes: `admits` asks the store again
        over = len(self.recent) - self.resident_limit
        held = self._ownership.leaving.keys() | self._ownership.arriving.keys()
        if not held >= self._held:  # thawed or confirmed: the customers kept for it may go
            self._quiet_until = -math.inf
        self._held = held
        if over <= 0 and now < self._quiet_until:
            return 0
        started = time.perf_counter()
        deadline = started + budget_s
        done = 0
        while True:
            want = math.inf
            if budget_s < math.inf:
                # one home first, to learn the store's pace
                fits = int((deadline - time.perf_counter()) / self._home_s) \
                    if self._home_s else 1
                want = max(min(fits, self.chunk), 1)
            victims, full, quiet = self._walk(now, over - done, want, deadline)
            sending = time.perf_counter()
            self._send(victims)
            self._quiet_until = quiet  # written: a failed write is tried again next tick
            if victims:
                pace = (time.perf_counter() - sending) / len(victims)
                self._home_s += (pace - self._home_s) * PACE_WEIGHT if self._home_s else pace
            done += len(victims)
            if not full or time.perf_counter() >= deadline:
                if self._holes > len(self.recent):
                    self._compact()
                return done

    def _compact(self) -> None:
        """Copy `recent` afresh: a dict keeps the slots of the entries popped from it until an
        insert makes it grow, and each walk steps over them first (1.2 ms a walk after a
        million passivated). Once they outnumber its entries, as often as that."""
        self.recent = dict(self.recent)  # one copy (a list, a clear and an update: three)
        self._holes = 0

    def _walk(self, now: float, over: int, want: float,
              deadline: float) -> tuple[list[str], bool, float]:
        """Up to `want` customers to passivate, least recent first: the `over` least recent,
        then the idle ones; whether it stopped before the end (at `want`, or past `deadline`:
        the next walk carries on); when to walk again once they are written. Those idle with
        an armed timer, and those of partitions being handed over, are kept: moved to the
        end, looked at again once what is before them has fallen idle or been passivated."""
        victims, kept, full = [], [], False
        # the walk starts at the least recent; a dict's iteration first skips the slots its
        # moved entries left, so it is not begun every tick while nobody can be idle yet;
        # none, or only kept ones, left: fires and events move those, else look again once
        # one arriving now could be idle (a caller's `now` may be ahead of the clock)
        quiet = self._ctx.clock() + self.idle_s
        for visited, (customer_id, seen) in enumerate(self.recent.items(), 1):
            # kept ones cost a visit each, not a home: a walk over many checks the clock
            if len(victims) >= want or \
                    visited % VISITS_TIMED == 0 and time.perf_counter() >= deadline:
                full = True
                break
            if self._kept + len(kept) >= len(self.recent) - len(victims):
                break  # this pass kept every resident left: what follows it kept already
            p = self._ctx.partition_of(customer_id)
            # handed over already: its new owner writes it; adopted and not confirmed: a move
            # undone leaves it to its source (handoff.py, `arriving`)
            if p in self._ownership.leaving or p in self._ownership.arriving:
                kept.append(customer_id)
            elif over > len(victims):
                victims.append(customer_id)
            elif now - seen >= self.idle_s:
                (kept if customer_id in self.timers.armed else victims).append(customer_id)
            else:
                quiet = seen + self.idle_s
                break
        for customer_id in kept:
            self.recent[customer_id] = self.recent.pop(customer_id)
        # a pass over the residents may take several walks (ticks): those it kept lie
        # behind the ones it has not seen yet
        self._kept = self._kept + len(kept) if full else 0
        return victims, full, -math.inf if full else quiet

    def _send(self, victims: list[str]) -> None:
        """Write the customers' homes, then evict them (a sleeper each, with armed timers)."""
        if not victims:
            return
        self._journaling.sync()
        # only while no heir fenced this shard's journal: a replaced shard still running
        # would write its stale copies over the homes the heir wrote since (JournalFenced);
        # in one batch a chunk (one fence check per transaction), each home packed as it is
        # written
        table = self._ctx.engine.table
        self._ctx.store.put_many(
            ((self._ctx.partition_of(c), c, seal(blocks.pack(self.export([c]))))
             for c in victims), unless_fenced=self._ctx.name,
            lsn=max(int(table.lsn[table.index[c]]) for c in victims))  # what the homes name
        # their snapshots still hold them: the next checkpoint writes those without them (a
        # recovery then reads no home of theirs); past the last LSN, it holds back no record
        lsn, now = self._journaling.journal.last_lsn + 1, self._ctx.clock()
        for customer_id in victims:
            p = self._ctx.partition_of(customer_id)
            self._journaling.mark_dirty(p, lsn, now)
            # a new profile under a forgotten id: its home replaced the old one, which must
            # then not be deleted (the records that said so are durable since the sync); a
            # batch that failed leaves the delete, as the old home may still be there
            self._journaling.deletes.get(p, set()).discard(customer_id)
            due = min(self.timers.armed.get(customer_id, {}).values(), default=None)
            self._evict(customer_id)
            if due is not None:
                self.timers.sleep(p, customer_id, due)
        self._ctx.counts["passivations"] += len(victims)

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
