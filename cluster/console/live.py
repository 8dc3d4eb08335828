"""A live customer page's server-sent events, and its place under the console's caps on live
pages (app.py's `live`)."""
from __future__ import annotations

import asyncio
import collections
from typing import AsyncIterator, Awaitable, Callable

from starlette.responses import Response, StreamingResponse

from kairos.cluster.console.gateway_client import GatewayError
from kairos.cluster.console.views import CustomerPage

Watches = Callable[[list[str]], AsyncIterator[set[str]]]  # GatewayClient.changes, of a customer
Read = Callable[[bool], Awaitable[CustomerPage]]  # its page; True: as the live part shows it

# the gateway's failures (GatewayError kinds) a live page waits out, asking again (console.js):
# shedding load, or not answering (restarting, unreachable): either passes
RETRIED = frozenset({"busy", "down"})
# what the gateway's refusal names when the console's own share of watches is what is full (the
# console is one host to it): a pause of its own, "host", as closing this browser's tabs does
# little and the gateway is not busy
HOST_SHARE = "KAIROS_WATCH_STREAMS_PER_HOST"
# a live page's channels, as its URL names them (each once): a catalog has a few, and each
# is a watch stream on the gateway, 64 pages a key
MAX_CHANNELS = 32
# the wait before a live page follows anew after a watch ended "again", doubled each time up to
# the second, and back to the first after a watch that delivered something: a page that keeps
# falling behind would otherwise re-read and re-watch as fast as its watches end
AGAIN_WAIT_S = (1.0, 30.0)


def watched(named: list[str], seen: frozenset[str] | None, max_length: int) -> list[str] | None:
    """The channels a live page's URL names, each once, that it may watch: those the catalog
    has as the agent's key last read it (`seen`; None before any read: all, within the cap);
    one added since is not dropped for long, the page's read names it (`followed`).
    None: more than MAX_CHANNELS, or a name of no characters or over `max_length`."""
    named = list(dict.fromkeys(named))
    if len(named) > MAX_CHANNELS or not all(0 < len(c) <= max_length for c in named):
        return None
    return named if seen is None else [c for c in named if c in seen]


async def followed(watch: Watches, read: Read, channels: list[str]
                   ) -> tuple[AsyncIterator[set[str]], CustomerPage]:
    """The customer's watches, in place (their first item taken), and its page as read after
    that, so that no change made between the read and the watches goes unseen: one read (a
    GetProfile) per live page, watching the channels the browser's page shows. A page with
    channels they lack (none named, a catalog switched since) is read once more, under
    watches of its own; one naming a channel the catalog no longer has (refused, "invalid")
    learns them so, rather than stop updating for good. A watch the gateway ends "again" (a
    switch took its channel away; it fell behind) has the page follow the catalog's channels
    anew (`_again`), rather than stop every channel's updates."""
    changes, page = await _followed(watch, read, channels)
    return _again(watch, read, changes), page


async def _again(watch: Watches, read: Read, changes: AsyncIterator[set[str]]
                 ) -> AsyncIterator[set[str]]:
    """`changes`, then those of the watches followed anew (the catalog's channels now) each
    time the gateway ends one "again" (after AGAIN_WAIT_S), with {"*"} to have the page read
    again: pushes may have been missed meanwhile."""
    wait = AGAIN_WAIT_S[0]
    try:
        while True:
            delivered = False
            try:
                async for changed in changes:
                    delivered = True
                    yield changed
                return
            except GatewayError as exc:
                if exc.kind != "again":
                    raise
            await changes.aclose()
            if delivered:
                wait = AGAIN_WAIT_S[0]
            await asyncio.sleep(wait)
            wait = min(wait * 2, AGAIN_WAIT_S[1])
            changes, _ = await _followed(watch, read, [])
            yield {"*"}
    finally:
        await changes.aclose()


async def _followed(watch: Watches, read: Read, channels: list[str]
                    ) -> tuple[AsyncIterator[set[str]], CustomerPage]:
    try:
        changes, page = await _read_watched(watch, read, channels)
    except GatewayError as exc:
        if exc.kind != "invalid" or not channels:
            raise
        channels = []
        changes, page = await _read_watched(watch, read, channels)
    if not set(page.channels) <= set(channels):
        await changes.aclose()
        changes, page = await _read_watched(watch, read, page.channels)
    return changes, page


async def _read_watched(watch: Watches, read: Read, channels: list[str]
                        ) -> tuple[AsyncIterator[set[str]], CustomerPage]:
    changes = watch(channels)
    try:
        await anext(changes)  # {"*"}: every watch is in place
        # read with no watches, to learn the channels: read again, so not shown
        return changes, await read(bool(channels))
    except BaseException:
        await changes.aclose()
        raise


def event(name: str, html: str) -> str:
    """A server-sent event of that name carrying `html`."""
    return f"event: {name}\n" + "".join(f"data: {line}\n" for line in html.splitlines()) + "\n"


def paused_by(exc: GatewayError) -> str | None:
    """Why a live page pauses on the gateway's failure (`paused`); None: it ends."""
    if exc.kind not in RETRIED:
        return None
    return "host" if exc.kind == "busy" and HOST_SHARE in exc.detail else exc.kind


def paused(why: str) -> Response:
    """A live page's answer when it cannot follow now, `why` one of session, key, console
    (the cap that is full), host (the gateway's share for the console) and RETRIED's: an
    event the page's script reads (an EventSource cannot read a status code), and asks again
    on."""
    return StreamingResponse(iter([event("paused", why)]), media_type="text/event-stream")


class LivePage:
    """A live page's place under the caps, given back once however the page ends: its
    stream closed, or never started (the client went away first)."""

    def __init__(self, *places: tuple[collections.Counter[str], str]):
        self._places = places
        for counter, holder in places:
            counter[holder] += 1

    def release(self) -> None:
        places, self._places = self._places, ()
        for counter, holder in places:
            counter[holder] -= 1
            if not counter[holder]:
                del counter[holder]
