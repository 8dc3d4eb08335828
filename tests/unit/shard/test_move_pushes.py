"""Pushes around a partition move (sinks.py's `flush`): the source's pushes of the moving
customers land before the handoff completes, so none arrives after the new owner's; those a
slow sink still holds back past the bound are dropped (late, they would overwrite newer ones),
and other customers' pushes are left alone."""
from __future__ import annotations

import asyncio

from kairos.core.decision import Decision

from kairos.cluster.shard.sinks import Pushes

from tests.support.waiting import until


def decision(decision_id: str, customer: str = "ana") -> Decision:
    return Decision(decision_id, customer, "web", "hero", (decision_id,), "v1", 1)


class Sink:
    """Records what lands; a call carrying a decision in `slow` takes that many seconds."""

    def __init__(self, got: list[str], slow: dict[str, float]) -> None:
        self.got, self.slow = got, slow

    async def deliver(self, decisions: list[Decision]) -> None:
        await asyncio.sleep(max((self.slow.get(d.decision_id, 0.0) for d in decisions),
                                default=0.0))
        self.got.extend(d.decision_id for d in decisions)


async def nobody_gone(names: list[str]) -> None:
    pass


def shards(slow: dict[str, float]) -> tuple[list[str], Pushes, Pushes]:
    got: list[str] = []
    source = Pushes("a", lambda name: Sink(got, slow), nobody_gone)
    target = Pushes("b", lambda name: Sink(got, {}), nobody_gone)
    return got, source, target


def test_the_sources_pushes_of_a_moving_customer_land_before_the_new_owners():
    async def main() -> list[str]:
        got, source, target = shards({"a1": 0.2})
        source.push("gw", [decision("a1")])
        await asyncio.sleep(0.01)  # in flight, slow
        source.push("gw", [decision("a2")])  # waiting behind it
        assert await source.flush(lambda c: c == "ana") == []  # the freeze
        target.push("gw", [decision("b1")])  # the customer changes on its new owner
        await asyncio.sleep(0.3)
        return got
    assert asyncio.run(main()) == ["a1", "a2", "b1"]


def test_a_sink_slower_than_the_bound_has_the_moving_customers_waiting_pushes_dropped():
    async def main() -> tuple[list, list[str]]:
        got, source, target = shards({"a1": 0.3})
        source.push("gw", [decision("a1", "other")])
        await asyncio.sleep(0.01)
        source.push("gw", [decision("a2"), decision("o2", "other")])
        dropped = await source.flush(lambda c: c == "ana", within_s=0.05)
        target.push("gw", [decision("b1")])
        # o2 went with a2, had a2 not been dropped (a sleep of 0.4 s left a1's slow call 0.1 s:
        # one late by 0.3 s had landed none but b1)
        await until(lambda: "o2" in got, 10, "the other customer's push landed")
        return dropped, got
    dropped, got = asyncio.run(main())
    # a2 would have overwritten b1
    assert dropped == [("ana", "web", "hero")] and got == ["b1", "a1", "o2"]


def test_a_flush_waits_for_the_moving_customers_calls_not_for_a_busy_sink_to_drain():
    async def main() -> float:
        got, source, _ = shards({f"o{i}": 0.05 for i in range(20)})
        source.push("gw", [decision("a1"), decision("o0", "other")])
        loop = asyncio.get_running_loop()

        async def busy() -> None:  # other customers' changes keep the sink's calls coming
            for i in range(1, 20):
                source.push("gw", [decision(f"o{i}", "other")])
                await asyncio.sleep(0.02)
        keep_busy = asyncio.create_task(busy())
        started = loop.time()
        await source.flush(lambda c: c == "ana")
        took = loop.time() - started
        assert "a1" in got
        await keep_busy
        return took
    assert asyncio.run(main()) < 0.5
