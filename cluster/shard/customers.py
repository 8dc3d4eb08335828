"""The customer actors' messages: events, timer firings, decisions, outcomes, profile reads
and watches.

Each handler takes a run of requests of one kind, already admitted (served here, not
redirected: shard.py answers MOVED and MERGED), and returns a reply per request, in order; a
run goes to the kernel in one call. What changes state is noted as a journal record
(journaling.py) in the order it was applied.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from kairos.core.engine import EncodedEvent, EncodedRequest
from kairos.core.errors import InputError

from kairos.cluster.protocol import (Decide, Event, EventAck, EventRecord, Fire, Invalid,
                                     Missing, Ok, Outcome, ReadProfile, Record, Reply,
                                     WatchCustomer)
from kairos.cluster.shard.context import ShardContext, touch
from kairos.cluster.shard.journaling import Journaling
from kairos.cluster.shard.keys import IdempotencyKeys
from kairos.cluster.shard.residency import Residency
from kairos.cluster.shard.watches import Watches


class CustomerRequests:
    def __init__(self, ctx: ShardContext, residency: Residency, keys: IdempotencyKeys,
                 journaling: Journaling, watches: Watches):
        self._ctx = ctx
        self._residency = residency
        self._keys = keys
        self._journaling = journaling
        self._watches = watches
        self.by_channel: Counter = Counter()  # decisions per channel
        self.by_group: Counter = Counter()  # actions chosen per group

    def events(self, batch: list[Event], touched: dict[str, float]) -> list[Reply]:
        """Apply events. An event whose idempotency key its partition has seen answers the
        first application's sequence number, `duplicate`, and applies nothing. With `decide`,
        the decision for that view after the event comes with the acknowledgement. Timers
        that fell due before an event fire first, at their due time."""
        engine, timers = self._ctx.engine, self._residency.timers
        replaying = self._journaling.replaying
        replies: list[Reply | None] = [None] * len(batch)
        encoded: list[EncodedEvent] = []
        applied: list[int | None] = []  # per encoded event, its request (None: a timer's)
        first_of: dict[tuple[int, str], int] = {}  # keys first seen in this batch -> request
        repeats: list[tuple[int, int]] = []  # (request, the request that first had its key)
        views: list[tuple[int, EncodedRequest]] = []
        records: list[Record] = []  # in the order applied
        unnumbered: list[tuple[int, int]] = []  # (record, request) of events being applied
        for i, e in enumerate(batch):
            key = e.idempotency_key
            if key:
                first = self._keys.get(e.partition, key)
                if first is not None:
                    replies[i] = EventAck(sequence=first, duplicate=True)
                    continue
                if (e.partition, key) in first_of:
                    repeats.append((i, first_of[(e.partition, key)]))
                    continue
            try:
                event = engine.encode_event(e.customer_id, e.event_type, e.time, e.attributes)
                if e.decide and not replaying:
                    channel, placement = e.decide
                    views.append((i, engine.encode_request(e.customer_id, channel, placement,
                                                           None, event.time)))
            except InputError as exc:
                replies[i] = Invalid(field=exc.field, reason=exc.reason)
                continue
            if key:
                first_of[(e.partition, key)] = i
            self._residency.activate(e.customer_id, e.partition)
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
        # the sequence number rides along: a replay that finds the event already in the
        # customer's home still remembers its key with it
        for r, i in unnumbered:
            records[r] = records[r]._replace(sequence=replies[i].sequence)
        for record in records:
            self._journaling.record(record)
        for (p, key), i in first_of.items():
            self._keys.remember(p, key, replies[i].sequence)
        for i, first in repeats:
            replies[i] = EventAck(sequence=replies[first].sequence, duplicate=True)
        for (i, _), decision in zip(views, engine.decide_encoded([v for _, v in views])):
            replies[i] = replies[i]._replace(decision=decision)
        return replies

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
        journaled as impression outcomes)."""
        engine = self._ctx.engine
        replies: list[Reply | None] = [None] * len(batch)
        encoded, where, explain = [], [], []
        for i, d in enumerate(batch):
            try:
                encoded.append(engine.encode_request(d.customer_id, d.channel, d.placement,
                                                     d.context, d.now, d.max_actions))
            except InputError as exc:
                replies[i] = Invalid(field=exc.field, reason=exc.reason)
                continue
            self._residency.activate(d.customer_id, d.partition)
            where.append(i)
            explain.append(bool(d.explain))
        shown = []
        for i, request, decision in zip(where, encoded, engine.decide_encoded(encoded, explain)):
            replies[i] = Ok(value=decision)
            if batch[i].record_impression:
                for a in decision.actions:
                    shown.append((decision.customer_id, a.action_id, decision.channel,
                                  "impression", request.now, decision.decision_id))
                    self._journaling.record(Outcome(
                        partition=batch[i].partition, customer_id=decision.customer_id,
                        action_id=a.action_id, channel=decision.channel, outcome="impression",
                        when=request.now, decision_id=decision.decision_id))
            self.by_channel[decision.channel] += 1
            for action in decision.actions:
                self.by_group[action.group] += 1
        self._ctx.counts["decisions"] += len(encoded)
        if shown:
            engine.record_outcomes(shown)
            self._ctx.counts["outcomes"] += len(shown)
        return replies

    def outcomes(self, batch: list[Outcome], touched: dict[str, float]) -> list[Reply]:
        replies: list[Reply] = []
        for o in batch:
            self._residency.activate(o.customer_id, o.partition)
            try:
                self._ctx.engine.record_outcomes([(o.customer_id, o.action_id, o.channel,
                                                   o.outcome, o.when, o.decision_id)])
            except InputError as exc:
                replies.append(Invalid(field=exc.field, reason=exc.reason))
                continue
            self._journaling.record(o)
            replies.append(Ok())
            self._ctx.counts["outcomes"] += 1
        return replies

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
        to a sink."""
        replies: list[Reply] = []
        for w in batch:
            try:
                watch = self._watches.validate(w.sink, w.channel, w.placement)
            except InputError as exc:
                replies.append(Invalid(field=exc.field, reason=exc.reason))
                continue
            self._residency.activate(w.customer_id, w.partition)
            self._journaling.record(w)
            self._watches.watch_customer(w.customer_id, watch, w.active)
            replies.append(Ok())
        return replies
