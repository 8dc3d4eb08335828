"""Passivation: a shard's residents sent to their homes in the store (a part of Residency:
residency.py), the idle ones and, past the resident limit, the least recent.

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
"""
from __future__ import annotations

import math
import time

from kairos.cluster.storage import blocks
from kairos.cluster.storage.sealed import seal

VISITS_TIMED = 256  # a passivation walk checks its deadline every so many residents
# how much a chunk's pace moves the estimate that sizes the next chunks: one fast or slow
# chunk (a cache, a stall) sizes the next ones by a quarter of its difference
PACE_WEIGHT = 0.25


class Passivation:
    """Residency's passivation (a part of it: residency.py, which holds the residents in
    their recency order, their timers, where the walks stopped and the store's pace, and
    exports and evicts customers)."""

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
