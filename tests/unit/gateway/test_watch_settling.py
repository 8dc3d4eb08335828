"""A gateway's watch registrations follow its streams one call at a time: a stream that arrives
as the last one leaves is in place once it is told so (by customer and channel-wide), a failed
unregistration is tried again, and a push costs the same whatever the number of streams on a
watch (a fake shard that holds registrations as a set, and the in-process runtime)."""
from __future__ import annotations

import asyncio
import gc
import time

import pytest

from kairos.core.decision import Decision
from kairos.cluster.gateway import streams as streams_module
from kairos.cluster.gateway.streams import FellBehind, Watch, Watches
from kairos.cluster.transport.backend import Unavailable
from kairos.cluster.transport.client import Busy, KairosClient

from tests.support.waiting import until
from tests.unit.gateway.test_watch_link import PushingBackend
from tests.unit.shard.test_shard import T0


class FakeShards:
    """Both the client (a customer's watch) and the controller (a channel's): registrations
    applied in the order the calls arrive, each after `gate` opens; `failing` unregistrations
    fail first."""

    def __init__(self) -> None:
        self.held: set[tuple] = set()
        self.gate = asyncio.Event()
        self.gate.set()
        self.failing = 0

    async def _apply(self, key: tuple, active: bool) -> None:
        await self.gate.wait()
        if not active and self.failing:
            self.failing -= 1
            raise Unavailable("shard restarting")
        (self.held.add if active else self.held.discard)(key)

    async def watch(self, customer, sink, channel, placement, active) -> None:
        await self._apply((customer, channel, placement), active)

    async def watch_channel(self, sink, channel, placement, active) -> None:
        await self._apply((None, channel, placement), active)

    def controller(self) -> "FakeShards":
        return self


async def opened(watches: Watches, watch: Watch, settle: float = 0.01, **caller
                 ) -> tuple[asyncio.Task, asyncio.Event]:
    """A stream on `watch` (after `settle` s) and the event set once it is told its watch is
    in place."""
    ready = asyncio.Event()

    async def registered() -> None:
        ready.set()

    async def consume() -> None:
        async for _ in watches.follow(watch, registered, **caller):
            pass

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(settle)
    return task, ready


async def in_place(watches: Watches, watch: Watch, settle: float = 0.01, **caller
                   ) -> asyncio.Task:
    """A stream on `watch`, once it is told its watch is in place."""
    task, ready = await opened(watches, watch, settle, **caller)
    await asyncio.wait_for(ready.wait(), 10)
    return task


async def one_watch() -> tuple[FakeShards, Watches, Watch, asyncio.Task]:
    """A gateway on FakeShards with one stream in place on the watch ("w", "web", "hero")."""
    shards = FakeShards()
    watches = Watches("g", shards, shards)
    watch = Watch("w", "web", "hero")
    return shards, watches, watch, await in_place(watches, watch)


async def hang_up(*tasks: asyncio.Task) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("customer", ["w", None], ids=["by customer", "channel-wide"])
def test_a_stream_that_arrives_as_the_last_one_leaves_is_in_place_once_told_so(customer):
    """The leaving stream's unregistration went after the newcomer's registration, so the
    shard applied register, register (nothing), unregister: told ready, held by none."""
    async def main() -> None:
        shards = FakeShards()
        watches = Watches("g", shards, shards)
        watch = Watch(customer, "web", "hero")
        shards.gate.clear()  # the shard is slow for a moment
        a, _ = await opened(watches, watch)
        a.cancel()  # A hangs up before its watch is in place
        await asyncio.sleep(0.01)
        b, b_ready = await opened(watches, watch)
        shards.gate.set()
        await asyncio.wait_for(b_ready.wait(), 5)
        await asyncio.sleep(0.05)
        assert shards.held == {tuple(watch)}
        b.cancel()
        await asyncio.gather(a, b, return_exceptions=True)
        assert shards.held == set() and not watches._watched

    asyncio.run(main())


def test_a_failed_unregistration_is_tried_again_until_the_shard_takes_it(monkeypatch):
    monkeypatch.setattr(streams_module, "UNWATCH_BACKOFF_S", (0.01, 0.02))

    async def main() -> None:
        shards = FakeShards()
        watches = Watches("g", shards, shards)
        a = await in_place(watches, Watch("w", "web", "hero"))
        shards.failing = 3  # the shard blips as the caller hangs up
        await hang_up(a)
        await until(lambda: not shards.held, 5, "the unregistration to be tried again")
        assert shards.failing == 0 and not watches._watched

    asyncio.run(main())


def test_a_stream_arriving_while_an_unregistration_is_retried_gets_its_watch(monkeypatch):
    monkeypatch.setattr(streams_module, "UNWATCH_BACKOFF_S", (0.05, 0.05))

    async def main() -> None:
        shards, watches, watch, a = await one_watch()
        shards.failing = 1
        await hang_up(a)
        b = await in_place(watches, watch)
        assert shards.held == {tuple(watch)}
        await hang_up(b)
        assert shards.held == set()

    asyncio.run(main())


