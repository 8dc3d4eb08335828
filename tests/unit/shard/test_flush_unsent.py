"""A freeze parks its partitions, lets their customers' pushes land (sinks.py's `flush`) and
only then hands them over (actor.py): a push the flush drops is handed over as not shown, so
the new owner (or the source, thawed) pushes the view at its next decision for it, rather
than leave the stream on an older action. The flush finds the calls it waits for once, and the
release forgets the partitions' watches without a walk over every watch."""
from __future__ import annotations

import asyncio
from typing import Any

from kairos.core.decision import Decision

from kairos.cluster.shard.actor import ShardActor
from kairos.cluster.shard.sinks import Pushes
from kairos.cluster.storage import blocks
from kairos.cluster.storage.memory_store import MemoryStore
from tests.unit.shard.test_dead_sinks import _Walks
from tests.unit.shard.test_shard import N_PARTITIONS, T0, Clock, event, p_of, shard, watch

Actor = ShardActor.__ray_metadata__.modified_class.__ray_actor_class__


class Host:
    """ShardHost's `run`, on one Shard, without a data path; each call is recorded."""

    def __init__(self, shard_: Any, calls: list[str]) -> None:
        self.shard, self.calls, self.n_partitions = shard_, calls, N_PARTITIONS

    async def run(self, method: Any, *args: Any) -> Any:
        self.calls.append(method.__name__)
        return method(self.shard, *args)

    async def settled(self) -> None:
        self.calls.append("settled")


def actor(host: Host, pushes: Any) -> Any:
    a = object.__new__(Actor)
    a.host, a.pushes = host, pushes
    return a


class Hung:
    """A sink whose calls carrying `hung` never end; the others land in `got`."""

    def __init__(self, got: list[str]) -> None:
        self.got = got

    async def deliver(self, decisions: list[Decision]) -> None:
        if any(d.customer_id == "hung" for d in decisions):
            await asyncio.sleep(3600)
        self.got.extend(d.customer_id for d in decisions)


class Quick:
    """Pushes whose flush waits 50 ms, not FLUSH_S."""

    def __init__(self, pushes: Pushes) -> None:
        self.pushes = pushes

    async def flush(self, moving: Any) -> list:
        return await self.pushes.flush(moving, within_s=0.05)


async def nobody_gone(names: list[str]) -> None:
    pass


def frozen_with_a_dropped_push(compiled) -> tuple[Any, Any, bytes, list[str]]:
    """A pushed ana's best action, then froze her partition while the sink hung: her push
    was still waiting behind the hung call, so the flush dropped it."""
    store, clock = MemoryStore(shared=True), Clock()
    a = shard(compiled, "a", clock=clock, store=store)
    b = shard(compiled, "b", partitions=[], clock=clock, store=store)
    _, pushes = a.process([event("ana", "app_open", T0), watch("ana", "gw-1", "web", "hero")])
    assert [p.decision.customer_id for p in pushes] == ["ana"]
    got: list[str] = []

    async def main() -> bytes:
        sinks = Pushes("a", lambda name: Hung(got), nobody_gone)
        sinks.push("gw-1", [Decision("h", "hung", "web", "hero", ("x",), "v1", 1)])
        await asyncio.sleep(0)
        sinks.push("gw-1", [p.decision for p in pushes])
        return await actor(Host(a, []), Quick(sinks)).freeze([p_of("ana")], 2)
    payload = asyncio.run(main())
    return a, b, payload, got


def test_a_push_the_flush_dropped_is_handed_over_unshown_and_pushed_by_the_new_owner(compiled):
    a, b, payload, got = frozen_with_a_dropped_push(compiled)
    assert got == []  # never sent
    assert all("shown" not in extra for extra in blocks.unpack(payload)["block"]["extras"])
    b.adopt(payload, 2)
    a.release([p_of("ana")], 2)
    _, pushes = b.process([event("ana", "app_open", T0 + 1)])  # the same best action
    assert [(p.sink, p.decision.customer_id) for p in pushes] == [("gw-1", "ana")]


def test_a_push_the_flush_dropped_is_pushed_by_the_source_thawed(compiled):
    a, _, _, _ = frozen_with_a_dropped_push(compiled)
    a.thaw([p_of("ana")], 3)
    _, pushes = a.process([event("ana", "app_open", T0 + 1)])
    assert [(p.sink, p.decision.customer_id) for p in pushes] == [("gw-1", "ana")]


def test_a_freeze_flushes_once_the_rounds_before_are_answered_and_exports_after_it(compiled):
    calls: list[str] = []
    flushed = asyncio.Event()

    class Stub:
        async def flush(self, moving: Any) -> list:
            calls.append("flush")
            assert moving("ana") and not moving(next(
                c for c in (f"c{i}" for i in range(100)) if p_of(c) != p_of("ana")))
            await flushed.wait()
            return []

    async def main() -> bytes:
        freeze = asyncio.create_task(
            actor(Host(shard(compiled), calls), Stub()).freeze([p_of("ana")], 2))
        await asyncio.sleep(0.05)
        assert not freeze.done() and calls == ["park", "settled", "flush"]
        flushed.set()
        return await freeze
    assert blocks.unpack(asyncio.run(main()))["partitions"] == [p_of("ana")]
    assert calls == ["park", "settled", "flush", "export"]


def test_a_flush_looks_through_the_queued_pushes_once_however_often_calls_end():
    """A hung sink with many pushes waiting, busy sinks beside it: each of their calls'
    ends used to have the flush look through every waiting push again."""
    looked = [0]

    def moving(customer_id: str) -> bool:
        looked[0] += 1
        return customer_id == "ana"

    class Fast:
        async def deliver(self, decisions: list[Decision]) -> None:
            await asyncio.sleep(0.001)

    async def main() -> list:
        sinks = Pushes("a", lambda name: Hung([]) if name == "hung" else Fast(), nobody_gone)
        sinks.push("hung", [Decision("h", "hung", "web", "hero", ("x",), "v1", 1)])
        await asyncio.sleep(0)
        sinks.push("hung", [Decision(f"o{i}", f"o{i}", "web", "hero", ("x",), "v1", 1)
                            for i in range(2000)]
                   + [Decision("a", "ana", "web", "hero", ("x",), "v1", 1)])
        stop = asyncio.Event()

        async def busy(k: int) -> None:
            while not stop.is_set():
                sinks.push(f"fast{k}", [Decision("f", f"f{k}", "web", "hero", ("x",), "v1", 1)])
                await asyncio.sleep(0.002)
        tasks = [asyncio.create_task(busy(k)) for k in range(5)]
        await asyncio.sleep(0.01)
        dropped = await sinks.flush(moving, within_s=0.3)
        stop.set()
        await asyncio.gather(*tasks)
        return dropped
    assert asyncio.run(main()) == [("ana", "web", "hero")]
    assert looked[0] <= 2001 + 10  # each waiting push once (and the busy sinks' few)


def test_a_release_forgets_the_partitions_watches_without_a_walk_over_every_watch(compiled):
    s = shard(compiled)
    p = p_of("zed")
    others = [c for c in (f"c{i}" for i in range(200)) if p_of(c) != p][:50]
    s.process([watch(c, "gw-1", "web", "hero") for c in ["zed", *others]])
    s.freeze([p], 2)
    s.watches.by_customer = _Walks(s.watches.by_customer)
    s.release([p], 2)
    assert s.watches.by_customer.walks == 0
    assert "zed" not in s.watches.by_customer and len(s.watches.by_customer) == 50
    assert s.watches.sinks() == {"gw-1"}
