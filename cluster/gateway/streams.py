"""A gateway's watch streams: what WatchDecisions callers follow, and the pushes that feed
them (bounded as every stream of a gateway is: streambounds.py).

A watch is a view (channel, placement) of one customer, or of every customer of the channel.
Its registration (with the customer's shard, or for a whole channel with the controller,
which tells every shard) under the gateway's actor name follows its streams: a watch is
registered while it has streams and unregistered once it has none, by one task per watch
that makes one call at a time and then looks again (`_settle`). So a stream that arrives as
the last one leaves waits for that unregistration and registers again: the shard, which
keeps one registration per id, never applies an unregistration after the registration a
stream was told is in place. Every stream is told it is ready once the shards hold the
watch (at once if they already do; a registration that fails fails the streams waiting on
it). A failed unregistration is tried again, backing off, for UNWATCH_RETRY_S; until it is
done the watch keeps its place here, and counts against WATCH_STREAMS as a watch the shards
may hold. A stream that arrives while a try is in flight has the watch registered again as
soon as the try fails (the last one included), one that arrives between tries at the next.

Shards push the decisions that changed to that actor (`deliver`), which appends each once to
the log of every watch it matches, found by key: a stream reads the log with its own cursor,
so a push costs the same for one stream as for thousands (a log read by its only stream is
emptied). A watch by an alias's anonymous id goes on after a link merges that customer into
another: the shard keeps the registration on the customer, under the id it was made by, and
pushes the customer's decisions naming that id too (shard/watches.py `Pushed`); its
unregistration follows the redirect and takes one registration away, so the customer's own
watch stays. A slow stream is at most WATCH_BACKLOG decisions behind (CHANNEL_WATCH_BACKLOG on
a channel's watch, which every customer's decisions feed): a stream that, as a push call
comes, left more than that unread before the call it is reading ends (FellBehind:
RESOURCE_EXHAUSTED, naming how many it had unread), so its caller knows to watch again and
Decide what it needs. A call is kept whole however large (a shard sends what waited during its
last call as one), and nothing a stream that goes on still reads is dropped, so a stream ends
for being slow, never because a burst came at once, even as more calls come while it reads
it; a watch keeps at most its slowest stream's call, its backlog and one push call. A gateway
holds at most WATCH_STREAMS streams (each costs a shard's watch entry),
WATCH_STREAMS_PER_KEY of one API key and WATCH_STREAMS_PER_HOST from one host; past any, a
new one is refused (Busy: RESOURCE_EXHAUSTED). `end` ends the streams on customers this
gateway forgot (Ended: NOT_FOUND), or that a shard says were forgotten through another
gateway (`Unwatched`, pushed); the forget dropped their watches on the shard, so a stream
that joins one of those watches before they have left waits for the watch to be registered
again. The shard tells every gateway that held a watch, this one too, and its word may come
late (behind a slow call of pushes, or from a partition's old owner): it carries the forget's
time, and ends only the watches whose registration was sent before it (this process's wall
clock against the shard's), so a stream on a customer re-created under the id, or on an
alias's anonymous id again, that registered since stays. One within the clocks' skew of the
forget may be ended too; its caller watches again. A catalog switch that takes a watched
view away has the shards drop its watches too: the gateway ends their streams (`end_where`,
NOT_FOUND) once it has compiled the new catalog, and their unregistration, which the shards
refuse as invalid, is done. A switch away and back within one look of the gateway's is never
compiled here, yet the shards dropped the watch at it: so after every compile each watch is
registered again (`register_again`, a call per watch per switch), and comes back, or is
refused and its streams end; one that fails otherwise (a shard restarting) is tried again,
backing off as an unregistration is, and its streams go on.
"""
from __future__ import annotations

import asyncio
import bisect
import logging
import math
import secrets
import time
from collections import deque
from typing import AsyncIterator, Awaitable, Callable, Hashable, NamedTuple

from kairos.core.decision import Decision
from kairos.core.errors import InputError
from kairos.core.request import quoted