def test_unregistrations_are_given_up_after_their_time(monkeypatch):
    monkeypatch.setattr(streams_module, "UNWATCH_BACKOFF_S", (0.01, 0.01))
    monkeypatch.setattr(streams_module, "UNWATCH_RETRY_S", 0.05)

    async def main() -> None:
        shards = FakeShards()
        watches = Watches("g", shards, shards)
        a = await in_place(watches, Watch("w", "web", "hero"))
        shards.failing = 10 ** 6
        await hang_up(a)
        await until(lambda: not watches._watched, 5, "the gateway to give up")

    asyncio.run(main())


def test_a_shard_blip_as_callers_hang_up_leaves_no_watch_on_the_shard(monkeypatch):
    """rev41 push finding 3 (p4): 50 unregistrations failed once, 50 watches leaked."""
    monkeypatch.setattr(streams_module, "UNWATCH_BACKOFF_S", (0.01, 0.05))

    class Flaky(PushingBackend):
        down = False

        async def send(self, *a, **k):
            if self.down:
                raise Unavailable("shard restarting")
            return await super().send(*a, **k)

    async def main() -> None:
        backend = Flaky()
        await backend.start_runtime(1, n_partitions=16)
        client = await KairosClient(backend).connect()
        watches = backend.gateway = Watches("g", client, backend)
        await client.ingest("w", "app_open", T0)
        for i in range(5):
            task = await in_place(watches, Watch(f"id{i}", "web", "hero"))
            backend.down = True
            await hang_up(task)
            backend.down = False
        [shard] = [s for s in backend.shards.values() if s is not None]
        await until(lambda: not shard.watches.by_customer, 10, "the watches to be unregistered")
        await client.close()

    asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("who", ["key", "host"])
def test_one_caller_holds_at_most_its_share_of_the_streams(monkeypatch, who):
    monkeypatch.setattr(streams_module, f"WATCH_STREAMS_PER_{who.upper()}", 2)

    async def main() -> None:
        shards = FakeShards()
        watches = Watches("g", shards, shards)
        mine = [await opened(watches, Watch(None, "web", "hero"), **{who: "one"})
                for _ in range(2)]
        refused, _ = await opened(watches, Watch("x", "web", "hero"), **{who: "one"})
        with pytest.raises(Busy, match=f"PER_{who.upper()}"):
            await asyncio.wait_for(refused, 5)
        other = await in_place(watches, Watch(None, "web", "hero"), **{who: "two"})
        mine[0][0].cancel()
        await asyncio.gather(mine[0][0], return_exceptions=True)
        again = await in_place(watches, Watch(None, "web", "hero"), **{who: "one"})
        for task in (mine[1][0], other, again):
            task.cancel()
        await asyncio.gather(mine[1][0], other, again, return_exceptions=True)
        assert not watches.streams.callers

    asyncio.run(main())


def decisions(n: int) -> list[Decision]:
    return [Decision(f"d{i}", f"c{i}", "web", "hero", (), "v", 1) for i in range(n)]


def test_a_push_costs_the_same_for_thousands_of_streams_that_never_read():
    """rev41 push finding 7 (p10): each push appended to each of 10,000 streams, 1.2 ms."""
    async def main() -> float:
        shards = FakeShards()
        watches = Watches("g", shards, shards)
        streams = [await opened(watches, Watch(None, "web", "hero"), 0) for _ in range(10_000)]
        await asyncio.wait_for(streams[-1][1].wait(), 5)
        pushed = decisions(2000)
        gc.collect()  # a collection over the 10,000 streams' tasks is not the push's cost
        gc.disable()
        try:
            started = time.perf_counter()
            watches.deliver(pushed)
            spent = (time.perf_counter() - started) / len(pushed)
        finally:
            gc.enable()
        for task, _ in streams:
            task.cancel()
        await asyncio.gather(*(task for task, _ in streams), return_exceptions=True)
        return spent

    assert asyncio.run(main()) < 50e-6  # a loop over the streams took 1,000 to 1,400 µs


def test_a_slow_stream_reads_in_order_and_ends_once_pushes_fell_out_of_its_backlog(
        monkeypatch):
    """Not skipping them unseen: on a channel watch a dropped push may be some customer's only
    change, so the caller is told how many it missed (RESOURCE_EXHAUSTED) and watches again."""
    monkeypatch.setattr(streams_module, "CHANNEL_WATCH_BACKLOG", 4)

    async def main() -> None:
        shards = FakeShards()
        watches = Watches("g", shards, shards)
        watch = Watch(None, "web", "hero")
        watches.deliver(decisions(3))  # before any stream: nobody's
        read = watches.follow(watch, lambda: asyncio.sleep(0))
        first = asyncio.ensure_future(read.__anext__())
        await asyncio.sleep(0.01)
        pushed = decisions(10)
        watches.deliver(pushed[:2])
        assert (await first).decision_id == "d0"
        for push in pushed[2:]:  # 8 more calls of one: as d7 comes, 5 past its call (d2-d6)
            watches.deliver([push])
        with pytest.raises(FellBehind, match="fell 6 pushes behind"):  # d1..d6 unread then
            await read.__anext__()
        assert watches.open == 0

    asyncio.run(main())


