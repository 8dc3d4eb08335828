"""A forget through one gateway ends the customer's streams on every gateway (NOT_FOUND, the
forget's message): the customer's shard tells each sink that watched it, including the
streams an alias's anonymous id opened before its link; a forget that finds no watch tells
no gateway anything (two gateways on one in-process shard, pushes handed to their streams)."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.gateway.streams import FORGOTTEN, Ended, Watch, Watches
from kairos.cluster.identity import alias_key
from kairos.cluster.shard.watches import Unwatched
from kairos.cluster.transport.client import KairosClient

from tests.unit.gateway.test_watch_link import PushingBackend, follow
from tests.unit.shard.test_shard import T0


class TwoGateways(PushingBackend):
    """Hands each round's pushes to the gateway (`gateways`) of their sink; keeps them all."""

    gateways: dict[str, Watches] = {}

    def hand_over(self, pushes: list) -> None:
        for sink, gateway in self.gateways.items():
            pushed = [p.decision for p in pushes if p.sink == sink]
            self.delivered.setdefault(sink, []).extend(pushed)
            gateway.deliver(pushed)


def on_two_gateways(scenario) -> None:
    """`scenario(a, b, backend, tasks)`: gateways a and b, each with its own client, on one
    shard where "ana" and the alias cookie x's anonymous customer each have an event; the
    streams it puts in `tasks` leave (unregistering) while the clients are still there."""
    backend = TwoGateways()

    async def main() -> None:
        await backend.start_runtime(1, n_partitions=16)
        clients = [await KairosClient(backend).connect() for _ in "ab"]
        a, b = (Watches(sink, client, backend) for sink, client in zip("ab", clients))
        backend.gateways = {"a": a, "b": b}
        tasks: list[asyncio.Task] = []
        try:
            anon = await a.client.resolve_key(alias_key("cookie", "x"))
            await a.client.ingest(anon, "page_view", T0, {"category": "home"})
            await a.client.ingest("ana", "app_open", T0)
            await scenario(a, b, backend, tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for client in clients:
                await client.close()

    asyncio.run(asyncio.wait_for(main(), 60))


async def ended(task: asyncio.Task) -> Ended:
    with pytest.raises(Ended) as end:
        await asyncio.wait_for(asyncio.shield(task), 10)
    return end.value


def test_a_forget_through_one_gateway_ends_the_customers_streams_on_the_other():
    async def scenario(a, b, backend, tasks) -> None:
        anon = await a.client.resolve_key(alias_key("cookie", "x"))
        _, on_a = await follow(a, Watch("ana", "web", "hero"))
        _, on_b = await follow(b, Watch("ana", "web", "hero"))
        _, by_alias_on_b = await follow(b, Watch(anon, "web", "hero"))
        assert await a.client.link("cookie", "x", "ana")  # the alias's stream follows ana now
        got, other = await follow(b, Watch("bea", "web", "hero"))
        tasks += [on_a, on_b, by_alias_on_b, other]
        assert await a.client.forget("ana")  # as ForgetCustomer through a does
        a.end({"ana"}, FORGOTTEN)
        assert str(await ended(on_a)) == FORGOTTEN
        assert str(await ended(on_b)) == FORGOTTEN
        assert str(await ended(by_alias_on_b)) == FORGOTTEN
        assert not other.done()  # another customer's stream goes on
        await a.client.ingest("bea", "app_open", T0 + 1)
        for _ in range(100):
            await asyncio.sleep(0)
        assert got == ["bea"]
        assert [d for d in backend.delivered["b"] if isinstance(d, Unwatched)] == \
            [Unwatched("ana", tuple(sorted(["ana", anon])))]

    on_two_gateways(scenario)


def test_a_forget_that_finds_no_watches_tells_no_gateway():
    async def scenario(a, b, backend, tasks) -> None:
        _, on_b = await follow(b, Watch("bea", "web", "hero"))
        tasks.append(on_b)
        assert await a.client.forget("ana")
        assert await a.client.forget("ana") is False  # a retry finds nothing
        assert not [d for sink in "ab" for d in backend.delivered.get(sink, ())
                    if isinstance(d, Unwatched)]
        assert not on_b.done()

    on_two_gateways(scenario)
