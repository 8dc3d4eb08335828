"""What a request batch costs a shard's round, and a batch cut into parts that each fit.

A round is journaled as one frame, which must stay under the journal's MAX_FRAME: its requests'
bytes (as msgpack) bound most of its records (settings.py, SHARD_ROUND_BYTES), but not the
timers an event fires. A customer's timers that fell due before its event fire first, inside
the round (customers.py, `events`), one Fire record each: 2,048 events of 1 KB ids for a
catalog of 41 timers made 104 MB of them. So an event costs, besides its bytes, a Fire for each
of the catalog's timers (at most MAX_TIMERS), of its customer id, the longest timer name and
FIRE_OVERHEAD bytes. The catalog can change while a batch waits, so a batch keeps what the
cost is made of (its events, their ids' bytes) and is costed by the catalog of its round.
"""
from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, replace
from typing import Iterable

import msgpack

from kairos.core.compiler import CompiledCatalog

from kairos.cluster.protocol import Fire, Invalid, Reply

_LONG = "x" * (1 << 16)  # long enough for msgpack's widest string header
# a packed Fire's bytes besides its customer id and timer name: the widest headers and numbers
FIRE_OVERHEAD = len(msgpack.packb(Fire(partition=-1 << 63, customer_id=_LONG, timer=_LONG,
                                       due=0.5), use_bin_type=True)) - 2 * len(_LONG)


@dataclass
class Batch:
    session: str
    seq: int
    requests: list
    routed: list[int]
    future: asyncio.Future
    arrived: float  # perf_counter
    size: int  # bytes, as msgpack
    events: int  # event requests, which fire their customers' overdue timers
    ids: int  # their customer ids' bytes (UTF-8)


def events_in(requests: Iterable) -> tuple[int, int]:
    """The event requests among `requests` and their customer ids' UTF-8 bytes. A request is
    typed or still the array it travelled as: its kind first, its customer id third."""
    events = ids = 0
    for r in requests:
        try:
            if r[0] == "event":
                ids += len(r[2].encode())
                events += 1
        except (LookupError, TypeError, AttributeError):  # not a request: it fires nothing
            pass
    return events, ids


class FireCost:
    """The bytes an event's overdue fires may add to its round, by the serving catalog."""

    def __init__(self) -> None:
        self._of: CompiledCatalog | None = None
        self.timers = 0
        self.per_fire = 0  # a Fire record's bytes besides its customer id, at most

    def of(self, compiled: CompiledCatalog | None) -> FireCost:
        """This cost for `compiled` (None: the last catalog's: no Shard serves meanwhile)."""
        if compiled is not None and compiled is not self._of:
            self._of, names = compiled, compiled.timer_names
            self.timers = len(names)
            self.per_fire = max((len(n.encode()) for n in names), default=0) + FIRE_OVERHEAD
        return self

    def bytes(self, size: int, events: int, ids: int) -> int:
        """Of requests of `size` bytes with `events` events whose ids have `ids` bytes."""
        return size + self.timers * (ids + events * self.per_fire)

    def of_batch(self, batch: Batch) -> int:
        return self.bytes(batch.size, batch.events, batch.ids)


def cut(batch: Batch, budget: int, cost: FireCost) -> list[Batch]:
    """A batch over the round budget in parts that each fit, in order, its future answered
    once theirs all are; a request over the budget alone answers Invalid (its frame could
    never be journaled)."""
    replies: list[Reply | None] = [None] * len(batch.requests)
    parts: list[tuple[list[int], Batch]] = []
    part: list[int] = []
    total = events = ids = 0

    def close() -> None:
        parts.append((part, replace(
            batch, requests=[batch.requests[k] for k in part],
            routed=[batch.routed[k] for k in part], future=batch.future.get_loop().create_future(),
            size=total, events=events, ids=ids)))

    for k, request in enumerate(batch.requests):
        size = len(msgpack.packb(request))
        its_events, its_ids = events_in((request,))
        alone = cost.bytes(size, its_events, its_ids)
        if alone > budget:
            fires = f", and {alone - size} for the timers it may fire," if alone > size else ""
            replies[k] = Invalid(field="request", reason=(
                f"packs to {size} bytes{fires} over a round's {budget}-byte budget "
                f"(SHARD_ROUND_BYTES): the journal could not hold it"))
            continue
        if part and cost.bytes(total + size, events + its_events, ids + its_ids) > budget:
            close()
            part, total, events, ids = [], 0, 0, 0
        part.append(k)
        total, events, ids = total + size, events + its_events, ids + its_ids
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


def next_round(queue: deque[Batch], limit: int, budget: int, cost: FireCost
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