from kairos.cluster.gateway.streambounds import Open
from kairos.cluster.identity import fingerprint
from kairos.cluster.settings import (CHANNEL_WATCH_BACKLOG, SHARD_CLOCK_SKEW_S, WATCH_BACKLOG,
                                     WATCH_STREAMS, WATCH_STREAMS_PER_HOST,
                                     WATCH_STREAMS_PER_KEY)
from kairos.cluster.shard.watches import Pushed, Unwatched
from kairos.cluster.transport.backend import Backend, Unavailable, said
from kairos.cluster.transport.client import Busy, KairosClient

log = logging.getLogger("kairos.gateway")

# why the streams on a forgotten customer ended, on the gateway that served the forget or on
# another one that the customer's shard told (an `Unwatched` pushed)
FORGOTTEN = ("the customer was forgotten (ForgetCustomer): its watch ended; a new watch "
             "follows the id if it comes back")
# in what ends a stream whose caller may watch again at once and be served (a view left the
# catalog: its other views; it fell behind): the console follows again on it, not stops
WATCH_AGAIN = "watch again"
UNWATCH_RETRY_S = 600.0  # how long a failed unregistration is tried again
UNWATCH_BACKOFF_S = (0.1, 5.0)  # the first wait before it is tried again, and the longest
# keys the fingerprints this gateway's logs name customers by (logs outlive a forget, so they
# keep no id): its process's own, as a gateway has not the cluster's secret, and an unkeyed
# hash of an e-mail address can be found again by hashing a list of addresses
LOG_SECRET = secrets.token_bytes(32)


class Watch(NamedTuple):
    customer_id: str | None  # None: every customer of the channel
    channel: str
    placement: str


def logged(watch: Watch, exc: Exception) -> tuple[str, str]:
    """A watch as a log line names it (its customer by fingerprint, and its view), and an
    error about it, whose message may quote the id (a shard's reason may), the same way:
    quoted as errors quote (by repr, escaping a backslash or a quote it holds, or a long one's
    start), or as it is."""
    if watch.customer_id is None:
        return f"of every customer on {watch.channel}/{watch.placement}", str(exc)
    customer_id, why = watch.customer_id, str(exc)
    shown = fingerprint(customer_id, LOG_SECRET)
    for form in (quoted(customer_id), repr(customer_id), customer_id):
        why = why.replace(form, shown)
    return f"of customer {shown} on {watch.channel}/{watch.placement}", why


class Ended(Exception):
    """A stream's watch ended on the gateway (its customer was forgotten): NOT_FOUND."""


class FellBehind(Busy):
    """A stream read too slowly: pushes for it were dropped (RESOURCE_EXHAUSTED)."""

    def __init__(self, missed: int, setting: str, backlog: int) -> None:
        super().__init__(f"this watch stream fell {missed} pushes behind (more than "
                         f"KAIROS_{setting}, {backlog}), which it missed: it read too slowly; "
                         f"{WATCH_AGAIN}, and call Decide for the customers whose best action "
                         f"matters")


class _Stream:
    """One WatchDecisions call: where it is in its watch's log."""

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor  # the number of the next decision it reads
        self.ended: Exception | None = None
        self.reading = False  # told its watch is in place: a registration had been held


def _live(watched: "_Watched") -> bool:
    """Whether any of the watch's streams still reads (an ended one needs no registration)."""
    return any(stream.ended is None for stream in watched.streams)


def _reading(watched: "_Watched") -> bool:
    """Whether a stream that has not ended reads already: the watch was held for it, so a
    registration now is made again (a switch), not one those streams wait for."""
    return any(stream.ended is None and stream.reading for stream in watched.streams)


