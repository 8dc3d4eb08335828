"""What the client keeps of each request while it routes one (its Call, its redirects and
reroutes, where it waits) and of each partition's lane, and its own replies for the requests
it could not deliver (client.py routes them)."""
from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from kairos.cluster.protocol import Request
from kairos.cluster.transport.backend import NotSent, Unavailable

NO_LONGER_AWAITED = "no longer awaited"  # why a request its caller stopped waiting for is unsent


class Undelivered(NamedTuple):
    """The client's own reply for a request whose batch never reached its shard."""

    reason: str


class Failed(NamedTuple):
    """The client's own reply for a request it gave up on: `settle` raises `kind(reason)`, so
    the gateway knows from the class whether it may have been applied (NotSent: never)."""

    kind: type[Unavailable]
    reason: str


class EarlierFailed(NotSent):
    """A request of a Call never sent because an earlier one of the call failed unapplied:
    nothing of the call after that one was sent, so the caller may retry the whole call with
    the same idempotency keys."""


class Call:
    """The requests of one call of several (an IngestBatch, an IngestStream), given up on
    together. A request outside a call goes unsent once its caller stops waiting for it; one of
    a call, only once its call is given up: a deadline cancels the one reply being awaited, and
    dropping that event alone would send the customer's later events of the call without it
    (and the caller's retry would apply it after them). The client gives a call up itself when
    one of its requests fails unapplied (never sent, its batch failed, or its shard refused it
    BUSY or UNAVAILABLE)."""

    def __init__(self) -> None:
        self.given_up = False
        self.reason = ""  # what its requests left unsent are answered, once given up
        self.kind: type[NotSent] = NotSent  # ... and raise

    def give_up(self, reason: str = NO_LONGER_AWAITED, kind: type[NotSent] = NotSent) -> None:
        """What of the call is not sent yet is never sent: all of it at once, so what is sent
        of a customer's events is the first of them. Those are answered NotSent(`reason`),
        the first give-up's (raised as its `kind`): a stream or a batch that ends on one of
        them ends with the cause."""
        if not self.given_up:
            self.given_up, self.reason, self.kind = True, reason, kind


@dataclass
class Item:
    """One request, from when it is enqueued until it is answered."""

    request: Request  # routed: its partition filled in
    future: asyncio.Future
    order: int
    redirects: int = 0
    reroutes: int = 0  # times its shard could not be reached
    routed: int = 0  # the map version it was routed under
    waits_at: str = ""  # while it waits in its lane: the shard whose queue bound counts it
    call: Call | None = None

    def given_up(self) -> bool:
        """Whether it is to go unsent: its call was given up; outside a call, its caller
        stopped waiting (its deadline passed, or it went away: the future is cancelled)."""
        return self.future.done() if self.call is None else self.call.given_up

    def unsent(self) -> Failed:
        """The client's own reply once it is given up on: never sent, and why."""
        if self.call is None:
            return Failed(NotSent, NO_LONGER_AWAITED)
        return Failed(self.call.kind, self.call.reason)


@dataclass
class Lane:
    """One partition's requests: where they go and what waits."""

    shard: str | None = None  # where the in-flight requests went
    inflight: int = 0
    moved: list[Item] = field(default_factory=list)
    held: deque = field(default_factory=deque)
    want_version: int = 0  # MOVED named this map version: wait for it before re-sending
    wait_s: float = 0.0  # how long to wait for it
    orders: itertools.count = field(default_factory=itertools.count)
