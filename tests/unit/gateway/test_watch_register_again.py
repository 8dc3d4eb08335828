"""A watch registered again after a compile (`register_again`) ends its reading streams only
if the shards refuse it (its view left the catalog): a shard's blip (Unavailable) ended every
stream on the watch; now the registration is tried again, backing off, and the streams go on
(review rev44 d-streams2 1, probe_transient)."""
from __future__ import annotations

import asyncio

import pytest

from kairos.core.errors import InputError
from kairos.cluster.gateway import streams as streams_module
from kairos.cluster.gateway.streams import Ended, Watch, Watches
from kairos.cluster.transport.backend import Unavailable

from tests.support.waiting import until
from tests.unit.gateway.test_watch_settling import FakeShards, decisions, hang_up


async def reading_stream(watches: Watches, watch: Watch, got: list) -> asyncio.Task:
    async def consume() -> None:
        async for decision in watches.follow(watch, lambda: asyncio.sleep(0)):
            got.append(decision.decision_id)

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.01)
    watches.deliver(decisions(1))
    await asyncio.sleep(0.01)
    assert got == ["d0"]
    return task


def failing_once(shards: FakeShards, exc: Exception) -> list[int]:
    """Have the shards' next registration fail with `exc`; the count of calls made."""
    calls, held = [0], shards.watch

    async def watch(*args, **kwargs) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise exc
        await held(*args, **kwargs)
    shards.watch = watch
    return calls


@pytest.mark.parametrize("blip", [Unavailable("shard restarting"), TimeoutError()],
                         ids=["unavailable", "timeout"])
def test_a_blip_as_a_watch_is_registered_again_keeps_its_streams(monkeypatch, blip):
    monkeypatch.setattr(streams_module, "UNWATCH_BACKOFF_S", (0.02, 0.05))

    async def main() -> None:
        shards = FakeShards()
        watches = Watches("g", shards, shards)
        watch = Watch("c0", "web", "hero")
        got: list[str] = []
        task = await reading_stream(watches, watch, got)
        calls = failing_once(shards, blip)
        watches.register_again()  # as refresh_catalog does after every compile
        await until(lambda: calls[0] == 2 and watches._watched[watch].held, 5,
                    "the registration to be tried again")
        assert not task.done() and watches.open == 1
        watches.deliver(decisions(1))  # c0's next change
        await asyncio.sleep(0.01)
        assert got == ["d0", "d0"]
        await hang_up(task)

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_refusal_as_a_watch_is_registered_again_still_ends_its_streams():
    async def main() -> None:
        shards = FakeShards()
        watches = Watches("g", shards, shards)
        task = await reading_stream(watches, Watch("c0", "web", "hero"), [])
        failing_once(shards, InputError("placement", "not in the catalog"))
        watches.register_again()
        with pytest.raises(Ended, match="web/hero.*watch again"):
            await asyncio.wait_for(task, 5)
        assert watches.open == 0

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_registration_again_given_up_ends_the_streams(monkeypatch):
    monkeypatch.setattr(streams_module, "UNWATCH_BACKOFF_S", (0.01, 0.01))
    monkeypatch.setattr(streams_module, "UNWATCH_RETRY_S", 0.05)

    async def main() -> None:
        shards = FakeShards()
        watches = Watches("g", shards, shards)
        task = await reading_stream(watches, Watch("c0", "web", "hero"), [])

        async def down(*args, **kwargs) -> None:
            raise Unavailable("shard gone")
        shards.watch = down
        watches.register_again()
        with pytest.raises(Unavailable):
            await asyncio.wait_for(task, 5)
        await until(lambda: not watches._watched, 5, "the watch to be let go")

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_stream_opened_while_a_registration_again_is_retried_fails_at_the_next_try(
        monkeypatch):
    """It waited for the watch to be in place, silently, until the shard answered or the
    retries were given up (KAIROS_UNWATCH_RETRY_S, 10 minutes) (review rev44 d-streams3 1);
    the streams reading go on."""
    monkeypatch.setattr(streams_module, "UNWATCH_BACKOFF_S", (0.2, 0.2))

    async def main() -> None:
        shards = FakeShards()
        watches = Watches("g", shards, shards)
        watch = Watch("c0", "web", "hero")
        reading = await reading_stream(watches, watch, [])

        async def down(*args, **kwargs) -> None:
            raise Unavailable("shard down")
        shards.watch = down
        watches.register_again()
        await asyncio.sleep(0.05)

        async def newcomer() -> None:
            async for _ in watches.follow(watch, lambda: asyncio.sleep(0)):
                pass
        with pytest.raises(Unavailable, match="shard down"):
            await asyncio.wait_for(newcomer(), 2)
        assert not reading.done()
        await hang_up(reading)

    asyncio.run(asyncio.wait_for(main(), 20))