class _Watched:
    """A watch's streams, the decisions pushed for them (from the slowest stream's place on;
    numbered from 0) and where each push call's ended, and its registration with the shards."""

    def __init__(self, channel_wide: bool) -> None:
        self.setting = "CHANNEL_WATCH_BACKLOG" if channel_wide else "WATCH_BACKLOG"
        self.backlog = CHANNEL_WATCH_BACKLOG if channel_wide else WATCH_BACKLOG
        self.streams: set[_Stream] = set()
        self.log: deque[Decision] = deque()
        self.pushed = 0  # decisions appended to the log
        self.calls: list[int] = []  # where each push call still in the log ended (`pushed`)
        self.wake = asyncio.Event()  # replaced once set: the streams that waited read on
        self.held: bool | None = False  # None: a call failed, so the shards may hold it
        self.ready = _future()  # done once a registration is done for the waiting streams
        self.settling: asyncio.Task | None = None
        self.again = False  # registered again since the call in flight began (a switch)
        self.registered_at = -math.inf  # when its latest registration was sent (wall clock)

    def append(self, decision: Decision) -> None:
        self.log.append(decision)
        self.pushed += 1

    def trim(self, before: int) -> None:
        """A push call appended what followed decision `before`: end each stream that, not
        counting the rest of the call it is reading, left more than the backlog unread before
        it (so a burst of any size is read whole by a stream that keeps up, even as more calls
        come), then drop what no stream that goes on still reads. The log holds at most the
        slowest stream's call, the backlog and this call."""
        first = self.pushed - len(self.log)
        del self.calls[:bisect.bisect_right(self.calls, first)]
        self.calls.append(self.pushed)
        if before - first <= self.backlog:  # no stream can be that far behind
            return
        slowest = self.pushed
        for stream in self.streams:
            if stream.ended is not None:
                continue
            reads_to = self.calls[bisect.bisect_right(self.calls, stream.cursor)] \
                if stream.cursor < before else before  # the end of the call it reads
            if before - reads_to > self.backlog:
                stream.ended = FellBehind(before - stream.cursor, self.setting, self.backlog)
            else:
                slowest = min(slowest, stream.cursor)
        for _ in range(slowest - first):
            self.log.popleft()

    def woken(self) -> None:
        self.wake.set()
        self.wake = asyncio.Event()


def _fail(watch: Watch, watched: _Watched, exc: Exception) -> None:
    """End the watch's streams on its failed registration: those that read too, as the shards
    may not push to them (NOT_FOUND, Ended, for a view the shards' catalog lacks)."""
    if isinstance(exc, InputError):
        exc = Ended(f"the catalog the cluster runs has no {watch.channel}/{watch.placement} "
                    f"({exc}): this watch ended; {WATCH_AGAIN} on a view it has")
    for stream in watched.streams:
        stream.ended = stream.ended or exc
    watched.streams.clear()
    watched.woken()


def _future() -> asyncio.Future:
    """A future whose failure its waiters may all have left before (no warning then)."""
    future = asyncio.get_running_loop().create_future()
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


