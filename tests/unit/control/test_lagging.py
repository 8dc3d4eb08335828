"""Channel watch changes a shard missed (lagging.py): the catch-up replays only the latest
change per watch, and never one that a newer change reaching the shard made moot."""
from __future__ import annotations

import asyncio

from kairos.cluster.control.lagging import Lagging
from kairos.cluster.transport.backend import Unavailable

WATCH = ("kairos-gateway-0", "web", "hero")


class Shard:
    """Applies watch changes; the first `timeouts` calls apply nothing and time out late."""

    def __init__(self, timeouts: int) -> None:
        self.name = "kairos-shard-0000"
        self.timeouts = timeouts
        self.state: dict[tuple, bool] = {}

    async def watch_channel(self, sink: str, channel: str, placement: str | None,
                            active: bool) -> None:
        if self.timeouts:
            self.timeouts -= 1
            await asyncio.sleep(0.02)
            raise Unavailable(f"{self.name}: no answer within 30 s")
        self.state[(sink, channel, placement)] = active


class Backend:
    def __init__(self, shard: Shard) -> None:
        self.one = shard

    def shard(self, name: str) -> Shard:
        return self.one


def test_a_newer_change_that_reached_the_shard_is_not_undone_by_the_catch_up():
    """The last stream leaves (off: times out), a new one comes (on: reaches the shard once
    the lock is free); the catch-up must not send off again."""
    async def main():
        shard = Shard(timeouts=1)
        lagging = Lagging(Backend(shard))
        off = asyncio.ensure_future(lagging.watch_channel([shard.name], (*WATCH, False)))
        await asyncio.sleep(0)
        on = asyncio.ensure_future(lagging.watch_channel([shard.name], (*WATCH, True)))
        await asyncio.gather(off, on)
        await lagging.replay_watches([shard.name])
        assert shard.state == {WATCH: True}
        assert lagging.watches == {}
    asyncio.run(main())


def test_missed_changes_collapse_to_the_latest_per_watch():
    async def main():
        shard = Shard(timeouts=3)
        lagging = Lagging(Backend(shard))
        other = ("kairos-gateway-0", "app", None)
        for change in [(*WATCH, True), (*other, True), (*WATCH, False)]:
            await lagging.watch_channel([shard.name], change)
        assert lagging.watches == {shard.name: [(*other, True), (*WATCH, False)]}
        await lagging.replay_watches([shard.name])
        assert shard.state == {other: True, WATCH: False} and lagging.watches == {}
    asyncio.run(main())
