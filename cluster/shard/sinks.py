"""A shard's pushes to its watch sinks (the actor's, actor.py; without a Ray runtime here).

One call at a time per sink: the decisions for a sink that come while its call is in flight
wait, only the latest per view (customer, channel, placement), and go in its next call, so a
slow sink holds one call of the shard's, not one per round. Pushes are best-effort views: a
call that fails as Unavailable (no answer within its deadline, a sink Ray is restarting) is
dropped, its sink's watches kept (a later change of a view pushes it again). Only a sink that
is Gone (the process whose streams registered the watches died: ray_backend.py) has its
watches dropped, by `gone`. A watch of a customer nobody has seen yet gets no push that would
find its sink Gone, so the sinks the customers' watches name are asked every PROBE_S (`probe`,
an empty push, as the controller asks those of channel watches).

Pushes are ordered per shard only: a partition handed over is `flush`ed before its freeze is
answered, so the pushes its customers had here land before any of its new owner's. Those still
waiting after FLUSH_S (a slow sink) are dropped rather than sent late, over newer ones; a call
in flight then cannot be recalled, and may still land after the new owner's.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Iterable

from kairos.core.decision import Decision

from kairos.cluster.transport.backend import Unavailable, WatchSink
from kairos.cluster.transport.ray_backend import Gone

log = logging.getLogger("kairos.shard")

View = tuple[str, str, "str | None"]  # customer, channel, placement
PROBE_S = 300.0  # a dead sink's watches of customers not seen yet last about this long
FLUSH_S = 2.0  # how long a freeze waits for its partitions' pushes (moves.py: it holds them)


class Pushes:
    """`sink(name)`: the handle pushes go through; `gone(names)`: drop the sinks' watches."""

    def __init__(self, shard: str, sink: Callable[[str], WatchSink],
                 gone: Callable[[list[str]], Awaitable[None]]) -> None:
        self._shard = shard
        self._sink = sink
        self._gone = gone
        self._waiting: dict[str, dict[View, Decision]] = {}  # sink -> the latest per view
        self._sending: dict[str, asyncio.Task] = {}  # sink -> its call in flight
        self._flight: dict[str, list[Decision]] = {}  # sink -> what that call carries
        self._progress: asyncio.Future | None = None  # resolved as a call ends (`flush`)

    def push(self, sink: str, decisions: list[Decision]) -> None:
        """Send `decisions` to `sink` (from the event loop's thread)."""
        waiting = self._waiting.setdefault(sink, {})
        for d in decisions:
            waiting[(d.customer_id, d.channel, d.placement)] = d
        if sink not in self._sending:
            self._sending[sink] = asyncio.get_running_loop().create_task(self._send(sink))

    async def probe(self, sinks: Iterable[str]) -> None:
        """Ask each sink whether its process lives (an empty push); drop the watches of those
        Gone, all in one call. One with a push in flight is left out: that push finds out."""
        names = [sink for sink in sinks if sink not in self._sending]
        answers = await asyncio.gather(*(self._sink(sink).deliver([]) for sink in names),
                                       return_exceptions=True)
        dead = [sink for sink, answer in zip(names, answers) if isinstance(answer, Gone)]
        for sink in dead:
            log.warning("%s: watch sink %s is gone; dropping its watches", self._shard, sink)
        if dead:
            await self._gone(dead)

    async def flush(self, moving: Callable[[str], bool], within_s: float = FLUSH_S) -> int:
        """Wait, up to `within_s`, until no call in flight or waiting carries a decision of
        a customer `moving` names (its partition is handed over: nothing new of it comes);
        then drop those still waiting, and return their number."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while any(self._carries(sink, moving) for sink in self._sending):
            if loop.time() >= deadline:
                break
            if self._progress is None:
                self._progress = loop.create_future()
            await asyncio.wait([self._progress], timeout=deadline - loop.time())
        dropped = 0
        for sink, waiting in self._waiting.items():
            stale = [v for v in waiting if moving(v[0])]
            for v in stale:
                del waiting[v]
            if stale:
                dropped += len(stale)
                log.warning("%s: %d pushes to watch sink %s dropped: their partition moved "
                            "while the sink was slow", self._shard, len(stale), sink)
        return dropped

    def _carries(self, sink: str, moving: Callable[[str], bool]) -> bool:
        return any(moving(d.customer_id) for d in self._flight.get(sink, ())) or \
            any(moving(customer) for customer, _, _ in self._waiting.get(sink, {}))

    def _progressed(self) -> None:
        if self._progress is not None:
            self._progress.set_result(None)
            self._progress = None

    async def _send(self, sink: str) -> None:
        try:
            while decisions := list(self._waiting.pop(sink, {}).values()):
                self._flight[sink] = decisions
                try:
                    await self._sink(sink).deliver(decisions)
                except Gone:
                    log.warning("%s: watch sink %s is gone; dropping its watches", self._shard,
                                sink)
                    await self._gone([sink])
                    self._waiting.pop(sink, None)  # what came meanwhile has nowhere to go
                    return
                except Unavailable as exc:
                    log.warning("%s: %d pushes to watch sink %s dropped (its watches are "
                                "kept): %s", self._shard, len(decisions), sink, exc)
                self._progressed()
        except Exception:  # a task nobody awaits: said here, or never (its watches are kept)
            log.exception("%s: pushing to watch sink %s failed", self._shard, sink)
        finally:
            self._flight.pop(sink, None)
            del self._sending[sink]
            self._progressed()
