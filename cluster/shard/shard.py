"""Shard: the host of many customer actors, without Ray.

Each customer is a virtual actor (Orleans' grains, Akka's sharded entities): one owner, its
messages processed in order, its state in memory, activated on first use, passivated when
idle. A shard owns some partitions and hosts their customers in the core's columnar state, so
one kernel call serves a whole batch of them. `ShardActor` (shard_actor.py) drives a `Shard`
from a single thread, so nothing here locks, and everything here is tested without Ray.

Requests are tuples, `(kind, partition, customer_id, *payload)`; each gets a result tuple:
`("ok", value)`, `("moved", map_version)` when its partition is not (or no longer) here,
`("invalid", field, reason)` for bad input (nothing applied), `("missing",)` for an unknown
customer, `("merged", customer_id)` for an anonymous customer linked (and merged) into another
one (send the request there), `("conflict", reason)` for a link that contradicts an earlier
one, or `("busy",)` from the actor when its queue is full.

Durability (see store.py and journal.py). Every change a round makes is logged as a record,
the request tuple itself (plus what replay cannot recompute, such as a timer firing or the
state a link handed over), and the round's records are appended to the shard's journal as one
batch (group commit) before any result leaves the shard. If the append fails, `process` raises
StoreUnavailable: the round is not acknowledged, and the caller discards this Shard and builds
a new one from the store, so no half-applied state is ever served. Partitions are snapshotted
a while after they change, when they move and at catalog switches; the journal is truncated
behind the oldest change not yet in a snapshot. Recovery loads each partition's snapshot and
replays the journal it names, through the same handlers. A customer's home in the store (its
passivated copy) carries the LSN of its last change, so replay skips what a home already holds.
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from kairos.core.catalog import load_catalog
from kairos.core.compiler import CompiledCatalog, compile_catalog
from kairos.core.engine import Decision, DecisionEngine, EncodedEvent, EncodedRequest
from kairos.core.errors import InputError
from kairos.core.merge import merge_profiles
from kairos.core.models import ModelRemap, ModelTable

from kairos.cluster.storage import blocks
from kairos.cluster.identity import Directory
from kairos.cluster.control.partitions import partition_of
from kairos.cluster.settings import (PASSIVATE_IDLE_S, RESIDENT_LIMIT, SNAPSHOT_AFTER_S, SNAPSHOT_BACKLOG,
                       SNAPSHOT_BUDGET_S, STORE_COUNT_S)
from kairos.cluster.storage.store import MemoryStore, Store, StoreUnavailable
from kairos.cluster.shard.timers import Timers

log = logging.getLogger("kairos.shard")

OK, MOVED, INVALID, MISSING, BUSY = "ok", "moved", "invalid", "missing", "busy"
UNAVAILABLE = "unavailable"  # the shard is recovering, or its store failed: nothing applied
MERGED, CONFLICT = "merged", "conflict"
CUSTOMER_KINDS = frozenset({"event", "decide", "outcome", "profile", "watch"})
MERGING = "\x00merging"  # the transient id of a profile being folded into another
NOT_MINE = 0  # the map version in a MOVED answer when this shard never owned the partition
IDEMPOTENCY_KEYS_PER_PARTITION = 4096  # recent keys remembered per partition (they move with it)
SNAPSHOT_FORMAT = 1
REPLAY_CHUNK = 512  # journal records replayed per round
SNAPSHOT_WRITE_BYTES = 64 << 20  # snapshots packed before they go to the store
# records whose third element is the customer they change: its LSN is stamped on the row
STAMPED = frozenset({"event", "fire", "outcome", "merge", "watch", "forget"})


@dataclass(frozen=True)
class Watch:
    """Who wants pushes, for which channel and placement."""

    sink: str
    channel: str
    placement: str | None = None


@dataclass
class Push:
    sink: str
    decision: Decision


class Shard:
    """Partitions, their resident customers, timers and watches; one engine at a time."""

    def __init__(self, name: str, compiled: CompiledCatalog, partitions: Iterable[int],
                 n_partitions: int, *, granted: int = 0, store: Store | None = None, seed: int = 0,
                 clock: Callable[[], float] = time.time, journal_policy: str = "fsync",
                 idle_s: float = PASSIVATE_IDLE_S, resident_limit: int = RESIDENT_LIMIT):
        self.name = name
        self.engine = DecisionEngine(compiled, seed=seed)
        self.n_partitions = n_partitions
        # partition -> the map version that gave it to this shard: requests routed under an
        # older map answer MOVED, so a client re-sending moved requests cannot be overtaken
        self.owned: dict[int, int] = {p: granted for p in partitions}
        self.leaving: dict[int, int] = {}  # partition -> the map version that moves it away
        self.members: dict[int, set[str]] = {}
        self.store: Store = store if store is not None else MemoryStore()
        self.clock = clock
        self.idle_s = idle_s
        self.resident_limit = resident_limit
        self.seed = seed
        self.recent: OrderedDict[str, float] = OrderedDict()  # residents, least recent first
        self.timers = Timers()
        self.watches: dict[str, set[Watch]] = {}  # customer -> its watches
        self.channel_watches: set[Watch] = set()
        self.shown: dict[tuple[str, str, str | None], tuple[str, ...]] = {}  # last pushed
        self.counts: Counter = Counter()
        self.by_channel: Counter = Counter()  # decisions per channel
        self.by_group: Counter = Counter()  # actions chosen per group
        self._frozen_blobs: dict[int, dict[str, bytes]] = {}
        self._prepared: CompiledCatalog | None = None
        self.keys: dict[int, OrderedDict[str, int]] = {}  # partition -> idempotency key -> seq
        self.directory = Directory()
        self.identities: dict[str, dict[str, list[str]]] = {}  # customer -> aliases, links
        self.journal = self.store.journal(name, journal_policy)
        # each round's journal batch is durable before process() returns; ShardActor turns
        # this off and syncs on a thread of its own before it answers (shard_actor.py)
        self.sync_commits = True
        self._log: list[tuple] = []  # this round's records, in the order they were applied
        self._replaying = False
        self._stamps_of = name  # the journal whose LSNs the rows' stamps are
        # partition -> (first LSN, time) of its oldest change not yet in a snapshot
        self.dirty: dict[int, tuple[int, float]] = {}
        self._erase: dict[int, set[str]] = {}  # partition -> ids to erase from the journal
        self._truncated = 0  # the journal holds nothing at or below this LSN that is needed
        self._stored = (-math.inf, 0)  # (when counted, customers with a home in the store)
        self._handlers = {"event": self._events, "fire": self._fires, "decide": self._decisions,
                          "outcome": self._outcomes, "profile": self._profiles,
                          "watch": self._watch_customer, "forget": self._forget,
                          "resolve": self._resolve, "link": self._link, "unlink": self._unlink,
                          "take": self._take, "merge": self._merge, "settle": self._settle}

    @property
    def compiled(self) -> CompiledCatalog:
        return self.engine.compiled

    @property
    def catalog_version(self) -> str:
        return self.engine.compiled.version

    # -- requests ------------------------------------------------------------------------------

    def process(self, requests: Sequence[tuple], routed: Sequence[int] | None = None
                ) -> tuple[list[tuple], list[Push]]:
        """Results in request order, and pushes for watched customers whose best action changed.

        `routed` holds, per request, the map version its sender routed it under (None: any).
        Runs of the same kind go to the kernel together; per-customer order is request order.
        Raises StoreUnavailable when the round's records could not be journaled: nothing of it
        is acknowledged, and this Shard must be rebuilt from the store.
        """
        self._routed = routed
        results: list[tuple] = [()] * len(requests)
        touched: dict[str, float] = {}  # customer -> latest event time, for watches
        i = 0
        while i < len(requests):
            kind = requests[i][0]
            j = i + 1
            while j < len(requests) and requests[j][0] == kind:
                j += 1
            handler = self._handlers.get(kind)
            if handler is None:
                for k in range(i, j):
                    results[k] = (INVALID, "kind", f"unknown request kind {kind!r}")
            else:
                handler(requests, self._redirected(requests, range(i, j), results), results,
                        touched)
            i = j
        if self._replaying:
            self._log = []
            return results, []
        self._commit()
        return results, self._watch_changes(touched)

    def _commit(self) -> None:
        """Journal the round's records as one batch; stamp the rows they changed."""
        records, self._log = self._log, []
        if not records:
            return
        try:
            last = self.journal.append(records, sync=self.sync_commits)
        except (OSError, StoreUnavailable) as exc:
            raise StoreUnavailable(f"{self.name}: journal: {exc}") from exc
        t = self.engine.table
        now = self.clock()
        for lsn, record in enumerate(records, last - len(records) + 1):
            if record[1] not in self.dirty:
                self.dirty[record[1]] = (lsn, now)
            if record[0] in STAMPED:
                row = t.index.get(record[2])
                if row is not None:
                    t.lsn[row] = lsn

    def sync_journal(self) -> None:
        """Make the journal durable up to its last record. Before a snapshot or a home is
        written: they name the LSNs they cover, and a journal cut back after a failed sync
        must never be behind them."""
        if self.journal.unsynced:
            try:
                self.journal.sync()
            except OSError as exc:
                raise StoreUnavailable(f"{self.name}: journal: {exc}") from exc

    def _redirected(self, requests, span: range, results) -> Sequence[int]:
        """Answer MERGED for requests to anonymous customers merged into another; the rest."""
        if not self.directory.redirecting or requests[span.start][0] not in CUSTOMER_KINDS:
            return span
        rest = []
        for idx in span:
            _, p, customer_id, *_ = requests[idx]
            target = self.directory.redirect_of(customer_id)
            if target is not None and self._moved(p, idx) is None:
                results[idx] = (MERGED, target)
            else:
                rest.append(idx)
        return rest

    def _moved(self, partition: int, idx: int) -> tuple | None:
        if partition in self.leaving:
            return (MOVED, self.leaving[partition])
        granted = self.owned.get(partition)
        if granted is None:
            return (MOVED, NOT_MINE)
        if self._routed is not None and self._routed[idx] < granted:
            return (MOVED, granted)
        return None

    def _events(self, requests, span, results, touched) -> None:
        """Events: `(..., type, time, attributes[, idempotency_key[, (channel, placement)]])`;
        replayed from the journal, `(..., type, time, attributes, key, sequence)`.

        The value is `(sequence, duplicate)`: the customer's sequence number for the event;
        for a key seen before, the first application's number, and nothing is applied. With a
        (channel, placement), the new decision for it follows as a third value.
        """
        encoded: list[EncodedEvent] = []
        where: list[int | None] = []
        keyed: dict[tuple[int, str], int] = {}  # keys first seen in this batch -> request
        repeats: list[tuple[int, int]] = []  # (request, the request that first had its key)
        logged: dict[int, list] = {}
        views: list[tuple[int, EncodedRequest]] = []
        for idx in span:
            _, p, customer_id, event_type, event_time, attributes, *extra = requests[idx]
            key, view = (extra + [None, None])[:2]
            view = None if self._replaying else view
            moved = self._moved(p, idx)
            if moved:
                results[idx] = moved
                continue
            if key and key in self.keys.get(p, ()):
                results[idx] = (OK, self.keys[p][key], True)
                continue
            if key and (p, key) in keyed:
                repeats.append((idx, keyed[(p, key)]))
                continue
            try:
                event = self.engine.encode_event(customer_id, event_type, event_time, attributes)
                if view:
                    views.append((idx, self.engine.encode_request(customer_id, view[0], view[1],
                                                                  None, event.time)))
            except InputError as exc:
                results[idx] = (INVALID, exc.field, exc.reason)
                continue
            if key:
                keyed[(p, key)] = idx
            self._activate(customer_id, p)
            # timers that fell due before this event fire first, at their due time (a replay
            # has their firings as records of their own)
            if not self._replaying:
                for due, k in self.timers.due_before(customer_id, event.time):
                    encoded.append(self._fired(customer_id, k, due))
                    where.append(None)
                    self._log.append(("fire", p, customer_id, self.compiled.timer_names[k], due))
            self._arm(event)
            encoded.append(event)
            where.append(idx)
            # the sequence number is filled in once applied: a replay that finds the event
            # already in the customer's home still remembers its key with it
            logged[idx] = ["event", p, customer_id, event_type, event.time, attributes, key, 0]
            self._log.append(logged[idx])
            touched[customer_id] = max(touched.get(customer_id, 0.0), event.time)
        for idx, sequence in zip(where, self.engine.apply(encoded)):
            if idx is not None:
                results[idx] = (OK, sequence, False)
                logged[idx][7] = sequence
        self.counts["events"] += len(encoded)
        for (p, key), idx in keyed.items():
            self._remember_key(p, key, results[idx][1])
        for idx, first in repeats:
            results[idx] = (OK, results[first][1], True)
        for (idx, _), decision in zip(views, self.engine.decide_encoded([v for _, v in views])):
            results[idx] = results[idx] + (decision,)

    def _remember_key(self, partition: int, key: str, sequence: int) -> None:
        keys = self.keys.setdefault(partition, OrderedDict())
        keys[key] = sequence
        if len(keys) > IDEMPOTENCY_KEYS_PER_PARTITION:
            keys.popitem(last=False)

    def _fired(self, customer_id: str, timer: int, due: float) -> EncodedEvent:
        c = self.compiled
        event = EncodedEvent(customer_id, c.timer_fire[timer], due,
                             np.full(c.n_fields, math.nan))
        self._arm(event)
        self.counts["timers_fired"] += 1
        return event

    def _fires(self, requests, span, results, touched) -> None:
        """Timer firings: `(..., timer name, due time)`, from `tick` or from a replay."""
        index = {name: k for k, name in enumerate(self.compiled.timer_names)}
        encoded = []
        for idx in span:
            _, p, customer_id, timer, due = requests[idx]
            k = index.get(timer)
            results[idx] = self._moved(p, idx) or (OK, None)
            if results[idx][0] != OK or k is None:  # leaving, or the timer left the catalog
                continue
            self._activate(customer_id, p)
            self.timers.cancel(customer_id, k)
            encoded.append(self._fired(customer_id, k, due))
            self._log.append(tuple(requests[idx][:5]))
            touched[customer_id] = max(touched.get(customer_id, 0.0), due)
        self.engine.apply(encoded)
        self.counts["events"] += len(encoded)

    def _arm(self, event: EncodedEvent) -> None:
        c = self.compiled
        for k in c.timers_cancelled_by.get(event.event_type, ()):
            self.timers.cancel(event.customer_id, k)
        for k in c.timers_started_by.get(event.event_type, ()):
            self.timers.arm(event.customer_id, k, event.time + c.timer_after_s[k])

    def _decisions(self, requests, span, results, touched) -> None:
        encoded, where, explain = [], [], []
        for idx in span:
            _, p, customer_id, channel, placement, context, max_actions, want_why, now, \
                *record = requests[idx]
            moved = self._moved(p, idx)
            if moved:
                results[idx] = moved
                continue
            try:
                encoded.append(self.engine.encode_request(customer_id, channel, placement,
                                                          context, now, max_actions))
            except InputError as exc:
                results[idx] = (INVALID, exc.field, exc.reason)
                continue
            self._activate(customer_id, p)
            where.append(idx)
            explain.append(bool(want_why))
        shown = []
        for idx, decision in zip(where, self.engine.decide_encoded(encoded, explain)):
            results[idx] = (OK, decision)
            if requests[idx][9:10] == (True,):  # record the impression at once
                when = encoded[where.index(idx)].now
                shown.extend((decision.customer_id, a.action_id, decision.channel, "impression",
                              when, decision.decision_id) for a in decision.actions)
                self._log.extend(("outcome", requests[idx][1], decision.customer_id, a.action_id,
                                  decision.channel, "impression", when, decision.decision_id)
                                 for a in decision.actions)
            self.by_channel[decision.channel] += 1
            for action in decision.actions:
                self.by_group[action.group] += 1
        self.counts["decisions"] += len(encoded)
        if shown:
            self.engine.record_outcomes(shown)
            self.counts["outcomes"] += len(shown)

    def _outcomes(self, requests, span, results, touched) -> None:
        for idx in span:
            _, p, customer_id, action_id, channel, outcome, when, decision_id = requests[idx]
            moved = self._moved(p, idx)
            if moved:
                results[idx] = moved
                continue
            self._activate(customer_id, p)
            try:
                self.engine.record_outcomes([(customer_id, action_id, channel, outcome, when,
                                              decision_id)])
            except InputError as exc:
                results[idx] = (INVALID, exc.field, exc.reason)
                continue
            self._log.append(tuple(requests[idx]))
            results[idx] = (OK, None)
            self.counts["outcomes"] += 1

    def _profiles(self, requests, span, results, touched) -> None:
        for idx in span:
            _, p, customer_id, now = requests[idx]
            moved = self._moved(p, idx)
            if moved:
                results[idx] = moved
            elif not self._activate(customer_id, p, create=False):
                results[idx] = (MISSING,)
            else:
                profile = self.engine.profile(customer_id, now)
                profile["timers"] = {self.compiled.timer_names[k]: due for k, due in
                                     self.timers.armed.get(customer_id, {}).items()}
                profile["events_applied"] = int(
                    self.engine.table.applied[self.engine.table.index[customer_id]])
                results[idx] = (OK, profile)

    def _forget(self, requests, span, results, touched) -> None:
        """Erase customers from memory and the store. The values: whether they existed, and
        their aliases (for the caller to erase from the directory)."""
        for idx in span:
            _, p, customer_id = requests[idx]
            moved = self._moved(p, idx)
            if moved:
                results[idx] = moved
                continue
            existed = self._activate(customer_id, p, create=False)
            aliases = self.identities.get(customer_id, {}).get("aliases", [])
            if existed:
                self._evict(customer_id, p)
                self.store.delete(p, customer_id)
            if self.directory.redirect_of(customer_id) is not None:
                self.directory.drop_redirect(p, customer_id)  # with the state it handed over
                existed = True
            results[idx] = (OK, existed, list(aliases))
            if existed:  # nothing to journal or erase for a customer nobody has seen
                self.counts["forgotten"] += 1
                self._log.append(tuple(requests[idx]))
                self._erase.setdefault(p, set()).add(customer_id)

    # -- identity ------------------------------------------------------------------------------

    def _resolve(self, requests, span, results, touched) -> None:
        """The customer an alias names: its linked customer, or its anonymous one."""
        for idx in span:
            _, p, key = requests[idx]
            results[idx] = self._moved(p, idx) or (OK, self.directory.resolve(p, key))

    def _link(self, requests, span, results, touched) -> None:
        for idx in span:
            _, p, key, customer_id = requests[idx]
            moved = self._moved(p, idx)
            if moved:
                results[idx] = moved
            elif self.directory.link(p, key, customer_id) is not None:
                results[idx] = (CONFLICT, f"alias {key!r} is linked to another customer; "
                                          f"forget that customer (or the alias) first")
            else:
                results[idx] = (OK, None)
                self._log.append(tuple(requests[idx]))

    def _unlink(self, requests, span, results, touched) -> None:
        for idx in span:
            _, p, key, customer_id = requests[idx]
            results[idx] = self._moved(p, idx) or \
                (OK, self.directory.unlink(p, key, customer_id))
            if results[idx] == (OK, True):
                self._log.append(tuple(requests[idx]))
                self._erase.setdefault(p, set()).add(customer_id)

    def _take(self, requests, span, results, touched) -> None:
        """Hand an anonymous customer's state over for a link, and redirect its id. A retry
        of the same link gets the same state back."""
        for idx in span:
            _, p, anonymous, link, target, *recorded = requests[idx]  # recorded: a replay
            moved = self._moved(p, idx)
            if moved:
                results[idx] = moved
                continue
            earlier = self.directory.handed_over(p, anonymous)
            if earlier is not None:
                results[idx] = (OK, earlier[2] if earlier[1] == link else None)
                continue
            state = recorded[0] if recorded else None
            if self._activate(anonymous, p, create=False):
                if not recorded:
                    state = blocks.pack(self._export([anonymous]))
                self._evict(anonymous, p)
                self.store.delete(p, anonymous)
            self.directory.leave_redirect(p, anonymous, target, link, state)
            self._log.append((*requests[idx][:5], state))
            results[idx] = (OK, state)

    def _merge(self, requests, span, results, touched) -> None:
        """Fold handed-over state into a customer, once per link; whether it folded now."""
        for idx in span:
            _, p, customer_id, link, key, state = requests[idx]
            moved = self._moved(p, idx)
            if moved:
                results[idx] = moved
                continue
            self._activate(customer_id, p)
            identity = self.identities.setdefault(customer_id, {"aliases": [], "links": []})
            if key not in identity["aliases"]:
                identity["aliases"].append(key)
            if link in identity["links"]:
                results[idx] = (OK, False)
                continue
            self._log.append(tuple(requests[idx]))
            identity["links"].append(link)
            if state is not None:
                self._fold(customer_id, blocks.unpack(state))
                touched[customer_id] = max(touched.get(customer_id, 0.0), self.clock())
                self.counts["merges"] += 1
            results[idx] = (OK, state is not None)

    def _fold(self, customer_id: str, block: dict[str, Any]) -> None:
        extra = block["extras"][0]
        block["ids"] = [MERGING]
        self.engine.activate([customer_id])  # a customer known only by id so far
        blocks.import_block(self.engine, block)
        merge_profiles(self.compiled, self.engine.table, customer_id, MERGING)
        self.engine.table.evict(MERGING)
        self._restore(customer_id, extra)

    def _settle(self, requests, span, results, touched) -> None:
        for idx in span:
            _, p, anonymous, link = requests[idx]
            moved = self._moved(p, idx)
            if not moved:
                self.directory.settle(p, anonymous, link)
                self._log.append(tuple(requests[idx]))
            results[idx] = moved or (OK, None)

    def _watch_customer(self, requests, span, results, touched) -> None:
        for idx in span:
            _, p, customer_id, sink, channel, placement, active = requests[idx]
            moved = self._moved(p, idx)
            if moved:
                results[idx] = moved
                continue
            try:
                watch = self._watch(sink, channel, placement)
            except InputError as exc:
                results[idx] = (INVALID, exc.field, exc.reason)
                continue
            self._activate(customer_id, p)
            self._log.append(tuple(requests[idx]))
            mine = self.watches.setdefault(customer_id, set())
            if active:
                mine.add(watch)
            else:
                mine.discard(watch)
                self.shown.pop((customer_id, watch.channel, watch.placement), None)
            results[idx] = (OK, None)

    def _watch(self, sink: str, channel: str, placement: str | None) -> Watch:
        ch = self.engine.channel_code(channel)
        self.engine.placement_code(ch, placement)
        return Watch(sink, channel, placement or None)

    # -- push ----------------------------------------------------------------------------------

    def watch_channel(self, sink: str, channel: str, placement: str | None,
                      active: bool = True) -> None:
        """Push every customer's changes on a channel (outbound and orchestration)."""
        watch = self._watch(sink, channel, placement)
        if active:
            self.channel_watches.add(watch)
        else:
            self.channel_watches.discard(watch)

    def drop_sink(self, sink: str) -> None:
        """A sink went away: forget its watches."""
        self.channel_watches = {w for w in self.channel_watches if w.sink != sink}
        for customer_id in list(self.watches):
            self.watches[customer_id] = {w for w in self.watches[customer_id] if w.sink != sink}
            if not self.watches[customer_id]:
                del self.watches[customer_id]

    def _watch_changes(self, touched: dict[str, float]) -> list[Push]:
        keys, encoded = [], []
        for customer_id, now in touched.items():
            watched = self.watches.get(customer_id, set()) | self.channel_watches
            by_view: dict[tuple[str, str | None], list[str]] = {}
            for w in watched:
                by_view.setdefault((w.channel, w.placement), []).append(w.sink)
            for (channel, placement), sinks in by_view.items():
                keys.append((customer_id, channel, placement, sinks))
                encoded.append(self.engine.encode_request(customer_id, channel, placement,
                                                          None, now))
        pushes = []
        for (customer_id, channel, placement, sinks), decision in \
                zip(keys, self.engine.decide_encoded(encoded)):
            best = tuple(a.action_id for a in decision.actions)
            key = (customer_id, channel, placement)
            if self.shown.get(key) != best:
                self.shown[key] = best
                self.counts["nba_changes"] += 1
                pushes.extend(Push(sink, decision) for sink in sinks)
        return pushes

    # -- activation and passivation ------------------------------------------------------------

    def _activate(self, customer_id: str, partition: int, create: bool = True) -> bool:
        """Make the customer resident (from the store if passivated); False if unknown."""
        if customer_id not in self.engine.table:
            blob = self.store.get(partition, customer_id)
            if blob is not None:
                self._load(blocks.unpack(blob))
                self.counts["activations"] += 1
            elif not create:
                return False
            else:
                self.engine.activate([customer_id])
            self.members.setdefault(partition, set()).add(customer_id)
        self.recent[customer_id] = self.clock()
        self.recent.move_to_end(customer_id)
        return True

    def tick(self) -> list[Push]:
        """Fire due timers (journaled like events), passivate idle customers, erase what
        ForgetCustomer asked for, snapshot partitions whose changes have waited long enough;
        pushes for the timers' changes."""
        now = self.clock()
        names = self.compiled.timer_names
        fires = [("fire", partition_of(customer_id, self.n_partitions), customer_id, names[k],
                  due) for due, customer_id, k in self.timers.pop_due(now)
                 if customer_id in self.engine.table]
        _, pushes = self.process(fires)
        self.passivate(now)
        self.timers.compact()
        self.erase()
        self.checkpoint(now - SNAPSHOT_AFTER_S, len(self.dirty), SNAPSHOT_BUDGET_S)
        return pushes

    def passivate(self, now: float) -> int:
        """Send idle customers (and the least recent, past the resident limit) to the store.

        A customer with an armed timer stays resident while idle, so its timer fires on time;
        only the resident limit passivates it (its timer then fires when it is next activated).
        """
        victims, kept = [], []
        over = len(self.recent) - self.resident_limit
        for customer_id, seen in self.recent.items():
            if partition_of(customer_id, self.n_partitions) in self.leaving:
                kept.append(customer_id)  # handed over already: its new owner writes it
            elif over > len(victims):
                victims.append(customer_id)
            elif now - seen >= self.idle_s:
                (kept if customer_id in self.timers.armed else victims).append(customer_id)
            else:
                break
        if victims:
            self.sync_journal()
        for customer_id in victims:
            p = partition_of(customer_id, self.n_partitions)
            self.store.put(p, customer_id, blocks.pack(self._export([customer_id])))
            self._evict(customer_id, p)
        for customer_id in kept:  # idle but waiting for a timer: look again next round
            self.recent.move_to_end(customer_id)
        self.counts["passivations"] += len(victims)
        return len(victims)

    def _export(self, customer_ids: Sequence[str]) -> dict[str, Any]:
        names = self.compiled.timer_names
        extras = [{"timers": {names[k]: due for k, due in self.timers.armed.get(c, {}).items()},
                   "watches": [[w.sink, w.channel, w.placement]
                               for w in self.watches.get(c, ())],
                   **self.identities.get(c, {})}
                  for c in customer_ids]
        return blocks.export_block(self.engine, customer_ids, extras, self.name)

    def _load(self, block: dict[str, Any]) -> None:
        for customer_id, extra in zip(blocks.import_block(self.engine, block, self._stamps_of),
                                      block["extras"]):
            self.timers.take(customer_id)
            self.watches.pop(customer_id, None)
            self.identities.pop(customer_id, None)
            self._restore(customer_id, extra)
            self.recent[customer_id] = self.clock()

    def _restore(self, customer_id: str, extra: dict[str, Any]) -> None:
        """Add a customer's timers, watches and identity to what it has here (a timer armed
        on both sides keeps the later due time, as the later start would have)."""
        index = {name: k for k, name in enumerate(self.compiled.timer_names)}
        armed = self.timers.armed.get(customer_id, {})
        for name, due in extra["timers"].items():
            k = index.get(name)
            if k is not None and not armed.get(k, -math.inf) >= due:
                self.timers.arm(customer_id, k, due)
        for sink, channel, placement in extra["watches"]:
            try:
                self.watches.setdefault(customer_id, set()).add(
                    self._watch(sink, channel, placement))
            except InputError:  # the channel or placement left the catalog
                pass
        for part in ("aliases", "links"):
            if extra.get(part):
                mine = self.identities.setdefault(customer_id, {"aliases": [], "links": []})
                mine[part].extend(x for x in extra[part] if x not in mine[part])

    def _evict(self, customer_id: str, partition: int) -> None:
        self.engine.table.evict(customer_id)
        self.timers.take(customer_id)
        self.watches.pop(customer_id, None)
        self.identities.pop(customer_id, None)
        self.recent.pop(customer_id, None)
        for channel, placement in {(w.channel, w.placement) for w in self.channel_watches}:
            self.shown.pop((customer_id, channel, placement), None)
        members = self.members.get(partition)
        if members is not None:
            members.discard(customer_id)

    # -- partition handoff ---------------------------------------------------------------------

    def freeze(self, partitions: Sequence[int], version: int) -> bytes:
        """Stop serving the partitions (requests answer MOVED with `version`) and hand over
        their customers, resident and passivated, as one packed payload."""
        for p in partitions:
            if p not in self.owned or p in self.leaving:
                raise ValueError(f"{self.name} cannot hand over partition {p}: not serving it")
        resident = [c for p in partitions for c in sorted(self.members.get(p, ()))]
        payload = {"partitions": list(partitions), "block": self._export(resident),
                   "passivated": {}, "keys": {p: list(self.keys.get(p, {}).items())
                                              for p in partitions},
                   "directory": self.directory.export(partitions)}
        for p in partitions:
            self.leaving[p] = version
            if not self.store.shared:  # homes travel with the partition
                blobs = self.store.take_partition(p)
                self._frozen_blobs[p] = blobs
                payload["passivated"][p] = blobs
        return blocks.pack(payload)

    def release(self, partitions: Sequence[int]) -> None:
        """The new owner has them: forget the partitions' customers (MOVED answers stay)."""
        for p in partitions:
            for customer_id in list(self.members.pop(p, ())):
                self._evict(customer_id, p)
            self.owned.pop(p, None)
            self.keys.pop(p, None)
            self._frozen_blobs.pop(p, None)
            self.dirty.pop(p, None)  # its new owner snapshotted it when it adopted it
            self._erase.pop(p, None)
        self.directory.drop(partitions)

    def thaw(self, partitions: Sequence[int], version: int) -> None:
        """The handoff failed: serve the partitions again, to senders that saw `version`."""
        for p in partitions:
            self.leaving.pop(p, None)
            self.owned[p] = version
            for customer_id, blob in self._frozen_blobs.pop(p, {}).items():
                self.store.put(p, customer_id, blob)
        self.snapshot(partitions)  # the failed adopter may have written its own

    def adopt(self, payload: bytes, version: int) -> int:
        """Take over partitions handed over by `freeze` in map `version`; the number of
        customers received (in memory, and with their homes when the store is not shared)."""
        data = blocks.unpack(payload)
        self._load(data["block"])
        for customer_id in data["block"]["ids"]:
            self.members.setdefault(partition_of(customer_id, self.n_partitions),
                                    set()).add(customer_id)
        received = set(data["block"]["ids"])
        for p, blobs in data["passivated"].items():
            p = int(p)
            for customer_id, blob in blobs.items():
                self.store.put(p, customer_id, blob)
            received.update(blobs)
        for p, keys in data["keys"].items():
            self.keys[int(p)] = OrderedDict((k, int(v)) for k, v in keys)
        self.directory.load(data["directory"])
        for p in data["partitions"]:
            self.owned[p] = version
            self.leaving.pop(p, None)
        self.snapshot(data["partitions"])  # owned from here on: recovery reads this journal
        return len(received)

    # -- catalog versions ----------------------------------------------------------------------

    def prepare(self, catalog_text: str) -> str:
        """Phase one of a switch: compile the catalog (errors raise); its version."""
        self._prepared = compile_catalog(load_catalog(catalog_text))
        return self._prepared.version

    def commit(self, version: str) -> None:
        """Phase two: move every resident customer and the models to the prepared version."""
        new = self._prepared
        if new is None or new.version != version:
            raise ValueError(f"{self.name} has not prepared catalog version {version!r}")
        old = self.engine
        residents = [c for c in old.table.ids if c is not None]
        state = self._export(residents)
        self.engine = DecisionEngine(new, capacity=max(len(residents), 1024), seed=self.seed)
        self.engine.use_models(ModelRemap(old.compiled, new).table(old.models))
        self.timers = Timers()
        self.watches = {}
        self._load(state)
        self.channel_watches = {w for w in self.channel_watches
                                if w.channel in new.channel_index}
        self._prepared = None
        # the journal's records were written under the old version: a checkpoint means no
        # recovery ever replays them under the new one
        self.checkpoint(math.inf, len(self.owned))

    # -- reading -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {"shard": self.name, "partitions": len(self.owned) - len(
                    [p for p in self.leaving if p in self.owned]),
                "resident": len(self.engine.table), "passivated": self._passivated(),
                "journal_lsn": self.journal.last_lsn, "dirty_partitions": len(self.dirty),
                "timers": len(self.timers), "aliases": self.directory.count(),
                "catalog_version": self.catalog_version,
                "model_version": self.engine.models.version, **self.counts}

    def _passivated(self) -> int:
        """Customers of this shard's partitions in the store and not in memory (recounted at
        most every STORE_COUNT_S: counting a directory store lists its folders)."""
        when, stored = self._stored
        if self.clock() - when >= STORE_COUNT_S:
            stored = self.store.count(list(self.owned))
            self._stored = (self.clock(), stored)
        return max(stored - len(self.engine.table), 0)

    # -- durability ----------------------------------------------------------------------------

    def snapshot(self, partitions: Iterable[int]) -> int:
        """Write the partitions' snapshots, covering this journal up to its last LSN; the
        number of customers written. Partitions being handed over are left alone: their new
        owner writes theirs when it adopts them."""
        partitions = [p for p in partitions if p not in self.leaving]
        self.sync_journal()
        lsn, blobs, size, customers = self.journal.last_lsn, {}, 0, 0
        for i, p in enumerate(partitions):
            residents = sorted(self.members.get(p, ()))
            customers += len(residents)
            blobs[p] = blocks.pack({
                "format": SNAPSHOT_FORMAT, "partition": p, "journal": self.name, "lsn": lsn,
                "catalog": self.catalog_version, "block": self._export(residents),
                "keys": list(self.keys.get(p, {}).items()),
                "directory": self.directory.export([p])})
            size += len(blobs[p])
            if size >= SNAPSHOT_WRITE_BYTES or i == len(partitions) - 1:
                self.store.put_snapshots(blobs)  # bounded: a whole shard is gigabytes
                blobs, size = {}, 0
        for p in partitions:
            self.dirty.pop(p, None)
        self.counts["snapshots"] += len(partitions)
        return customers

    def checkpoint(self, changed_before: float, limit: int, budget_s: float = math.inf) -> int:
        """Snapshot up to `limit` partitions, oldest change first, whose oldest unsnapshotted
        change is older than `changed_before` or SNAPSHOT_BACKLOG journal records back, for
        at most `budget_s` (at least one partition); then truncate the journal behind the
        oldest change still waiting. The number of partitions written."""
        backlog = self.journal.last_lsn - SNAPSHOT_BACKLOG
        due = sorted((first, p) for p, (first, when) in self.dirty.items()
                     if when <= changed_before or first <= backlog)[:limit]
        started, written = time.perf_counter(), 0
        for _, p in due:
            self.snapshot([p])
            written += 1
            if time.perf_counter() - started >= budget_s:
                break
        oldest = min((first for first, _ in self.dirty.values()), default=None)
        upto = self.journal.last_lsn if oldest is None else oldest - 1
        if upto > self._truncated:
            self.journal.truncate(upto)
            self._truncated = upto
        return written

    def erase(self) -> int:
        """Finish ForgetCustomer: snapshot the partitions without the forgotten customers,
        then rewrite the journal without their records; the records dropped."""
        if not self._erase:
            return 0
        erase, self._erase = self._erase, {}
        self.snapshot(erase)

        def mentions(record) -> bool:
            gone = erase.get(record[1])
            return gone is not None and any(isinstance(x, str) and x in gone
                                            for x in record[2:])
        dropped = self.journal.compact(mentions)
        self.counts["erased_records"] += dropped
        return dropped

    def recover(self, sources: dict[int, str] | None = None) -> dict[str, Any]:
        """Load every owned partition from its snapshot and replay the journal the snapshot
        names (a partition never snapshotted replays `sources[p]`'s journal, by default this
        shard's). Partitions recovered from another shard's journal are snapshotted here, so
        that journal may go. Models start from the priors: the learner has what this shard had
        sent, and the next sync brings it."""
        started = time.perf_counter()
        plans: dict[str, dict[int, int]] = {}  # journal -> partition -> LSN its snapshot covers
        for p in sorted(self.owned):
            blob = self.store.get_snapshot(p)
            if blob is None:
                plans.setdefault((sources or {}).get(p, self.name), {})[p] = 0
                continue
            snap = blocks.unpack(blob)
            self._stamps_of = snap["journal"]
            self._load_partition(p, snap)
            plans.setdefault(snap["journal"], {})[p] = snap["lsn"]
        replayed = 0
        for name, after in plans.items():
            self._stamps_of = name
            journal = self.journal if name == self.name else self.store.journal(name, "off")
            replayed += self._replay(journal, after)
            if name != self.name:
                t = self.engine.table
                for p in after:
                    for customer_id in self.members.get(p, ()):
                        t.lsn[t.index[customer_id]] = 0
        self._stamps_of = self.name
        foreign = [p for name, after in plans.items() if name != self.name for p in after]
        self.snapshot(foreign)
        self.engine.use_models(ModelTable(self.compiled))
        self.counts["recoveries"] += 1
        return {"shard": self.name, "partitions": len(self.owned),
                "resident": len(self.engine.table), "replayed": replayed,
                "journals": sorted(plans), "seconds": time.perf_counter() - started}

    def _load_partition(self, p: int, snap: dict[str, Any]) -> None:
        self._load(snap["block"])
        self.members.setdefault(p, set()).update(snap["block"]["ids"])
        self.keys[p] = OrderedDict((k, int(v)) for k, v in snap["keys"])
        self.directory.load(snap["directory"])

    def _replay(self, journal, after: dict[int, int]) -> int:
        """Apply the journal's records of these partitions newer than their snapshots."""
        chunk: list[tuple[int, tuple]] = []
        replayed = 0
        for lsn, record in journal.replay(min(after.values(), default=0)):
            p = record[1]
            if p in after and lsn > after[p]:
                chunk.append((lsn, tuple(record)))
                if len(chunk) >= REPLAY_CHUNK:
                    replayed += self._apply_replayed(chunk)
                    chunk = []
        return replayed + self._apply_replayed(chunk)

    def _apply_replayed(self, chunk: list[tuple[int, tuple]]) -> int:
        """Replay records through the handlers, skipping what a customer's home already holds
        (its stamp is at or past the record's LSN)."""
        t = self.engine.table
        kept = []
        for lsn, record in chunk:
            if record[1] not in self.dirty:  # not in a snapshot yet: the journal must keep it
                self.dirty[record[1]] = (lsn, self.clock())
            if record[0] in STAMPED:
                self._activate(record[2], record[1], create=False)
                row = t.index.get(record[2])
                if row is not None and t.lsn[row] >= lsn:
                    if record[0] == "event" and record[6]:
                        self._remember_key(record[1], record[6], record[7])
                    continue
            kept.append((lsn, record))
        self._replaying = True
        try:
            results, _ = self.process([record for _, record in kept])
        finally:
            self._replaying = False
        for (lsn, record), result in zip(kept, results):
            if result[0] == INVALID:  # the catalog changed under an unfinished switch
                log.warning("%s: replaying %s for %r: %s: %s", self.name, record[0], record[2],
                            result[1], result[2])
            if record[0] in STAMPED:
                row = t.index.get(record[2])
                if row is not None:
                    t.lsn[row] = lsn
        return len(kept)

    def close(self) -> None:
        self.journal.close()

    def retire(self) -> None:
        """This shard owns nothing any more and is going away: drop its journal."""
        if self.owned:
            raise ValueError(f"{self.name} still owns {len(self.owned)} partitions")
        self.journal.close()
        self.store.drop_journal(self.name)
