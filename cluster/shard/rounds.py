"""What a request batch costs a shard's round, and a batch cut into parts that each fit.

A round is journaled as one frame, which must stay under the journal's MAX_FRAME: its requests'
bytes (as msgpack) bound most of its records (settings.py, SHARD_ROUND_BYTES), but not those a
request makes of its own beyond them:
- an event: a customer's timers that fell due before it fire first, inside the round
  (customers.py, `events`), one Fire record each: 2,048 events of 1 KB ids for a catalog of 41
  timers made 104 MB of them. So an event costs, besides its bytes, a Fire for each of the
  catalog's timers (at most MAX_TIMERS), of its customer id, the longest timer name and
  FIRE_OVERHEAD bytes.
- a Decide recording its impression: an Outcome record per action shown (customers.py,
  `decisions`), 300 of 1 KB ids on a placement of 200 made 74 MB. So it costs, besides its
  bytes, an Outcome for each action of the catalog's largest placement (top_k, at most
  MAX_TOP_K), of its customer id, the longest action id and channel name, and IMPRESSION_OVERHEAD
  bytes (its engine decision id's among them).
The other kinds journal their request (a Forget's or Retire's with a time, an event's with its
sequence number: a few bytes, RECORD_EXTRA at most, which the frame's margin past the round's
bytes covers), a record made of its fields (a Merge's Unclaim) or nothing; but a link's Take
journals the anonymous customer's state, known only once the customer is loaded. No price by
the catalog bounds it tightly: a customer of the default catalog packs to 3.3 KB, one with a
1 KB id and 256 idempotency keys to 12.5 KB, one of a catalog of long histories and many text
attributes (MAX_ATTRIBUTE_TEXT each) to hundreds of KB, and its watches' registrations have no
cap. So a Take is costed by its bytes only, and the shard bounds what a round's Takes hand
over instead: a round's requests cost at most half a frame (SHARD_ROUND_BYTES is at most
MAX_FRAME / 2), and its states may take the other half less RECORD_EXTRA a request
(`taken_budget`: 32 MB, ten thousand customers of the default catalog); a Take past it
answers BUSY, having changed nothing, and its link's caller retries it (identities.py,
`take`). The catalog can change while a batch waits, so a batch keeps what the cost is made of
(its events and decides, their ids' bytes) and is costed by the catalog of its round.
"""
from __future__ import annotations

import asyncio
import bisect
import itertools
from collections import Counter, deque
from dataclasses import dataclass, replace
from typing import Iterable, NamedTuple

import msgpack

from kairos.core.compiler import CompiledCatalog

from kairos.cluster.protocol import Decide, Fire, Invalid, Outcome, Reply
from kairos.cluster.settings import SHARD_ROUND_LIMIT
from kairos.cluster.storage import frames

_LONG = "x" * (1 << 16)  # long enough for msgpack's widest string header
# a packed Fire's bytes besides its customer id and timer name: the widest headers and numbers
FIRE_OVERHEAD = len(msgpack.packb(Fire(partition=-1 << 63, customer_id=_LONG, timer=_LONG,
                                       due=0.5), use_bin_type=True)) - 2 * len(_LONG)


def fire_bytes(id_bytes: int, timer_bytes: int) -> int:
    """A Fire record's bytes as the journal packs it, at most, for a customer id and a timer
    name of these lengths (UTF-8): what a round's overdue fires and a tick's firings cost."""
    return id_bytes + timer_bytes + FIRE_OVERHEAD
# what a request's record may take past the request's bytes: an event's sequence number, a
# Forget's or Retire's time, a Take's state's header (the state apart: `taken_budget`)
RECORD_EXTRA = 16


def taken_budget() -> int:
    """The bytes of state a round's Takes may hand over: the half of a frame its requests
    cannot cost, less what each request's record may add past its bytes."""
    return frames.MAX_FRAME // 2 - SHARD_ROUND_LIMIT * RECORD_EXTRA
# an engine's decision id (core/engine.py): 8 hex digits, a dash, a 64-bit count in hex
_ENGINE_ID = "f" * 8 + "-" + "f" * 16
# a packed impression Outcome's bytes besides its customer id, action id and channel: the
# widest headers and numbers, and the engine's decision id it names
IMPRESSION_OVERHEAD = len(msgpack.packb(Outcome(
    partition=-1 << 63, customer_id=_LONG, action_id=_LONG, channel=_LONG,
    outcome="impression", when=0.5, decision_id=_ENGINE_ID), use_bin_type=True)) - 3 * len(_LONG)


class Makes(NamedTuple):
    """Requests that may journal records besides their bytes, as many as the catalog says,
    each of its customer id: events (a Fire per timer) and decides recording their impression
    (an Outcome per action shown); and their customer ids' bytes (UTF-8)."""

    events: int = 0
    event_ids: int = 0
    shows: int = 0
    show_ids: int = 0

    def plus(self, other: Makes) -> Makes:
        return Makes(*(a + b for a, b in zip(self, other)))


@dataclass
class Batch:
    session: str
    seq: int
    requests: list
    routed: list[int]
    future: asyncio.Future
    arrived: float  # perf_counter
    size: int  # bytes, as msgpack
    makes: Makes  # what its requests may journal besides


_RECORD_IMPRESSION = Decide._fields.index("record_impression")


