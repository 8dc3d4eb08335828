"""A gateway's watch streams: what WatchDecisions callers follow, and the pushes that feed
them.

A watch is a view (channel, placement) of one customer, or of every customer of the channel.
The first stream on a watch registers it (with the customer's shard, or for a whole channel
with the controller, which tells every shard) under the gateway's actor name; shards push the
decisions that changed to that actor (`deliver`), which hands each to the streams that watch
it. The last stream to leave unregisters the watch. A slow stream keeps at most WATCH_BACKLOG
decisions: past that, the oldest drop first.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import AsyncIterator, Awaitable, Callable, NamedTuple

from kairos.core.decision import Decision

from kairos.cluster.settings import WATCH_BACKLOG
from kairos.cluster.transport.backend import Backend
from kairos.cluster.transport.client import KairosClient


class Watch(NamedTuple):
    customer_id: str | None  # None: every customer of the channel
    channel: str
    placement: str


class _Stream:
    """One WatchDecisions call: what waits for it (bounded: the oldest drop first)."""

    def __init__(self) -> None:
        self.backlog: deque[Decision] = deque(maxlen=WATCH_BACKLOG)
        self.wake = asyncio.Event()


class Watches:
    def __init__(self, sink: str, client: KairosClient, backend: Backend):
        self.sink = sink
        self.client = client
        self.backend = backend
        self._streams: dict[Watch, set[_Stream]] = {}

    async def follow(self, watch: Watch, registered: Callable[[], Awaitable[None]]
                     ) -> AsyncIterator[Decision]:
        """The decisions pushed for `watch` from now on, until the caller stops; `registered()`
        is awaited once the shards push its changes (the caller tells its own caller)."""
        stream = _Stream()
        first = watch not in self._streams
        self._streams.setdefault(watch, set()).add(stream)
        try:
            if first:
                await self._register(watch, True)
            await registered()
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                while stream.backlog:
                    yield stream.backlog.popleft()
        finally:
            self._streams[watch].discard(stream)
            if not self._streams[watch]:
                del self._streams[watch]
                await self._register(watch, False)

    async def _register(self, watch: Watch, active: bool) -> None:
        customer, channel, placement = watch
        if customer is None:
            await self.backend.controller().watch_channel(self.sink, channel, placement, active)
        else:
            await self.client.watch(customer, self.sink, channel, placement, active)

    def deliver(self, decisions: list[Decision]) -> None:
        """Shards push here; each decision goes to the streams that watch it."""
        for d in decisions:
            for watch in (Watch(d.customer_id, d.channel, d.placement),
                          Watch(None, d.channel, d.placement)):
                for stream in self._streams.get(watch, ()):
                    stream.backlog.append(d)
                    stream.wake.set()
