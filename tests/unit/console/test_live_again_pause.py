"""A live page follows anew after a watch ended "again" only after a pause, doubled each time
a watch ends without delivering anything and back to the first after one that delivered: it
re-read and re-watched with no pause (review rev44 d-streams2 4)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc

from kairos.cluster.console import live
from kairos.cluster.console.gateway_client import GatewayError
from kairos.cluster.gateway.streams import FellBehind

BEHIND = GatewayError.status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             str(FellBehind(5, "CHANNEL_WATCH_BACKLOG", 16384)))


def test_re_follows_wait_longer_each_time_until_a_watch_delivers(monkeypatch):
    monkeypatch.setattr(live, "AGAIN_WAIT_S", (0.05, 0.4))
    started: list[float] = []

    async def watch(channels: list[str]):
        started.append(asyncio.get_running_loop().time())
        yield {"*"}
        if len(started) == 4:  # this one delivers before it falls behind
            yield {"web"}
        raise BEHIND

    async def read(shown: bool):
        return SimpleNamespace(channels=[])

    async def main() -> None:
        changes, _ = await live.followed(watch, read, [])
        while len(started) < 5:
            await anext(changes)
        await changes.aclose()

    asyncio.run(asyncio.wait_for(main(), 10))
    gaps = [later - earlier for earlier, later in zip(started, started[1:])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2, gaps
    assert 0.05 <= gaps[3] < 0.3, gaps  # reset: 0.4 without
