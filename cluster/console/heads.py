"""The console's HTTP connections: each has HEAD_S to send a request's head, from its opening
and from the end of each answer, or it is closed.

uvicorn has no such deadline: a connection that sends nothing, or half a head, is kept until
its peer closes it, and its keep-alive timer runs only between a finished answer and the next
byte. So anyone who reaches the console could hold connections open until its descriptors ran
out, and every agent's page load with them (uvicorn's limit_concurrency counts them too, and
then refuses finished requests, which makes it worse). A live page's stream is one request
whose answer does not end: it is under no deadline once its head is in.

uvicorn takes a protocol class for `http`; this is its h11 one with the deadline added (h11,
not httptools: h11 bounds a head at 16 KiB). It relies on that class's `cycle`, `loop`,
`transport`, `handle_events` and `on_response_complete`, which are uvicorn's own, not its API:
pyproject.toml pins uvicorn's minor version, and tests/unit/console/test_bounds.py runs it.
"""
from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_S = 10.0  # a browser sends a head at once; a slow mobile link within seconds


class HeadDeadline(H11Protocol):
    _late: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        asked = self.cycle
        super().handle_events()
        if self.cycle is not asked:  # a head came: its request is under way
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None
                                                or self.cycle.response_complete):
            self._arm()  # the next head (a pipelined one already read started its cycle)

    def _arm(self) -> None:
        self._disarm()
        self._late = self.loop.call_later(HEAD_S, self.transport.close)

    def _disarm(self) -> None:
        if self._late is not None:
            self._late.cancel()
            self._late = None