def test_a_watch_still_being_unregistered_keeps_its_place_in_the_gateways_bound(monkeypatch):
    monkeypatch.setattr(streams_module, "WATCH_STREAMS", 1)
    monkeypatch.setattr(streams_module, "UNWATCH_BACKOFF_S", (0.01, 0.01))

    async def main() -> None:
        shards = FakeShards()
        watches = Watches("g", shards, shards)
        a = await in_place(watches, Watch("a", "web", "hero"))
        shards.failing = 10 ** 6  # its unregistration keeps failing: the shard holds it
        await hang_up(a)
        refused, _ = await opened(watches, Watch("b", "web", "hero"))
        with pytest.raises(Busy, match="unregistering"):
            await asyncio.wait_for(refused, 5)
        shards.failing = 0
        await until(lambda: not watches._watched, 5, "the unregistration to go through")
        b = await in_place(watches, Watch("b", "web", "hero"))
        await hang_up(b)

    asyncio.run(main())


@pytest.mark.parametrize("backoff, retry_s", [((0.01, 0.01), 0.0), ((30.0, 30.0), 600.0)],
                         ids=["the last try", "a try before a long backoff"])
def test_a_stream_arriving_as_an_unregistration_fails_is_registered_at_once(monkeypatch,
                                                                           backoff, retry_s):
    """rev41 d-streams finding 1 (q1): a stream that came during the try the gateway then gave
    up after was never registered nor told anything; during another try, it waited out the
    backoff."""
    monkeypatch.setattr(streams_module, "UNWATCH_BACKOFF_S", backoff)
    monkeypatch.setattr(streams_module, "UNWATCH_RETRY_S", retry_s)

    async def main() -> None:
        shards, watches, watch, a = await one_watch()
        shards.failing = 1
        shards.gate.clear()  # A's unregistration is in flight ...
        a.cancel()
        await asyncio.sleep(0.01)
        b, b_ready = await opened(watches, watch)  # ... as B comes
        shards.gate.set()
        await asyncio.wait_for(b_ready.wait(), 5)
        assert shards.failing == 0 and shards.held == {tuple(watch)}
        b.cancel()
        await asyncio.gather(a, b, return_exceptions=True)
        assert shards.held == set() and not watches._watched

    asyncio.run(main())


def test_a_stream_joining_a_forgotten_customers_watch_waits_for_it_to_be_registered_again():
    """rev41 d-streams finding 2 (q2): `end` left the watch marked held, so a stream joining
    before the ended ones left was told in place at once, and nothing registered it again
    though the forget had dropped it on the shard."""
    async def main() -> None:
        shards, watches, watch, a = await one_watch()
        shards.held.discard(tuple(watch))  # the forget drops the customer's watches
        assert watches.end({"w"}, "forgotten") == 1
        b, b_ready = await opened(watches, watch, 0)  # in the same turn
        await asyncio.wait_for(b_ready.wait(), 5)
        assert shards.held == {tuple(watch)}
        with pytest.raises(streams_module.Ended):
            await a
        await hang_up(b)
        assert shards.held == set() and not watches._watched

    asyncio.run(main())


def test_a_registration_the_forget_overtook_is_made_again_for_the_streams_after_it():
    """A's registration lands on the shard, the forget drops it, and its reply comes after
    the gateway ended A: B, which joined since, is told ready only once it is made again."""
    class ReplyLate(FakeShards):
        def __init__(self) -> None:
            super().__init__()
            self.reply = asyncio.Event()

        async def _apply(self, key: tuple, active: bool) -> None:
            await super()._apply(key, active)
            await self.reply.wait()

    async def main() -> None:
        shards = ReplyLate()
        watches = Watches("g", shards, shards)
        watch = Watch("w", "web", "hero")
        a, a_ready = await opened(watches, watch)
        assert shards.held == {tuple(watch)} and not a_ready.is_set()
        shards.held.discard(tuple(watch))  # the forget
        watches.end({"w"}, "forgotten")
        b, b_ready = await opened(watches, watch)
        shards.reply.set()
        await asyncio.wait_for(b_ready.wait(), 5)
        assert shards.held == {tuple(watch)}
        with pytest.raises(streams_module.Ended):
            await a
        assert not a_ready.is_set()  # ended before it was told anything
        await hang_up(b)
        assert shards.held == set() and not watches._watched

    asyncio.run(main())
