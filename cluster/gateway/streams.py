"""A gateway's watch streams: what WatchDecisions callers follow, and the pushes that feed
them.

A watch is a view (channel, placement) of one customer, or of every customer of the channel.
The first stream on a watch registers it (with the customer's shard, or for a whole channel
with the controller, which tells every shard) under the gateway's actor name, and every stream
on it is told it is ready once that registration is done (one that fails fails them all);
shards push the decisions that changed to that actor (`deliver`), which hands each to the
streams that watch it. The last stream to leave unregisters the watch. A watch by an alias's
anonymous id goes on after a link merges that customer into another: the shard keeps the
registration on the customer, under the id it was made by, and pushes the customer's decisions
naming that id too (shard/watches.py `Pushed`); its unregistration follows the redirect and
takes one registration away, so the customer's own watch stays. A slow stream keeps at most
WATCH_BACKLOG decisions: past that, the oldest drop first. A gateway holds at most
WATCH_STREAMS streams (each costs a shard's watch entry and a backlog); past that, a new one
is refused (Busy: RESOURCE_EXHAUSTED).
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import AsyncIterator, Awaitable, Callable, NamedTuple

from kairos.core.decision import Decision

from kairos.cluster.settings import WATCH_BACKLOG, WATCH_STREAMS
from kairos.cluster.shard.watches import Pushed
from kairos.cluster.transport.backend import Backend
from kairos.cluster.transport.client import Busy, KairosClient


class Watch(NamedTuple):
    customer_id: str | None  # None: every customer of the channel
    channel: str
    placement: str


class _Stream:
    """One WatchDecisions call: what waits for it (bounded: the oldest drop first)."""

    def __init__(self) -> None:
        self.backlog: deque[Decision] = deque(maxlen=WATCH_BACKLOG)
        self.wake = asyncio.Event()


class _Watched:
    """A watch's streams, and its registration with the shards (its first stream's)."""

    def __init__(self, registration: asyncio.Future):
        self.streams: set[_Stream] = set()
        self.registration = registration


class Watches:
    def __init__(self, sink: str, client: KairosClient, backend: Backend):
        self.sink = sink
        self.client = client
        self.backend = backend
        self._watched: dict[Watch, _Watched] = {}
        self.open = 0  # streams

    async def follow(self, watch: Watch, registered: Callable[[], Awaitable[None]]
                     ) -> AsyncIterator[Decision]:
        """The decisions pushed for `watch` from now on, until the caller stops; `registered()`
        is awaited once the shards push its changes (the caller tells its own caller). Busy
        past WATCH_STREAMS streams."""
        if self.open >= WATCH_STREAMS:
            raise Busy(f"this gateway serves {self.open} watch streams, its most "
                       f"(KAIROS_WATCH_STREAMS)")
        stream = _Stream()
        watched = self._watched.get(watch)
        if watched is None:
            watched = self._watched[watch] = _Watched(
                asyncio.ensure_future(self._register(watch, True)))
        watched.streams.add(stream)
        self.open += 1
        try:
            await asyncio.shield(watched.registration)  # a follower waits for it too
            await registered()
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                while stream.backlog:
                    yield stream.backlog.popleft()
        finally:
            self.open -= 1
            watched.streams.discard(stream)
            if not watched.streams and self._watched.get(watch) is watched:
                del self._watched[watch]
                with contextlib.suppress(Exception):  # its failure was its streams' to see
                    await watched.registration  # so the unregistration cannot overtake it
                await self._register(watch, False)

    async def _register(self, watch: Watch, active: bool) -> None:
        customer, channel, placement = watch
        if customer is None:
            await self.backend.controller().watch_channel(self.sink, channel, placement, active)
        else:
            await self.client.watch(customer, self.sink, channel, placement, active)

    def deliver(self, decisions: list[Decision]) -> None:
        """Shards push here; each decision goes to the streams that watch it: by its
        customer's id, by the other ids a `Pushed` names, or its whole channel."""
        for d in decisions:
            ids = (d.customer_id, *d.also) if isinstance(d, Pushed) else (d.customer_id,)
            for watch in (*(Watch(c, d.channel, d.placement) for c in ids),
                          Watch(None, d.channel, d.placement)):
                watched = self._watched.get(watch)
                for stream in watched.streams if watched is not None else ():
                    stream.backlog.append(d)
                    stream.wake.set()
