"""A watch stream that reads too slowly, past the decisions its watch keeps (WATCH_BACKLOG),
ends RESOURCE_EXHAUSTED naming how many pushes it missed, rather than skip them unseen: a
channel-wide watch's log holds every customer's change, so a skipped one may be some
customer's only change."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.gateway import streams as streams_module
from kairos.cluster.gateway.streams import FellBehind, Watch, Watches
from kairos.core.decision import Decision


class _Controller:
    async def watch_channel(self, *args) -> None:
        pass


class _Backend:
    def controller(self) -> _Controller:
        return _Controller()


def _decision(n: int) -> Decision:
    return Decision(decision_id=f"d{n}", customer_id=f"c{n}", channel="push", placement="p",
                    actions=[], catalog_version="v", model_version=0)


def test_a_stream_that_falls_behind_its_backlog_ends_naming_what_it_missed(monkeypatch):
    monkeypatch.setattr(streams_module, "WATCH_BACKLOG", 8)

    async def main() -> None:
        watches = Watches("g", None, _Backend())
        ready = asyncio.Event()

        async def registered() -> None:
            ready.set()
        stream = watches.follow(Watch(None, "push", "p"), registered)
        reading = asyncio.ensure_future(anext(stream))
        await ready.wait()
        watches.deliver([_decision(n) for n in range(20)])  # while its reader is busy
        with pytest.raises(FellBehind, match="fell 12 pushes behind"):  # c0..c11 dropped
            await reading
        assert watches.open == 0
    asyncio.run(main())