def makes_of(requests: Iterable) -> Makes:
    """What `requests` may journal besides their bytes. A request is typed or still the array
    it travelled as: its kind first, its customer id third (a Decide's record_impression, left
    out of a short array, is its default, False)."""
    events = event_ids = shows = show_ids = 0
    for r in requests:
        try:
            if r[0] == "event":
                event_ids += len(r[2].encode())
                events += 1
            elif r[0] == "decide" and len(r) > _RECORD_IMPRESSION and r[_RECORD_IMPRESSION]:
                show_ids += len(r[2].encode())
                shows += 1
        except (LookupError, TypeError, AttributeError):  # not a request: it makes nothing
            pass
    return Makes(events, event_ids, shows, show_ids)


def _longest(names: Iterable[str]) -> int:
    return max((len(n.encode()) for n in names), default=0)


class RoundCost:
    """The bytes requests cost a round by the serving catalog: theirs, and the records their
    events' overdue fires and their decides' impressions may add."""

    def __init__(self) -> None:
        self._of: CompiledCatalog | None = None
        self.timers = 0
        self.per_fire = 0  # a Fire record's bytes besides its customer id, at most
        self.shown = 0  # the most actions a decision shows
        self.per_impression = 0  # an impression Outcome's bytes besides its customer id

    def of(self, compiled: CompiledCatalog | None) -> RoundCost:
        """This cost for `compiled` (None: the last catalog's: no Shard serves meanwhile)."""
        if compiled is not None and compiled is not self._of:
            self._of = compiled
            self.timers = len(compiled.timer_names)
            self.per_fire = fire_bytes(0, _longest(compiled.timer_names))
            self.shown = compiled.max_top_k
            self.per_impression = _longest(compiled.action_ids) + \
                _longest(compiled.channel_names) + IMPRESSION_OVERHEAD
        return self

    def bytes(self, size: int, makes: Makes) -> int:
        """Of requests of `size` bytes that make `makes`."""
        return size + self.timers * (makes.event_ids + makes.events * self.per_fire) + \
            self.shown * (makes.show_ids + makes.shows * self.per_impression)

    def of_batch(self, batch: Batch) -> int:
        return self.bytes(batch.size, batch.makes)


def cut(batch: Batch, budget: int, cost: RoundCost) -> list[Batch]:
    """A batch over the round budget in parts that each fit, in order, its future answered
    once theirs all are; a request over the budget alone answers Invalid (its frame could
    never be journaled)."""
    replies: list[Reply | None] = [None] * len(batch.requests)
    parts: list[tuple[list[int], Batch]] = []
    part: list[int] = []
    total, makes = 0, Makes()

    def close() -> None:
        parts.append((part, replace(
            batch, requests=[batch.requests[k] for k in part],
            routed=[batch.routed[k] for k in part], future=batch.future.get_loop().create_future(),
            size=total, makes=makes)))

    for k, request in enumerate(batch.requests):
        size = len(msgpack.packb(request))
        its = makes_of((request,))
        alone = cost.bytes(size, its)
        if alone > budget:
            what = "the timers it may fire" if its.events else "the impressions it records"
            more = f", and {alone - size} for {what}," if alone > size else ""
            replies[k] = Invalid(field="request", reason=(
                f"packs to {size} bytes{more} over a round's {budget}-byte budget "
                f"(SHARD_ROUND_BYTES): the journal could not hold it"))
            continue
        if part and cost.bytes(total + size, makes.plus(its)) > budget:
            close()
            part, total, makes = [], 0, Makes()
        part.append(k)
        total, makes = total + size, makes.plus(its)
    if part:
        close()

    left = len(parts)

    def answer(_: asyncio.Future) -> None:
        nonlocal left
        left -= 1
        if left == 0 and not batch.future.done():
            for ks, p in parts:
                for k, reply in zip(ks, p.future.result()):
                    replies[k] = reply
            batch.future.set_result(replies)
    for _, p in parts:
        p.future.add_done_callback(answer)
    if not parts and not batch.future.done():  # every request Invalid
        batch.future.set_result(replies)
    return [p for _, p in parts]


def senders_of(round_: list[Batch], held: set[int]) -> list[tuple[str, int]]:
    """The round's requests by sender, as its Shard is given them (linkhold.py): each batch's
    session and its number of requests, less those `held` (positions among the round's, which
    the host answers itself): a tuple a batch, nothing a request; each held position is placed
    in its batch once (looked for in every batch, 2,048 of them held in as many batches cost
    0.45 s a round, as an overload brings)."""
    less: Counter[int] = Counter()
    if held:
        ends = list(itertools.accumulate(len(batch.requests) for batch in round_))
        less.update(bisect.bisect_right(ends, k) for k in held)
    return [(batch.session, len(batch.requests) - less[i]) for i, batch in enumerate(round_)]


def next_round(queue: deque[Batch], limit: int, budget: int, cost: RoundCost
               ) -> list[Batch]:
    """Queued batches, oldest first, up to `limit` requests and `budget` bytes (at least one
    batch: none is over the budget when queued or cut)."""
    round_ = [queue.popleft()]
    size, bytes_ = len(round_[0].requests), cost.of_batch(round_[0])
    while queue and size + len(queue[0].requests) <= limit and \
            bytes_ + cost.of_batch(queue[0]) <= budget:
        round_.append(queue.popleft())
        size += len(round_[-1].requests)
        bytes_ += cost.of_batch(round_[-1])
    return round_
