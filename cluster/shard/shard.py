"""Shard: the host of many customer actors, without Ray.

Each customer is a virtual actor (Orleans' grains, Akka's sharded entities): one owner, its
messages processed in order, its state in memory, activated on first use, passivated when
idle. A shard owns some partitions and hosts their customers in the core's columnar state, so
one kernel call serves a whole batch of them. ShardHost (host.py) drives a Shard from a single
thread, so nothing here locks, and everything here is tested without Ray.

A Shard is composed of parts that each own their state, and share only context.py's
(the name, the engine of the catalog in use, the store, the clock, the tallies):

- ownership.py: the partitions served and the MOVED answer;
- residency.py (+ passivation.py): activation, passivation, the resident customers per
  partition, their timers;
- customers.py: events, timer firings, decisions, outcomes, profile reads, watches;
- identities.py: the alias directory, a link's steps, forgetting; linkhold.py: what they hold;
- watches.py: who wants pushes, and the pushes a round's changes make;
- keys.py: recent idempotency keys per customer (they ride in its block), and as
  outcomes.TaughtLabels the labels outcomes taught;
- outcomes.py: decision ids sealed as they leave, and the outcomes taken;
- journaling.py, durability.py: the journal of each round, snapshots, erasure, recovery;
- handoff.py: partitions moving between shards; catalogs.py: two-phase catalog switches;
- dispatch.py: a round's runs of requests handed to their parts by kind, and the answers given
  before any part sees one (MOVED, MERGED, CROWDED, FORGETTING, a link's hold, ...).

The wall clock (`clock`) is the context's; the steady one (`steady`) times the outcome rate
(outcomes.py `OutcomeRate`), whose window no restart or other shard reads.

This module composes them and ticks. Requests and replies are protocol.py's types: `process`
answers each request with a reply (Ok, EventAck, Forgotten, Moved when its partition is not or
no longer here, Invalid for bad input with nothing applied, Missing, Merged for an anonymous
customer since linked into another, Conflict, Busy for a customer it has no room for
(CROWDED), an outcome past its customer's rate or a request a link holds back (linkhold.py);
the host adds Busy and Unavailable for whole batches), and journals the round's changes as one
batch before it returns (journaling.py).
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import Any, Callable, Iterable, Mapping, Sequence

from kairos.core.compiler import CompiledCatalog
from kairos.core.decision import Decision
from kairos.core.engine import DecisionEngine

from kairos.cluster.identity import Directory
from kairos.cluster.protocol import Fire, Reply, Request
from kairos.cluster.settings import (PASSIVATE_BUDGET_S, PASSIVATE_CROWDED_S, PASSIVATE_IDLE_S,
                                     RESIDENT_LIMIT, SHARD_ROUND_BYTES, SNAPSHOT_AFTER_S,
                                     SNAPSHOT_BUDGET_S, TICK_FIRE_LIMIT, TICK_S)
from kairos.cluster.shard.catalogs import CatalogSwitch
from kairos.cluster.shard.context import ShardContext
from kairos.cluster.shard.customers import CustomerRequests
from kairos.cluster.shard.decisionlog import DecisionLog
from kairos.cluster.shard.dispatch import Dispatch
from kairos.cluster.shard.durability import Durability
from kairos.cluster.shard.handoff import Handoff
from kairos.cluster.shard.identities import CustomerIdentities, IdentityRequests
from kairos.cluster.shard.journaling import Journaling
from kairos.cluster.shard.keys import IdempotencyKeys
from kairos.cluster.shard.linkhold import LinkHold, Senders
from kairos.cluster.shard.outcomes import DecisionSeal, TaughtLabels, outcome_secret
from kairos.cluster.shard.ownership import Ownership
from kairos.cluster.shard.residency import Residency, overflow_of, table_rows
from kairos.cluster.shard.rounds import fire_bytes
from kairos.cluster.shard.timers import Timers
from kairos.cluster.shard.watches import Push, Pushed, View, Watches
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.store import JournalLike, Store

log = logging.getLogger("kairos.shard")
# The most due timers a tick takes off the due order whose firing waits (partition moving,
# customer not in memory): not journaled, they cost only the loop's time (a few µs each)
HELD_PER_TICK = 65_536


class Shard:
    """Partitions, their resident customers, timers and watches; one engine at a time."""

    def __init__(self, name: str, compiled: CompiledCatalog,
                 partitions: Iterable[int] | Mapping[int, int], n_partitions: int, *,
                 granted: int = 0, store: Store | None = None, seed: int = 0,
                 clock: Callable[[], float] = time.time,
                 steady: Callable[[], float] = time.monotonic, journal_policy: str = "fsync",
                 idle_s: float = PASSIVATE_IDLE_S, resident_limit: int = RESIDENT_LIMIT):
        """`partitions`: the partitions owned, granted by map version `granted`, or a mapping
        of each to the map version that granted it. `clock` tells the time things happen (it
        is journaled, sealed into decision ids, compared across shards and restarts); `steady`
        times what only this process measures (the outcome rate's window), so that stepping
        the wall clock neither lets a burst through nor holds refusals; a test that drives the
        rate with a fake clock passes it as both."""
        # the profile table reserves the residents' rows (up to the limit's overflow): address
        # space until used
        rows = table_rows(resident_limit, overflow_of(resident_limit))
        self.ctx = ctx = ShardContext(name, n_partitions,
                                      DecisionEngine(compiled, capacity=rows, seed=seed),
                                      store if store is not None else MemoryStore(), clock,
                                      seed)
        owned = dict(partitions) if isinstance(partitions, Mapping) else \
            {p: granted for p in partitions}
        self.ownership = Ownership(owned)
        self.journaling = Journaling(ctx, journal_policy)
        self.keys = IdempotencyKeys(clock)
        self.labels = TaughtLabels(clock)
        secret = outcome_secret(ctx.store)
        self.directory = Directory(secret)
        self.link_hold = LinkHold(self.directory.linking, clock)
        self.watches = Watches(ctx)
        self.identities = CustomerIdentities()
        self.residency = Residency(ctx, self.ownership, self.journaling,
                                   (self.watches, self.identities, self.keys, self.labels),
                                   idle_s, resident_limit)
        self.seal = DecisionSeal(secret, clock)
        self.decision_log = DecisionLog(ctx)
        self.customers = CustomerRequests(ctx, self.residency, self.keys, self.labels,
                                          self.journaling, self.watches, self.seal,
                                          self.identities, self.directory, self.decision_log,
                                          steady)
        identity = IdentityRequests(ctx, self.residency, self.journaling, self.directory,
                                    self.identities, self.decision_log, self.watches)
        self.durability = Durability(ctx, self.ownership, self.residency, self.directory,
                                     self.journaling, self._replayed, self.decision_log,
                                     self.watches)
        self.handoff = Handoff(ctx, self.ownership, self.residency, self.directory,
                               self.journaling, self.durability, self.watches)
        self.catalogs = CatalogSwitch(ctx, self.ownership, self.residency, self.watches,
                                      self.durability)
        customers = self.customers
        handlers = {
            "event": customers.events, "fire": customers.fires, "decide": customers.decisions,
            "outcome": customers.outcomes, "profile": customers.profiles,
            "watch": customers.watch, "forget": identity.forget, "resolve": identity.resolve,
            "link": identity.link, "unlink": identity.unlink, "take": identity.take,
            "merge": identity.merge, "settle": identity.settle, "claim": identity.claim,
            "unclaim": identity.unclaim, "retire": identity.retire, "bury": identity.bury}
        self.dispatch = Dispatch(ctx, self.ownership, self.journaling, self.residency,
                                 self.directory, self.link_hold, self.handoff, self.watches,
                                 handlers)
        # customers with a home in the store, as last counted (ShardHost recounts them every
        # STORE_COUNT_S on a thread: a directory store's count lists its folders)
        self.stored = 0
        self._told_overflow = False  # that the string table overflowed (`_keep_strings`)

    # -- requests ------------------------------------------------------------------------------

    def process(self, requests: Sequence[Request | list | tuple],
                routed: Sequence[int] | None = None, senders: Senders | None = None
                ) -> tuple[list[Reply], list[Push]]:
        """Replies in request order, and pushes for watched customers whose best action
        changed. Requests are protocol types, or the arrays they travel as (turned into them
        here; one that is not a request answers Invalid by itself). `routed` holds, per request,
        the map version its sender routed it under (None: any); `senders`, the round's runs of
        requests by sender (None: one sender's), so that a link's hold keeps back only its
        sender's (linkhold.py). Runs of the same kind go to the kernel together; per-customer
        order is request order. Raises StoreUnavailable when the round's records could not be
        journaled: nothing of it is acknowledged, and this Shard must be rebuilt from the store.
        """
        replies, touched = self.dispatch.run(requests, routed, senders)
        written_after = self.journal.last_lsn
        self.journaling.commit()
        try:
            pushes = self._sealed(self.watches.changes(touched), touched) + \
                self.watches.unwatched()  # the forgets' word, after the round's pushes
            self.decision_log.flush()
        except Exception:  # answered UNAVAILABLE, and this Shard is rebuilt from the store:
            if not self.journal.retract(written_after):  # its records must not come back
                log.warning("%s: a failed round's records were synced with earlier rounds'; "
                            "the rebuild applies them", self.name)
            raise
        self._keep_strings()
        return replies, pushes

    def _keep_strings(self, wanted: int | None = None, spaced: bool = True) -> None:
        """Between rounds, where no encoded event or request holds a string code: compact
        the engine's string table when it is due (core/strings.py), or, `wanted` given (a
        handoff's block about to be taken in), when fewer codes are vacant than that (not
        `spaced`: whatever the last pass's length, as in a replay: core/strings.py), so that
        free text costs room only while a resident profile holds it, timed
        (string_compaction_s); tally the strings that overflowed all the same (the live ones
        did not fit), and say once which fields hold the most. A compaction that fails
        (memory) leaves the table as it was, and so does the count of fields for the warning:
        the round it follows is journaled and answered, so they are logged, not raised."""
        engine = self.engine
        strings = engine.compiled.strings
        if strings.due(spaced) if wanted is None else strings.vacant() < wanted:
            start = time.perf_counter()
            try:
                engine.compact_strings()
                self.counts["string_compactions"] += 1
            except Exception:
                log.exception("%s: the string table's compaction failed; it is as it was, "
                              "and tried again later", self.name)
            self.counts["string_compaction_s"] += time.perf_counter() - start
        overflowed = strings.overflowed()
        if not overflowed:
            return
        self.counts["strings_overflowed"] += overflowed
        if not self._told_overflow:  # once: a shard past its limit would say it every round
            self._told_overflow = True
            try:
                fields = ", ".join(f"{name} ({n:,})" for name, n in engine.distinct_strings())
            except MemoryError:  # a column's unique values: the warning goes out without them
                fields = "not counted (out of memory)"
            log.warning("%s: %d new strings read back as %r, not as sent: the string table "
                        "reached its limit of %d strings (%d held now). The fields with the "
                        "most distinct values among its residents: %s", self.name,
                        overflowed, strings.OVERFLOW_TEXT, strings.limit,
                        len(strings.codes), fields)

    def _sealed(self, pushes: list[Push], touched: dict[str, float]) -> list[Push]:
        """The pushes with their decisions sealed (and logged) once each, whatever the
        number of sinks a decision goes to; one to a sink that also follows its customer by
        other ids names them (`Pushed`)."""
        sealed: dict[int, Decision] = {}
        for push in pushes:
            decision = push.decision
            if id(decision) not in sealed:
                sealed[id(decision)] = self.seal.seal(decision)
                self.decision_log.decided(decision, sealed[id(decision)].decision_id,
                                          touched[decision.customer_id], None, pushed=True)
        return [Push(p.sink, Pushed(**vars(sealed[id(p.decision)]), also=p.also) if p.also
                     else sealed[id(p.decision)]) for p in pushes]

    def _replayed(self, requests: list[Request]) -> list[Reply]:
        replies = self.dispatch.run(requests, None, None)[0]
        # a long replay brings as many strings as the rounds it replays, far faster than
        # rounds come while serving, which the passes' spacing is for
        self._keep_strings(spaced=False)
        return replies

    def tick(self) -> list[Push]:
        """Fire due timers (journaled like events, a round's worth: `_due_fires`), passivate
        idle customers, erase what ForgetCustomer asked for, snapshot partitions whose changes
        have waited long enough; pushes for the timers' changes."""
        now = self.ctx.clock()
        _, pushes = self.process(self._due_fires(now))
        # Refusing new customers at the ceiling, a tick's budget lets in as many as a few
        # homes' writing (some 10 a second): it may take PASSIVATE_CROWDED_S, at most half a
        # tick. Every request waits for it (it runs on the event loop), hence the fixed cap
        crowded, self.dispatch.crowded = self.dispatch.crowded, False
        self.residency.passivate(now, max(PASSIVATE_BUDGET_S, min(TICK_S / 2, PASSIVATE_CROWDED_S))
                                 if crowded else PASSIVATE_BUDGET_S)
        self.timers.compact()
        self.durability.erase()
        self.durability.checkpoint(now - SNAPSHOT_AFTER_S, len(self.journaling.dirty),
                                   SNAPSHOT_BUDGET_S)
        self.decision_log.flush()  # what a replay's forgets asked for, and other methods'
        self.decision_log.trim()
        return pushes

    def _due_fires(self, now: float) -> list[Fire]:
        """This tick's firings: the due timers, earliest first, at most TICK_FIRE_LIMIT and
        SHARD_ROUND_BYTES of records (at least one), as a request round is held. One round,
        one journal frame: a backlog past MAX_FRAME would fail the tick, and, the rebuild
        arming the same timers, every tick after it. The rest stay due, first at the next
        tick; a customer's event fires its own overdue ones before it meanwhile."""
        names, table, ownership = self.compiled.timer_names, self.engine.table, self.ownership
        taken: list[tuple[Fire, int]] = []
        count = size = 0

        def fits(due: float, customer_id: str, k: int) -> bool:
            nonlocal count, size
            fire = Fire(partition=self.ctx.partition_of(customer_id), customer_id=customer_id,
                        timer=names[k], due=due)
            # only firings are journaled: a held or skipped one would otherwise make every
            # other partition's timers wait behind a moving partition's backlog
            if customer_id in table and fire.partition not in ownership.leaving and \
                    fire.partition not in ownership.arriving:
                count += 1
                size += fire_bytes(len(customer_id.encode()), len(names[k].encode()))
                if count > 1 and (count > TICK_FIRE_LIMIT or size > SHARD_ROUND_BYTES):
                    return False
            elif len(taken) >= HELD_PER_TICK:  # the loop's own time, held ones included
                return False
            taken.append((fire, k))
            return True

        self.timers.pop_due(now, fits)  # disarmed: exactly those `taken`, in order
        fires = []
        for fire, k in taken:
            if fire.customer_id not in table:
                continue
            # leaving, it would answer MOVED: it fires after a thaw, or leaves with the
            # partition; arriving, the move may be undone and the source fire it
            if fire.partition in self.ownership.leaving or \
                    fire.partition in self.ownership.arriving:
                self.timers.hold(fire.partition, fire.customer_id, k, fire.due)
            else:
                fires.append(fire)
        return fires

    # -- the parts' operations -----------------------------------------------------------------

    def passivate(self, now: float) -> int:
        return self.residency.passivate(now)

    def watch_channel(self, sink: str, channel: str, placement: str | None,
                      active: bool = True) -> None:
        """Push every customer's changes on a channel (outbound and orchestration)."""
        self.watches.watch_channel(sink, channel, placement, active)

    def drop_sink(self, sink: str) -> None:
        """A sink went away: forget its watches."""
        self.watches.drop_sinks([sink])

    def watched_sinks(self) -> set[str]:
        return self.watches.sinks()

    def freeze(self, partitions: Sequence[int], version: int) -> bytes:
        return self.handoff.freeze(partitions, version)

    def park(self, partitions: Sequence[int], version: int) -> None:
        self.handoff.park(partitions, version)

    def export(self, partitions: Sequence[int], version: int,
               unsent: Iterable[View] = ()) -> bytes:
        return self.handoff.export(partitions, version, unsent)

    def adopt(self, payload: bytes, version: int) -> int:
        # its block's strings are interned outside any round: room for them is made first
        return self.handoff.adopt(payload, version, make_room=self._keep_strings)

    def release(self, partitions: Sequence[int], version: int) -> None:
        self.handoff.release(partitions, version)

    def thaw(self, partitions: Sequence[int], version: int) -> None:
        self.handoff.thaw(partitions, version)

    def confirm(self, partitions: Sequence[int], version: int) -> None:
        self.handoff.confirm(partitions, version)

    def prepare(self, catalog_text: str) -> str:
        return self.catalogs.prepare(catalog_text)

    def commit(self, version: str) -> None:
        self.catalogs.commit(version)

    def snapshot(self, partitions: Iterable[int] | None = None) -> int:
        """Snapshot the partitions (default: every one owned); the customers written."""
        return self.durability.snapshot(list(self.owned) if partitions is None else partitions)

    def snapshot_dirty(self) -> int:
        """Snapshot the partitions with changes no snapshot holds yet (what the background
        checkpoint would write); the customers written."""
        return self.durability.snapshot(list(self.journaling.dirty))

    def checkpoint(self, changed_before: float, limit: int, budget_s: float = math.inf) -> int:
        return self.durability.checkpoint(changed_before, limit, budget_s)

    def erase(self) -> int:
        return self.durability.erase()

    def recover(self, sources: dict[int, str] | None = None,
                leaving: Iterable[int] = ()) -> dict[str, Any]:
        return self.durability.recover(sources, leaving)

    def close(self) -> None:
        self.journal.close()
        self.decision_log.writer.close()

    def retire(self) -> None:
        """This shard owns nothing any more and is going away: drop its journal."""
        if self.owned:
            raise ValueError(f"{self.name} still owns {len(self.owned)} partitions")
        self.journal.close()
        self.store.drop_journal(self.name)

    # -- reading -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        # arriving: adopted and not confirmed, so their timers wait (handoff.py); one that
        # stays so means the controller does not confirm its moves
        return {"shard": self.name, "partitions": self.ownership.serving(),
                "arriving": len(self.ownership.arriving), "resident": len(self.engine.table),
                "decisions_remembered": self.engine.remembered,
                "decision_memo_capacity": self.engine.memo_capacity,
                "passivated": self.residency.passivated(self.stored),
                "journal_lsn": self.journal.last_lsn, "dirty_partitions": len(self.dirty),
                "timers": len(self.timers), "sleepers": self.timers.sleeping(),
                "aliases": self.directory.count(),
                "catalog_version": self.catalog_version,
                "model_version": self.engine.models.version,
                "crowded": self.counts["crowded"], **self.counts}  # 0 before any is refused

    @property
    def refused(self) -> int:
        """Busy replies given (dispatch.py): ShardHost refuses their senders' later requests,
        looking for them only in a round raising this."""
        return self.dispatch.refused

    @property
    def name(self) -> str:
        return self.ctx.name

    @property
    def n_partitions(self) -> int:
        return self.ctx.n_partitions

    @property
    def engine(self) -> DecisionEngine:
        return self.ctx.engine

    @property
    def compiled(self) -> CompiledCatalog:
        return self.ctx.engine.compiled

    @property
    def catalog_version(self) -> str:
        return self.ctx.engine.compiled.version

    @property
    def store(self) -> Store:
        return self.ctx.store

    @property
    def counts(self) -> Counter:
        return self.ctx.counts

    @property
    def by_channel(self) -> Counter:
        return self.customers.by_channel

    @property
    def by_group(self) -> Counter:
        return self.customers.by_group

    @property
    def owned(self) -> dict[int, int]:
        return self.ownership.owned

    @property
    def leaving(self) -> dict[int, int]:
        return self.ownership.leaving

    @property
    def timers(self) -> Timers:
        return self.residency.timers

    @property
    def idle_s(self) -> float:
        return self.residency.idle_s

    @property
    def journal(self) -> JournalLike:
        return self.journaling.journal

    @property
    def dirty(self) -> dict[int, tuple[int, float]]:
        return self.journaling.dirty

    @property
    def sync_commits(self) -> bool:
        """Whether each round is durable when `process` returns (else the caller syncs the
        journal before it answers, as ShardHost does)."""
        return self.journaling.sync_commits

    @sync_commits.setter
    def sync_commits(self, value: bool) -> None:
        self.journaling.sync_commits = value

