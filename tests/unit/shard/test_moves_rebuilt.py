"""A shard rebuilt in place from the store (host.py, after the store failed under it) keeps
the failed one's moves as they were: a partition it adopted and nobody confirmed is still
arriving, so its timers wait for the confirmation (or for the move to be undone, when the
source fires them)."""
from __future__ import annotations

from kairos.cluster.shard import timers
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.store import StoreUnavailable

from tests.support.waiting import until

from .test_shard import N_PARTITIONS, T0, event, p_of, watch
from .test_shard_host import run


def test_a_target_rebuilt_in_place_still_holds_an_unconfirmed_partition_as_arriving(compiled):
    p = p_of("ana")
    store = MemoryStore(shared=True)

    async def test(host):
        await host.run(Shard.release, [p], 0)  # p is the source's, as before a move here
        source = Shard("a", compiled, {p: 0}, N_PARTITIONS, store=store)
        source.process([event("ana", "app_open", T0)])
        await host.run(Shard.adopt, source.freeze([p], 1), 1)
        failed = host.shard
        host._fail(StoreUnavailable("the store went away"))
        await until(lambda: host.shard not in (None, failed), 10, "the host to rebuild")
        assert host.shard.ownership.arriving == {p: 1}
        await host.run(Shard.release, [p], 1)  # the move undone: the source fires its timers
        source.thaw([p], 1)
        assert p not in host.shard.ownership.arriving and p in source.owned
    run(compiled, store, test)


def test_a_shard_rebuilt_in_place_remembers_the_sinks_found_gone(compiled):
    """Its journal still holds a dead sink's registration: the rebuilt shard leaves it out."""
    async def test(host):
        await host.handle("a", 0, [event("ana", "app_open", T0),
                                   watch("ana", "gw-dead", "web", "hero"),
                                   watch("ana", "gw-live", "web", "hero")], [0, 0, 0])
        await host.run(Shard.drop_sink, "gw-dead")
        failed = host.shard
        host._fail(StoreUnavailable("the store went away"))
        await until(lambda: host.shard not in (None, failed), 10, "the host to rebuild")
        assert "gw-dead" in host.shard.watches.gone
        assert [w.sink for w in host.shard.watches.by_customer["ana"]] == ["gw-live"]
    run(compiled, MemoryStore(), test)


def test_a_target_rebuilt_in_place_keeps_an_arriving_partitions_sleepers_parked(compiled):
    """However many of them are overdue, another partition's sleeper wakes (timers.py)."""
    p = p_of("ana")
    q = (p + 1) % N_PARTITIONS
    store = MemoryStore(shared=True)
    overdue = {f"ana-{i}": T0 - 100 for i in range(2 * timers.WAKE_LIMIT)}

    async def test(host):
        await host.run(Shard.release, [p], 0)
        source = Shard("a", compiled, {p: 0}, N_PARTITIONS, store=store)
        source.residency.take_sleepers(p, overdue)
        await host.run(Shard.adopt, source.freeze([p], 1), 1)
        failed = host.shard
        host._fail(StoreUnavailable("the store went away"))
        await until(lambda: host.shard not in (None, failed), 10, "the host to rebuild")
        assert host.shard.residency.sleepers(p) == overdue
        host.shard.residency.take_sleepers(q, {"bob": T0})
        await host.run(Shard.tick)
        assert host.shard.residency.sleepers(q) == {}
        assert host.shard.residency.sleepers(p) == overdue
    run(compiled, store, test)
