"""The customer actors' messages: events, timer firings, decisions, outcomes, profile reads
and watches.

Each handler takes a run of requests of one kind, already admitted (served here, not
redirected: dispatch.py answers MOVED and MERGED), and returns a reply per request, in order; a
run goes to the kernel in one call (outcomes: a call more at each customer's second outcome in
the run, `outcomes`). What changes state is noted as a journal record (journaling.py) in the
order it was applied.

Only what changes a customer's state makes it resident (activated from its home, or created):
a decision for a customer nobody has seen is made on an empty profile and leaves nothing
behind; an outcome is checked whole (outcomes.py: a decision a shard issued, within the rate)
before it activates anyone, and refused for a decision issued before its customer (or the
visitor it was shown to) was forgotten; a watch of an unseen customer waits for it without a
profile.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from kairos.core.decision import Learned
from kairos.core.engine import EncodedEvent, EncodedRequest
from kairos.core.errors import InputError

from kairos.cluster.identity import Directory, anonymous_id
from kairos.cluster.protocol import (EXPIRED, Busy, Decide, Event, EventAck, EventRecord, Fire,
                                     Invalid, Missing, Ok, Outcome, ReadProfile, Record, Reply,
                                     Unavailable, WatchCustomer)
from kairos.cluster.settings import SHARD_CLOCK_SKEW_S
from kairos.cluster.shard.decisionlog import DecisionLog
from kairos.cluster.shard.context import LEARNED_COUNT, ShardContext, touch
from kairos.cluster.shard.journaling import Journaling
from kairos.cluster.shard.identities import CustomerIdentities
from kairos.cluster.shard.keys import OUTCOME_KEY, IdempotencyKeys
from kairos.cluster.shard.outcomes import DecisionSeal, OutcomeRate, TaughtLabels
from kairos.cluster.shard.residency import HomeDamaged, Residency
from kairos.cluster.shard.watches import Watches


class _Taken(NamedTuple):
    """An outcome checked and not yet recorded (`CustomerRequests.outcomes`)."""
    index: int  # its request's, in the batch
    outcome: Outcome  # with the engine's decision id
    sent: Outcome  # as its caller named the decision, for the log
    key: str | None  # its idempotency key, to remember
    encoded: tuple  # as the engine records it


class CustomerRequests:
    def __init__(self, ctx: ShardContext, residency: Residency, keys: IdempotencyKeys,
                 labels: TaughtLabels, journaling: Journaling, watches: Watches,
                 seal: DecisionSeal, identities: CustomerIdentities, directory: Directory,
                 decision_log: DecisionLog, steady: Callable[[], float]):
        """`steady`: the monotonic clock that times the outcome rate (shard.py `Shard`)."""
        self._ctx = ctx
        self._directory = directory  # its tombstones say who was forgotten, and when
        self._log = decision_log
        self._identities = identities
        self._residency = residency
        self._keys = keys
        self._labels = labels
        self._seal = seal
        self._rate = OutcomeRate(steady, directory.secret)
        self._journaling = journaling
        self._watches = watches
        self.by_channel: Counter = Counter()  # decisions per channel
        self.by_group: Counter = Counter()  # actions chosen per group

    def events(self, batch: list[Event], touched: dict[str, float]) -> list[Reply]:
        """Apply events. An event whose idempotency key its customer has had (keys.py: per
        customer, within a retention window) answers the first application's sequence number,
        `duplicate`, and applies nothing. With `decide`, the decision for that view after the
        event comes with the acknowledgement, a duplicate's too (decided, sealed and logged
        alike, on the profile as it is: its event is not applied again). Timers that fell due
        before an event fire first, at their due time."""
        engine, timers = self._ctx.engine, self._residency.timers
        replaying = self._journaling.replaying
        replies: list[Reply | None] = [None] * len(batch)
        encoded: list[EncodedEvent] = []
        applied: list[int | None] = []  # per encoded event, its request (None: a timer's)
        # (customer, key) first seen in this batch -> request
        first_of: dict[tuple[str, str], int] = {}
        repeats: list[tuple[int, int]] = []  # (request, the request that first had its key)
        views: list[tuple[int, EncodedRequest]] = []
        records: list[Record] = []  # in the order applied
        unnumbered: list[tuple[int, int]] = []  # (record, request) of events being applied
        for i, e in enumerate(batch):
            key = e.idempotency_key
            stored = True  # whether the customer may have a home in the store
            if key and not replaying:  # a journaled event was applied: so it is again
                # a passivated customer's keys are in its home: bring it in to look
                stored = self._residency.activate(e.customer_id, e.partition, create=False)
                first = self._keys.get(e.customer_id, key)
                if first is not None or (e.customer_id, key) in first_of:
                    # applied once, not again; but a retry after a lost answer is owed the
                    # decision: an ack without one reads as no actions, "do nothing now"
                    try:
                        view = self._view(e, e.time)
                    except InputError as exc:
                        replies[i] = Invalid(field=exc.field, reason=exc.reason)
                        continue
                    if view is not None:
                        views.append((i, view))
                    if first is not None:
                        replies[i] = EventAck(sequence=first, duplicate=True)
                    else:
                        repeats.append((i, first_of[(e.customer_id, key)]))
                    continue
            try:
                event = engine.encode_event(e.customer_id, e.event_type, e.time, e.attributes)
                view = None if replaying else self._view(e, event.time)
                if view is not None:
                    views.append((i, view))
            except InputError as exc:
                replies[i] = Invalid(field=exc.field, reason=exc.reason)
                continue
            if key:
                first_of[(e.customer_id, key)] = i
            self._residency.activate(e.customer_id, e.partition, stored=stored)
            if not replaying:  # a replay has the firings as records of their own
                for due, k in timers.due_before(e.customer_id, event.time):
                    encoded.append(self._fired(e.customer_id, k, due))
                    applied.append(None)
                    records.append(Fire(partition=e.partition, customer_id=e.customer_id,
                                        timer=self._ctx.compiled.timer_names[k], due=due))
            self._arm(event)
            encoded.append(event)
            applied.append(i)
            unnumbered.append((len(records), i))
            records.append(EventRecord(partition=e.partition, customer_id=e.customer_id,
                                       event_type=e.event_type, time=event.time,
                                       attributes=e.attributes, idempotency_key=key))
            touch(touched, e.customer_id, event.time)
        for i, sequence in zip(applied, engine.apply(encoded)):
            if i is not None:
                replies[i] = EventAck(sequence=sequence)
        self._ctx.counts["events"] += len(encoded)
        # the sequence number rides along in the record (the journal's layout): a replay
        # numbers the event again as it applies it and remembers its key under that number
        for r, i in unnumbered:
            records[r] = records[r]._replace(sequence=replies[i].sequence)
        for record in records:
            self._journaling.record(record)
        for (customer_id, key), i in first_of.items():
            self._keys.remember(customer_id, key, replies[i].sequence)
        for i, first in repeats:
            replies[i] = EventAck(sequence=replies[first].sequence, duplicate=True)
        for (i, view), decision in zip(views, engine.decide_encoded([v for _, v in views])):
            replies[i] = replies[i]._replace(decision=self._seal.seal(decision))
            self._log.decided(decision, replies[i].decision.decision_id, view.now, None)
        return replies

    def _view(self, e: Event, now: Any) -> EncodedRequest | None:
        """The view an event asks to be decided after it (`decide`), as of `now`; InputError
        for one the catalog does not have."""
        if not e.decide:
            return None
        channel, placement = e.decide
        return self._ctx.engine.encode_request(e.customer_id, channel, placement, None, now)

    def fires(self, batch: list[Fire], touched: dict[str, float]) -> list[Reply]:
        """Timer firings, from `tick` or a replay (a timer the catalog no longer has is
        ignored)."""
        index = {name: k for k, name in enumerate(self._ctx.compiled.timer_names)}
        encoded = []
        for f in batch:
            k = index.get(f.timer)
            if k is None:
                continue
            self._residency.activate(f.customer_id, f.partition)
            self._residency.timers.cancel(f.customer_id, k)
            encoded.append(self._fired(f.customer_id, k, f.due))
            self._journaling.record(f)
            touch(touched, f.customer_id, f.due)
        self._ctx.engine.apply(encoded)
        self._ctx.counts["events"] += len(encoded)
        return [Ok()] * len(batch)

    def _fired(self, customer_id: str, timer: int, due: float) -> EncodedEvent:
        c = self._ctx.compiled
        event = EncodedEvent(customer_id, c.timer_fire[timer], due,
                             np.full(c.n_fields, math.nan))
        self._arm(event)
        self._ctx.counts["timers_fired"] += 1
        return event

    def _arm(self, event: EncodedEvent) -> None:
        c, timers = self._ctx.compiled, self._residency.timers
        for k in c.timers_cancelled_by.get(event.event_type, ()):
            timers.cancel(event.customer_id, k)
        for k in c.timers_started_by.get(event.event_type, ()):
            timers.arm(event.customer_id, k, event.time + c.timer_after_s[k])

    def decisions(self, batch: list[Decide], touched: dict[str, float]) -> list[Reply]:
        """Decide; with `record_impression`, what was shown is recorded at once (and
        journaled as impression outcomes). A customer nobody has seen gets a decision on an
        empty profile, which is then dropped: only an impression recorded creates one (not a
        decision that showed nothing, whose `record_impression` records nothing). A
        preview (not `log`) is neither logged nor counted per channel and group: nobody was
        shown it on that channel, and replay would count it as a decision that earned
        nothing; nor does its id, sealed as a preview's, take outcomes (outcomes.py). One
        reached after its `expires` is not decided (protocol.Decide)."""
        engine = self._ctx.engine
        replies: list[Reply | None] = [None] * len(batch)
        encoded, where, explain = [], [], []
        unseen = set()
        # once a run: the deadlines are the gateways' wall clocks, this one's ahead by at most
        past = time.time() - SHARD_CLOCK_SKEW_S
        for i, d in enumerate(batch):
            if d.expires is not None and d.expires < past:
                replies[i] = Unavailable(reason=EXPIRED)
                continue
            try:
                encoded.append(engine.encode_request(d.customer_id, d.channel, d.placement,
                                                     d.context, d.now, d.max_actions))
            except InputError as exc:
                replies[i] = Invalid(field=exc.field, reason=exc.reason)
                continue
            if not self._residency.activate(d.customer_id, d.partition, create=False):
                unseen.add(d.customer_id)
            where.append(i)
            explain.append(bool(d.explain))
        shown = []
        for i, request, decision in zip(where, encoded, engine.decide_encoded(encoded, explain)):
            preview = batch[i].log is False  # only an explicit preview goes unlogged
            # outcomes name the sealed id; a preview's takes none (outcomes.py)
            replies[i] = Ok(value=self._seal.seal(decision, preview))
            sealed_id = replies[i].value.decision_id
            if not preview:
                self._log.decided(decision, sealed_id, request.now, batch[i].context)
                self.by_channel[decision.channel] += 1
                for action in decision.actions:
                    self.by_group[action.group] += 1
            if batch[i].record_impression and decision.actions:
                if decision.customer_id in unseen:  # its history begins: it is kept
                    self._residency.activate(decision.customer_id, batch[i].partition,
                                             stored=False)
                for a in decision.actions:
                    shown.append((decision.customer_id, a.action_id, decision.channel,
                                  "impression", request.now, decision.decision_id))
                    impression = Outcome(
                        partition=batch[i].partition, customer_id=decision.customer_id,
                        action_id=a.action_id, channel=decision.channel, outcome="impression",
                        when=request.now, decision_id=decision.decision_id)
                    self._journaling.record(impression)
                    self._log.outcome(impression._replace(decision_id=sealed_id), None)
        # not `unseen - recent.keys()`: a set minus a keys view walks every resident
        for customer_id in [c for c in unseen if c not in self._residency.recent]:
            engine.table.evict(customer_id)  # the empty profile the kernel decided on
        self._ctx.counts["decisions"] += len(encoded)
        if shown:
            engine.record_outcomes(shown)
            self._ctx.counts["outcomes"] += len(shown)
            self._ctx.counts[LEARNED_COUNT + Learned.NOTHING.value] += len(shown)
        return replies

    def outcomes(self, batch: list[Outcome], touched: dict[str, float]) -> list[Reply]:
        """Record outcomes that name a decision a shard issued and an action it showed
        (outcomes.py), or no decision at all (None: offline feedback, which only a gateway
        lets through, for keys with the feedback scope), within the customer's rate (else
        Busy); nothing is created for one refused. One whose idempotency key its customer has
        had (keys.py, as events': the same window, the same keys) answers DUPLICATE and
        records nothing, whatever the rate, and is not counted in it. A replay takes its
        records as they are: they were checked when journaled (with the engine's own decision
        id).

        The outcomes taken go to the engine together, each checked first on its own (the
        engine's fixed cost per call, paid per outcome, was about half an outcome's cost). A
        customer's second outcome of the batch waits for those taken before it to be recorded
        (a call of their own), for two reasons: its checks read what the first left (its key
        remembered: a retry answers DUPLICATE); and the engine counts a decision's label
        taught before its kernel may refuse the update (Learned.REFUSED), taking that back
        only after the call (`record_encoded`), so in the same call a second outcome of the
        decision, with or without a key, would answer REPEATED where alone it is refused (or
        teaches). So a batch answers and changes what its outcomes would one at a time."""
        replies: list[Reply | None] = [None] * len(batch)
        taken: list[_Taken] = []  # checked, recorded together
        waiting: set[str] = set()  # their customers
        for i, o in enumerate(batch):
            if o.customer_id in waiting:
                self._record(taken, replies)
                waiting.clear()
            replies[i] = self._checked(i, o, taken)
            if replies[i] is None:
                waiting.add(o.customer_id)
        self._record(taken, replies)
        return replies

    def _checked(self, i: int, o: Outcome, taken: list[_Taken]) -> Reply | None:
        """The answer to an outcome not to be recorded; None for one taken (added to
        `taken`, as request `i`), its customer resident: made one, as the engine would have
        at once, if it had no profile (shown a decision, or offline, before it had one), so
        that customers come in (their rows, their recency) in the order of their outcomes."""
        sent = o  # as its caller named the decision: the log joins it to the sealed id
        key = OUTCOME_KEY + o.idempotency_key if o.idempotency_key else None
        try:  # nothing of the outcome is applied before its customer is loaded
            if key is not None and not self._journaling.replaying and \
                    self._repeated(o, key):  # a journaled one was recorded: so it is again
                # before the rate, uncharged: a retry of an outcome already acknowledged
                # records nothing, and a busy customer's retry is owed DUPLICATE
                self._ctx.counts[LEARNED_COUNT + Learned.DUPLICATE.value] += 1
                return Ok(value=Learned.DUPLICATE.value)
            if not self._journaling.replaying:
                refusal = self._rate.refusal(o.customer_id)  # before the seal: guesses count
                if refusal is not None:
                    return Busy(reason=refusal)
            if o.decision_id is not None and not self._journaling.replaying:
                engine_id, issued_to, issued = self._seal.opened(
                    self._issued_to(o), o.decision_id, o.channel, o.action_id)
                self._check_not_forgotten(o, issued_to, issued)
                o = o._replace(decision_id=engine_id)
                # logged under whom the decision was issued to, as the decision was: an
                # anonymous visitor's, answered once linked, names the customer since
                sent = sent._replace(customer_id=issued_to)
            known = self._residency.activate(o.customer_id, o.partition, create=False)
            encoded = self._ctx.engine.encode_outcome((
                o.customer_id, o.action_id, o.channel, o.outcome, o.when, o.decision_id,
                o.value))
        except InputError as exc:
            return Invalid(field=exc.field, reason=exc.reason)
        except HomeDamaged as exc:
            return Unavailable(reason=str(exc))
        if not known:  # it was just looked for in the store
            self._residency.activate(o.customer_id, o.partition, stored=False)
        taken.append(_Taken(i, o, sent, key, encoded))
        return None

    def _record(self, taken: list[_Taken], replies: list[Reply | None]) -> None:
        """Record the outcomes taken, in one engine call, and answer them; `taken` empties."""
        learned = self._ctx.engine.record_encoded([t.encoded for t in taken], self._labels)
        for t, kind in zip(taken, learned):
            o = t.outcome
            if t.key is not None:
                self._keys.remember(o.customer_id, t.key, 0)
            self._journaling.record(o)
            if not self._journaling.replaying:
                self._log.outcome(t.sent, o.value)
            replies[t.index] = Ok(value=kind.value)
            self._ctx.counts["outcomes"] += 1
            self._ctx.counts[LEARNED_COUNT + kind.value] += 1
        taken.clear()

    def _repeated(self, o: Outcome, key: str) -> bool:
        """Whether the customer had an outcome under this key (its keys are in its home
        while it is passivated: it is brought in to look)."""
        return self._residency.activate(o.customer_id, o.partition, create=False) and \
            self._keys.get(o.customer_id, key) is not None

    def _check_not_forgotten(self, o: Outcome, issued_to: str, issued: int) -> None:
        """InputError if the customer, or the visitor (an alias's anonymous id) the decision
        was issued to, was forgotten after the decision was issued (or in the same second):
        its outcome would create the erased customer again, or teach the one that took its id
        (or the visitor's alias) since from what was decided for the erased one. The visitor's
        tombstone is kept by its own partition: seen here only if this shard holds it."""
        checked = [(o.customer_id, o.partition)]
        if issued_to != o.customer_id:
            checked.append((issued_to, self._ctx.partition_of(issued_to)))
        for customer_id, partition in checked:
            forgotten = self._directory.forgotten_at(partition, customer_id)
            if forgotten is not None and issued <= forgotten:
                raise InputError("decision_id", "issued before this customer was forgotten "
                                                "(ForgetCustomer): it takes no outcomes")

    def _issued_to(self, o: Outcome) -> Iterator[str]:
        """Whom the decision an outcome names may have been issued to: the customer; then,
        for a decision shown to an anonymous visitor who has since been linked (logged in)
        and reported under the customer, the anonymous ids of the aliases of its links under
        way (claimed, noted in this shard's directory: a redirect sends the outcome here
        from Take on, before the Merge) and of those merged into it (the customer is loaded
        to look, only if none before matched)."""
        yield o.customer_id
        for key in self._directory.claims(o.partition, o.customer_id):
            yield anonymous_id(key)
        if self._residency.activate(o.customer_id, o.partition, create=False):
            for key in self._identities.aliases(o.customer_id):
                yield anonymous_id(key)

    def profiles(self, batch: list[ReadProfile], touched: dict[str, float]) -> list[Reply]:
        """The golden record as of `now`, with the customer's armed timers and the number of
        events applied; MISSING for a customer nobody has seen (nothing is created)."""
        engine = self._ctx.engine
        replies: list[Reply] = []
        for r in batch:
            if not self._residency.activate(r.customer_id, r.partition, create=False):
                replies.append(Missing())
                continue
            profile = engine.profile(r.customer_id, r.now)
            profile["timers"] = {self._ctx.compiled.timer_names[k]: due for k, due in
                                 self._residency.timers.armed.get(r.customer_id, {}).items()}
            profile["events_applied"] = int(
                engine.table.applied[engine.table.index[r.customer_id]])
            replies.append(Ok(value=profile))
        return replies

    def watch(self, batch: list[WatchCustomer], touched: dict[str, float]) -> list[Reply]:
        """Start (or, not `active`, stop) pushing a customer's changed best action for a view
        to a sink. A customer nobody has seen gets no profile: the watch waits for its first
        event (a channel often watches before the customer shows up). Such a watch is held
        for an open stream, so the gateways' streams bound it, and past SHARD_UNSEEN_WATCHES
        of them a new one answers BUSY (`Watches.admits`); it is journaled, and moves,
        catalog switches and its partition's snapshots carry it
        (watches.py's `unseen`; a snapshot written before they did has none, so a restart
        from one loses it: the stream then sees nothing until it is opened again)."""
        replies: list[Reply] = []
        for w in batch:
            try:
                watch = self._watches.validate(w.sink, w.channel, w.placement)
            except InputError as exc:
                replies.append(Invalid(field=exc.field, reason=exc.reason))
                continue
            self._residency.activate(w.customer_id, w.partition, create=False)
            self._journaling.record(w)
            self._watches.watch_customer(w.customer_id, watch, w.active, w.by)
            replies.append(Ok())
        return replies