class Watches:
    def __init__(self, sink: str, client: KairosClient, backend: Backend):
        self.sink = sink
        self.client = client
        self.backend = backend
        self._watched: dict[Watch, _Watched] = {}
        self.streams = Open("watch", "WATCH_STREAMS", lambda: (
            WATCH_STREAMS, WATCH_STREAMS_PER_KEY, WATCH_STREAMS_PER_HOST))

    @property
    def open(self) -> int:
        return self.streams.open

    async def follow(self, watch: Watch, registered: Callable[[], Awaitable[None]], *,
                     key: Hashable = None, host: Hashable = None) -> AsyncIterator[Decision]:
        """The decisions pushed for `watch` from now on, until the caller stops; `registered()`
        is awaited once the shards push its changes (the caller tells its own caller). Busy
        past WATCH_STREAMS streams, or past the caller's share: `key` (its API key, None
        without auth) and `host`. Ended if `end` ends it."""
        watched = self._watched.get(watch)
        if watched is None and len(self._watched) >= WATCH_STREAMS:  # some on their way out
            raise Busy(f"this gateway holds {len(self._watched)} watches on the shards, with "
                       f"those it is unregistering, its most (KAIROS_WATCH_STREAMS)")
        callers = self.streams.admit(key, host)
        if watched is None:
            watched = self._watched[watch] = _Watched(watch.customer_id is None)
        stream = _Stream(watched.pushed)
        watched.streams.add(stream)
        try:
            self._settle_soon(watch, watched)
            await asyncio.shield(watched.ready)  # a follower waits for it too
            stream.reading = True
            await registered()
            while True:
                if stream.ended is not None:
                    raise stream.ended
                if stream.cursor == watched.pushed:
                    if len(watched.streams) == 1:  # read: none else needs it
                        watched.log.clear()
                    await watched.wake.wait()
                    continue
                first = watched.pushed - len(watched.log)  # the oldest still kept
                stream.cursor += 1
                yield watched.log[stream.cursor - 1 - first]
        finally:
            self.streams.release(callers)
            watched.streams.discard(stream)
            self._settle_soon(watch, watched)
            if not watched.streams:  # the last ends once its watch is unregistered (or tried)
                await asyncio.shield(watched.settling)

    def _settle_soon(self, watch: Watch, watched: _Watched) -> None:
        if watched.settling is None or watched.settling.done():
            watched.settling = asyncio.ensure_future(self._settle(watch, watched))

    async def _settle(self, watch: Watch, watched: _Watched,
                      retry: tuple[float, float] | None = None) -> None:
        """Registers `watch` while it has streams and unregisters it once it has none, one
        call at a time, until the shards hold what its streams need; then forgets it if it
        has none. A failed registration fails the streams that waited for it, but one made
        again for streams that read (after a switch) ends them only if refused (their view
        left the catalog): else it is tried again later, as a failed unregistration is
        (`retry`: the wait before the next try, and when to give up), so a shard's blip
        ends no stream; an unregistration refused as invalid is done: its view left the
        catalog, and the shards dropped the watch at their switch."""
        while (want := _live(watched)) != watched.held:
            if watched.ready.done():  # the streams from now on wait for the next one
                watched.ready = _future()
            ready = watched.ready
            if want:
                watched.registered_at = time.time()
            watched.again = False
            try:
                await self._register(watch, want)
            except Exception as exc:
                if not want and isinstance(exc, InputError):  # its view left the catalog: the
                    watched.held = False                      # shards dropped it then
                    continue
                watched.held = None
                again = want and _reading(watched) and not isinstance(exc, InputError)
                if want and watched.ready is ready:  # those that wait for it fail (on a
                    ready.set_exception(exc)  # refusal after a switch the reading ones too:
                    if not again:             # a blip keeps them): the next is for new ones
                        _fail(watch, watched, exc)
                if not again and (want or _live(watched)):  # streams that came as it
                    continue  # unregistered have it registered now, not after a wait
                self._retry_later(watch, watched, exc, retry)
                return
            if want and (watched.ready is not ready or watched.again):  # `end` or a switch
                watched.held = None  # came meanwhile: it may have dropped what this registered
                continue
            watched.held = want
            if want:
                ready.set_result(None)
        self._drop_unused(watch, watched)

    def register_again(self) -> None:
        """Register every watch that has streams again, after a catalog switch: the shards
        may have dropped it at a switch this gateway never compiled. One still held is held
        once; one whose view is gone is refused, and its streams end."""
        for watch, watched in self._watched.items():
            if _live(watched):
                watched.again = True
                watched.held = None
                self._settle_soon(watch, watched)

    def _retry_later(self, watch: Watch, watched: _Watched, exc: Exception,
                     retry: tuple[float, float] | None) -> None:
        """Try `watch`'s settling again after a wait, twice as long each time (at most
        UNWATCH_BACKOFF_S[1]), for UNWATCH_RETRY_S; a registration given up ends the streams
        (and the watch is then unregistered)."""
        now = asyncio.get_running_loop().time()
        wait, give_up = retry or (UNWATCH_BACKOFF_S[0], now + UNWATCH_RETRY_S)
        if now + wait > give_up:
            shown, why = logged(watch, exc)
            live = _live(watched)
            log.warning("gave up %s the watch %s after %.0f s: %s: %s",
                        "registering" if live else "unregistering", shown, UNWATCH_RETRY_S,
                        type(exc).__name__, why)
            if not live:
                self._drop_unused(watch, watched)
                return
            if not watched.ready.done():
                watched.ready.set_exception(exc)
            _fail(watch, watched, exc)
            watched.settling = asyncio.ensure_future(self._settle(watch, watched))
            return

        async def later() -> None:
            await asyncio.sleep(wait)
            await self._settle(watch, watched, (min(wait * 2, UNWATCH_BACKOFF_S[1]), give_up))
        watched.settling = asyncio.ensure_future(later())

    def _drop_unused(self, watch: Watch, watched: _Watched) -> None:
        if not watched.streams and self._watched.get(watch) is watched:
            del self._watched[watch]

    async def _register(self, watch: Watch, active: bool) -> None:
        """Register `watch` with the shards (`active`), or unregister it. What the controller
        or a shard raises besides a refusal (InputError), a full queue (Busy) or Unavailable
        (its store down, an error of its own) is Unavailable too, as admin calls answer it:
        the streams that fail on it end UNAVAILABLE, the detail for the gateway's log only
        (calls.abort), not UNKNOWN quoting it."""
        customer, channel, placement = watch
        try:
            if customer is None:
                await self.backend.controller().watch_channel(self.sink, channel, placement,
                                                              active)
            else:
                await self.client.watch(customer, self.sink, channel, placement, active)
        except (InputError, Busy, Unavailable):
            raise
        except Exception as exc:
            raise Unavailable(f"{type(exc).__name__}: {said(exc)}") from exc

    def deliver(self, decisions: list[Decision | Unwatched]) -> None:
        """Shards push here; each decision goes to the watches it matches: by its customer's
        id, by the other ids a `Pushed` names, or its whole channel. An `Unwatched` (a forget
        dropped this gateway's watches of its customer) ends the streams that follow any of
        its ids on a watch registered before the forget, as a forget through this gateway
        does (`end`)."""
        woken: dict[int, tuple[_Watched, int]] = {}  # and how many it had pushed before
        forgotten: list[Unwatched] = []
        for d in decisions:
            if isinstance(d, Unwatched):
                forgotten.append(d)
                continue
            ids = (d.customer_id, *d.also) if isinstance(d, Pushed) else (d.customer_id,)
            for watch in (*(Watch(c, d.channel, d.placement) for c in ids),
                          Watch(None, d.channel, d.placement)):
                watched = self._watched.get(watch)
                if watched is not None and watched.streams:
                    woken.setdefault(id(watched), (watched, watched.pushed))
                    watched.append(d)
        for watched, before in woken.values():
            watched.trim(before)
            watched.woken()
        for word in forgotten:  # by the shard's clock, erring (within the skew) towards ending:
            # a stream ended needlessly reopens, one left open on a dropped watch gets nothing
            self.end(set(word.ids), FORGOTTEN, registered_before=word.at + SHARD_CLOCK_SKEW_S)

    def end(self, customer_ids: set[str], reason: str,
            registered_before: float = math.inf) -> int:
        """End the streams that watch any of `customer_ids` (Ended, saying `reason`) on
        watches registered before `registered_before`; how many."""
        return self.end_where(lambda watch, registered_at: reason if (
            watch.customer_id in customer_ids and registered_at < registered_before) else None)

    def end_where(self, why: Callable[[Watch, float], str | None]) -> int:
        """End the streams of each watch that `why(watch, when it was registered)` gives a
        reason for (Ended, saying it); how many. Their watches are registered again for the
        streams that come since, or unregistered."""
        ended = 0
        for watch, watched in list(self._watched.items()):
            if not watched.streams or (reason := why(watch, watched.registered_at)) is None:
                continue
            for stream in watched.streams:
                stream.ended = Ended(reason)
                ended += 1
            watched.woken()
            if not watched.ready.done():  # the streams waiting for it are all ended
                watched.ready.set_exception(Ended(reason))
            watched.ready = _future()  # streams from now on wait for a registration since
            watched.held = None        # the forget (which dropped the watch on the shard)
            self._settle_soon(watch, watched)
        return ended
