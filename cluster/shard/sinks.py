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

Pushes are ordered per shard only: a partition handed over is parked, then `flush`ed, then
exported (the actor's `freeze`), so the pushes its customers had here land before any of its
new owner's. Those still waiting after FLUSH_S (a slow sink) are dropped rather than sent late,
over newer ones, and handed over as not shown (watches.py's `unshown`), so the view is pushed
again at the customer's next change; a call in flight then cannot be recalled, and may still
land after the new owner's.

A forget's word that a sink's watches of the customer were dropped (watches.py `Unwatched`)
waits apart from the views' pushes, so that no push replaces it (a channel watch's, of a
customer re-created under the id), and goes in a call of its own after the pushes taken with
it: its streams end after the pushes before it, and a sink that cannot take it (a gateway
older than the word, which cannot unpickle it) loses only the word, said in one warning. Only
gateways get it (a sink named with an incarnation: ray_backend.py `sink_name`); a user's own
sink actor (KairosClient.watch) takes decisions only. It is best effort as pushes are; a
flush keeps it, since its customer is gone wherever the partition goes, and it carries the
forget's time, so a late one ends no watch registered since.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, Iterable

from kairos.core.decision import Decision

from kairos.cluster.shard.watches import Unwatched, View
from kairos.cluster.transport.backend import Unavailable, WatchSink
from kairos.cluster.transport.ray_backend import SINK_MARK, Gone

log = logging.getLogger("kairos.shard")

PROBE_S = 300.0  # a dead sink's watches of customers not seen yet last about this long
FLUSH_S = 2.0  # how long a freeze waits for its partitions' pushes (moves.py: it holds them)
FLUSH_LOOKS = 4096  # waiting pushes `flush` looks at between yields to the event loop


@dataclass
class _Sending:
    """A sink's sending task and its calls: `flush` waits for a given one to end."""

    task: asyncio.Task | None = None
    carries: list[Decision | Unwatched] = field(default_factory=list)  # the call in flight
    started: int = 0  # calls begun
    words_next: bool = False  # a call of forgets' words follows the one in flight
    ended: int = 0
    _ends: asyncio.Future | None = None

    def call_ended(self) -> asyncio.Future:
        """Resolved as the next call ends (or the task does)."""
        if self._ends is None:
            self._ends = asyncio.get_running_loop().create_future()
        return self._ends

    def ending(self) -> None:
        self.ended += 1
        if self._ends is not None:
            self._ends.set_result(None)
            self._ends = None


async def _yielding(views: list[View]) -> AsyncIterator[View]:
    """The views, letting the event loop run between every FLUSH_LOOKS of them."""
    for k in range(0, len(views), FLUSH_LOOKS):
        if k:
            await asyncio.sleep(0)
        for v in views[k:k + FLUSH_LOOKS]:
            yield v


class Pushes:
    """`sink(name)`: the handle pushes go through; `gone(names)`: drop the sinks' watches."""

    def __init__(self, shard: str, sink: Callable[[str], WatchSink],
                 gone: Callable[[list[str]], Awaitable[None]]) -> None:
        self._shard = shard
        self._sink = sink
        self._gone = gone
        self._waiting: dict[str, dict[View, Decision]] = {}  # sink -> the latest per view
        self._ending: dict[str, dict[Unwatched, None]] = {}  # sink -> the forgets' word
        self._sending: dict[str, _Sending] = {}  # sink -> its task, while it has one

    def push(self, sink: str, decisions: list[Decision | Unwatched]) -> None:
        """Send `decisions` to `sink` (from the event loop's thread)."""
        waiting = self._waiting.setdefault(sink, {})
        for d in decisions:
            if isinstance(d, Unwatched):
                if SINK_MARK in sink:  # a gateway's
                    self._ending.setdefault(sink, {})[d] = None
            else:
                waiting[(d.customer_id, d.channel, d.placement)] = d
        if sink not in self._sending:
            sending = self._sending[sink] = _Sending()
            sending.task = asyncio.get_running_loop().create_task(self._send(sink, sending))

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

    async def flush(self, moving: Callable[[str], bool], within_s: float = FLUSH_S
                    ) -> list[View]:
        """Wait, up to `within_s`, for the calls that carry, or will carry, a decision of a
        customer `moving` names (its partition is parked: nothing new of it comes); then drop
        those still waiting, and return their views. The calls are found once, here: waking
        at every call's end to look through every sink's decisions again would hold the
        event loop while a hung sink has many waiting."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        calls: list[tuple[str, _Sending, int]] = []  # a sink, and the call of it to wait for
        held: dict[str, list[View]] = {}  # sink -> the moving customers' views waiting
        for sink, sending in list(self._sending.items()):
            started, carried = sending.started, sending.carries
            views = [v async for v in _yielding(list(self._waiting.get(sink, ())))
                     if moving(v[0])]
            if views:  # they go in the next call of pushes after the one in flight
                held[sink] = views
                calls.append((sink, sending, started + 1 + sending.words_next))
            elif any(moving(d.customer_id) for d in carried):
                calls.append((sink, sending, started))
        for sink, sending, call in calls:
            while sending.ended < call and self._sending.get(sink) is sending and \
                    loop.time() < deadline:
                await asyncio.wait([sending.call_ended()], timeout=deadline - loop.time())
        dropped = []
        for sink, views in held.items():
            waiting = self._waiting.get(sink, {})
            stale = [v for v in views if v in waiting]
            for v in stale:
                del waiting[v]
            if stale:
                dropped.extend(stale)
                log.warning("%s: %d pushes to watch sink %s dropped: their partition moved "
                            "while the sink was slow", self._shard, len(stale), sink)
        return dropped

    async def _send(self, sink: str, sending: _Sending) -> None:
        try:
            while sink in self._waiting or sink in self._ending:
                pushes = list(self._waiting.pop(sink, {}).values())
                words: list[Decision | Unwatched] = list(self._ending.pop(sink, {}))
                for decisions in (pushes, words):
                    sending.words_next = decisions is pushes and bool(words)
                    if decisions and not await self._call(sink, sending, decisions):
                        return
        except Exception:  # a task nobody awaits: said here, or never (its watches are kept)
            log.exception("%s: pushing to watch sink %s failed", self._shard, sink)
        finally:
            del self._sending[sink]

    async def _call(self, sink: str, sending: _Sending,
                    decisions: list[Decision | Unwatched]) -> bool:
        """One call to `sink`; False if it is Gone (its watches dropped)."""
        sending.carries = decisions
        sending.started += 1
        try:
            await self._sink(sink).deliver(decisions)
        except Gone:
            log.warning("%s: watch sink %s is gone; dropping its watches", self._shard, sink)
            await self._gone([sink])
            self._waiting.pop(sink, None)  # what came meanwhile has nowhere to go
            self._ending.pop(sink, None)
            return False
        except Unavailable as exc:
            log.warning("%s: %d pushes to watch sink %s dropped (its watches are kept): %s",
                        self._shard, len(decisions), sink, exc)
        except Exception as exc:  # an older gateway cannot unpickle the word
            if not isinstance(decisions[0], Unwatched):
                raise
            log.warning("%s: watch sink %s was not told that %d forgotten customers' watches "
                        "ended: %s", self._shard, sink, len(decisions), exc)
        finally:
            sending.carries = []
            sending.ending()
        return True
