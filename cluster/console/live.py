"""A live customer page's server-sent events, and its place under the console's caps on live
pages (app.py's `live`)."""
from __future__ import annotations

import collections

from starlette.responses import Response, StreamingResponse

# the gateway's failures (GatewayError kinds) a live page waits out, asking again every 10 s:
# shedding load, or not answering (restarting, unreachable): either passes
RETRIED = frozenset({"busy", "down"})


def event(name: str, html: str) -> str:
    """A server-sent event of that name carrying `html`."""
    return f"event: {name}\n" + "".join(f"data: {line}\n" for line in html.splitlines()) + "\n"


def paused(why: str) -> Response:
    """A live page's answer when it cannot follow now, `why` one of session, key, console
    (the cap that is full) and RETRIED's: an event the page's script reads (an EventSource
    cannot read a status code), and asks again on."""
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
