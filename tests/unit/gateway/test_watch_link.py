"""A gateway's watch streams across a link: a stream that follows an alias's anonymous customer
goes on once the alias is linked to a customer, and leaving takes nothing from a stream that
follows the customer itself (in-process backend, pushes handed to the gateway's streams)."""
from __future__ import annotations

import asyncio

from kairos.cluster.gateway.streams import Watch, Watches
from kairos.cluster.identity import alias_key
from kairos.cluster.transport.client import KairosClient

from tests.support.local_backend import LocalBackend
from tests.support.waiting import until
from tests.unit.shard.test_shard import T0, journey


class PushingBackend(LocalBackend):
    """Hands each round's pushes for the sink "g" to `gateway`."""

    gateway: Watches | None = None

    async def send(self, name, session, seq, requests, routed):
        await self.hop()
        while self._turns.get((name, session), 0) != seq:
            await asyncio.sleep(0)
        self._turns[(name, session)] = seq + 1
        replies, pushes = self.shards[name].process(requests, routed)
        self.hand_over(pushes)
        return replies

    def hand_over(self, pushes: list) -> None:
        self.gateway.deliver([p.decision for p in pushes if p.sink == "g"])


async def follow(watches: Watches, watch: Watch) -> tuple[list[str], asyncio.Task]:
    """A stream on `watch`, once its watch is in place: the customer ids it is pushed."""
    got: list[str] = []
    ready = asyncio.Event()

    async def registered() -> None:
        ready.set()

    async def consume() -> None:
        async for decision in watches.follow(watch, registered):
            got.append(decision.customer_id)

    task = asyncio.ensure_future(consume())
    await ready.wait()
    return got, task


def on_one_shard(scenario) -> None:
    """`scenario(backend, client, watches, anon, tasks)` on a runtime of one shard, where the
    alias cookie x's anonymous customer `anon` and "ana" each have an event; the streams it
    puts in `tasks` leave (unregistering) while the client is still there."""
    backend = PushingBackend()

    async def main() -> None:
        await backend.start_runtime(1, n_partitions=16)
        client = await KairosClient(backend).connect()
        watches = backend.gateway = Watches("g", client, backend)
        tasks: list[asyncio.Task] = []
        try:
            anon = await client.resolve_key(alias_key("cookie", "x"))
            await client.ingest(anon, "page_view", T0, {"category": "home"})
            await client.ingest("ana", "app_open", T0)
            await scenario(backend, client, watches, anon, tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_stream_by_an_alias_follows_its_link_and_leaving_keeps_the_customers_watch():
    async def scenario(backend, client, watches, anon, tasks) -> None:
        by_alias, alias_task = await follow(watches, Watch(anon, "web", "hero"))
        by_id, id_task = await follow(watches, Watch("ana", "web", "hero"))
        tasks += [alias_task, id_task]
        assert await client.link("cookie", "x", "ana")

        async def pushed(n_before: int, seed: int, t0: float) -> None:
            for e in journey("ana", 30, seed=seed, t0=t0):
                await client.ingest("ana", e.event_type, e.time, e.attributes)
            await until(lambda: len(by_id) > n_before, 10, "a push for ana")

        n = len(by_id)
        await pushed(n, 5, T0 + 600)
        assert by_alias[n:] == by_id[n:] and set(by_id[n:]) == {"ana"}
        alias_task.cancel()  # it ends once its watch is unregistered
        await asyncio.gather(alias_task, return_exceptions=True)
        assert list(watches._watched) == [Watch("ana", "web", "hero")]
        [shard] = [s for s in backend.shards.values() if s is not None]
        assert list(shard.watches.by_customer) == ["ana"]
        await pushed(len(by_id), 6, T0 + 7200)  # the customer's stream still gets them

    on_one_shard(scenario)


def test_a_stream_by_an_alias_opened_after_its_link_is_pushed_and_leaves_its_own_mark():
    async def scenario(backend, client, watches, anon, tasks) -> None:
        assert await client.link("cookie", "x", "ana")
        by_id, id_task = await follow(watches, Watch("ana", "web", "hero"))
        by_alias, alias_task = await follow(watches, Watch(anon, "web", "hero"))
        tasks += [alias_task, id_task]
        [shard] = [s for s in backend.shards.values() if s is not None]
        [ids] = shard.watches.by_customer["ana"].values()
        assert sorted(ids) == sorted(["ana", anon])
        for e in journey("ana", 30, seed=7, t0=T0 + 600):
            await client.ingest("ana", e.event_type, e.time, e.attributes)
        await until(lambda: by_alias and by_id, 10, "a push to both streams")
        alias_task.cancel()
        await asyncio.gather(alias_task, return_exceptions=True)
        assert list(shard.watches.by_customer["ana"].values()) == [["ana"]]

    on_one_shard(scenario)
