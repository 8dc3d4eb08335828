"""A watch stream ends for being slow, not because a shard's push call is large: one call of
5,000 decisions to a channel watch is read whole by streams that keep up (it ended them all,
RESOURCE_EXHAUSTED, past 1,024), while a stream that does not read falls behind and ends
(review rev44 d-streams 1)."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.gateway import streams as streams_module
from kairos.cluster.gateway.streams import FellBehind, Watch, Watches

from tests.support.waiting import until
from tests.unit.gateway.test_watch_settling import FakeShards, decisions


async def reading(watches: Watches, watch: Watch, got: list) -> asyncio.Task:
    """A stream on `watch` that reads every push as soon as it is woken, into `got`."""
    async def consume() -> None:
        async for decision in watches.follow(watch, lambda: asyncio.sleep(0)):
            got.append(decision.decision_id)

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.01)  # in place, nothing unread
    return task


@pytest.mark.parametrize("backlog", [None, 16], ids=["default", "backlog 16"])
def test_one_large_push_call_does_not_end_channel_streams_that_keep_up(monkeypatch, backlog):
    if backlog is not None:  # the call alone is 300 times the backlog
        monkeypatch.setattr(streams_module, "CHANNEL_WATCH_BACKLOG", backlog)

    async def main() -> None:
        watches = Watches("g", FakeShards(), FakeShards())
        got: list[list[str]] = [[], [], []]
        tasks = [await reading(watches, Watch(None, "web", "hero"), g) for g in got]
        burst = decisions(5000)
        watches.deliver(burst)
        await asyncio.sleep(0.2)
        assert all(not task.done() for task in tasks), [t.exception() for t in tasks
                                                         if t.done()]
        assert got == [[d.decision_id for d in burst]] * 3
        watches.deliver(decisions(3))  # and they go on
        await asyncio.sleep(0.01)
        assert [len(g) for g in got] == [5003] * 3
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_stream_that_does_not_read_ends_once_it_left_more_than_the_backlog_unread(
        monkeypatch):
    monkeypatch.setattr(streams_module, "CHANNEL_WATCH_BACKLOG", 16)

    async def main() -> None:
        watches = Watches("g", FakeShards(), FakeShards())
        got: list[str] = []
        fast = await reading(watches, Watch(None, "web", "hero"), got)
        slow = watches.follow(Watch(None, "web", "hero"), lambda: asyncio.sleep(0))
        first = asyncio.ensure_future(slow.__anext__())
        await asyncio.sleep(0.01)
        for k in range(10):  # ten calls of 10 while the slow one reads nothing
            watches.deliver(decisions(100)[10 * k:10 * k + 10])
            await asyncio.sleep(0)
        assert (await first).decision_id == "d0"
        with pytest.raises(FellBehind, match=r"fell \d+ pushes behind .*CHANNEL_WATCH_BACKLOG"):
            async for _ in slow:
                pass
        await asyncio.sleep(0.01)
        assert len(got) == 100 and not fast.done()  # the one that kept up goes on
        fast.cancel()
        await asyncio.gather(fast, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_customers_stream_names_its_own_backlog(monkeypatch):
    monkeypatch.setattr(streams_module, "WATCH_BACKLOG", 2)

    async def main() -> None:
        watches = Watches("g", FakeShards(), FakeShards())
        slow = watches.follow(Watch("c0", "web", "hero"), lambda: asyncio.sleep(0))
        first = asyncio.ensure_future(slow.__anext__())
        await asyncio.sleep(0.01)
        watches.deliver(decisions(1))
        await first
        for _ in range(5):
            watches.deliver(decisions(1))
        with pytest.raises(FellBehind, match="more than KAIROS_WATCH_BACKLOG, 2"):
            await slow.__anext__()

    asyncio.run(asyncio.wait_for(main(), 20))


@pytest.mark.parametrize("burst, backlog", [(2000, 1024), (20_000, None)],
                         ids=["backlog 1024", "default"])
def test_a_stream_reading_a_burst_goes_on_as_the_next_call_comes(monkeypatch, burst, backlog):
    """A burst over the backlog, then another call 5 ms later while a stream reads the burst
    at about 100,000 a second: it dropped the burst's start under the stream, which ended
    (review rev44 d-streams2 2, probe_burst2); a stream that reads nothing still ends."""
    if backlog is not None:
        monkeypatch.setattr(streams_module, "CHANNEL_WATCH_BACKLOG", backlog)

    async def main() -> None:
        watches = Watches("g", FakeShards(), FakeShards())
        watch = Watch(None, "web", "hero")
        got: list[str] = []

        async def consume() -> None:
            async for decision in watches.follow(watch, lambda: asyncio.sleep(0)):
                got.append(decision.decision_id)
                if len(got) % 100 == 0:
                    await asyncio.sleep(0.001)

        fast = asyncio.ensure_future(consume())
        stalled = watches.follow(watch, lambda: asyncio.sleep(0))
        first = asyncio.ensure_future(stalled.__anext__())
        await asyncio.sleep(0.01)
        pushed = decisions(burst + 20)
        watches.deliver(pushed[:burst])
        assert (await first).decision_id == "d0"
        await asyncio.sleep(0.005)
        assert 0 < len(got) < burst  # still reading the burst
        watches.deliver(pushed[burst:burst + 10])
        await until(lambda: len(got) == burst + 10 or fast.done(), 10, "the burst to be read")
        assert not fast.done(), fast.exception()
        kept = streams_module.CHANNEL_WATCH_BACKLOG  # past the burst the stalled one is in
        watches.deliver(pushed[burst + 10:] * (kept // 10 + 1))
        watches.deliver(pushed[:1])  # comes as the stalled one left more than that unread
        with pytest.raises(FellBehind, match=r"fell \d+ pushes behind"):
            await stalled.__anext__()
        await until(lambda: len(got) == burst + 10 + 10 * (kept // 10 + 1) + 1 or fast.done(),
                    10, "the rest to be read")
        assert not fast.done(), fast.exception()
        fast.cancel()
        await asyncio.gather(fast, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 20))
