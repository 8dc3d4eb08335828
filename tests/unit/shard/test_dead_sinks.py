"""A sink found Gone stays gone: its registrations that customers' homes and the journal still
hold are left out as they come back, so nothing pushes to it again (and drops it again)."""
from __future__ import annotations

from kairos.cluster.shard import watches
from kairos.cluster.storage.memory_store import MemoryStore
from tests.unit.shard.test_shard import (N_PARTITIONS, T0, Clock, event, p_of, shard,
                                         watch)


def test_a_customer_back_from_its_home_brings_no_watch_of_a_dead_sink(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=60.0)
    s.process([event("ana", "app_open", T0), watch("ana", "gw-dead", "web", "hero"),
               watch("ana", "gw-live", "web", "hero")])
    clock.now += 61
    s.watches.shown.pop("ana")  # so that her best action, unchanged, is pushed once back
    assert s.passivate(clock.now) == 1  # her home holds both registrations
    s.drop_sink("gw-dead")
    _, pushes = s.process([event("ana", "page_view", clock.now, category="electronics")])
    assert {p.sink for p in pushes} == {"gw-live"}
    assert [w.sink for w in s.watches.by_customer["ana"]] == ["gw-live"]


def test_a_late_registration_of_a_dead_sink_is_left_out(compiled):
    s = shard(compiled)
    s.drop_sink("gw-dead")
    s.process([event("ana", "app_open", T0), watch("ana", "gw-dead", "web", "hero"),
               watch("bob", "gw-dead", "web", "hero")])
    assert s.watches.by_customer == {}
    assert s.process([event("ana", "app_open", T0 + 1)])[1] == []


def test_the_dead_sinks_remembered_are_bounded(compiled):
    s = shard(compiled)
    for i in range(watches.GONE_KEPT + 1):
        s.drop_sink(f"gw-{i}")
    assert len(s.watches.gone) == watches.GONE_KEPT and "gw-0" not in s.watches.gone


def test_the_sinks_found_gone_ride_in_a_handoff(compiled):
    """ana's home (shared store) still names the dead sink; her partition's new owner, told
    by the handoff, leaves that registration out when she comes back."""
    clock, store = Clock(), MemoryStore(shared=True)
    a = shard(compiled, "a", clock=clock, store=store, idle_s=60.0)
    p = p_of("ana")
    b = shard(compiled, "b", partitions=[x for x in range(N_PARTITIONS) if x != p],
              clock=clock, store=store)
    a.process([event("ana", "app_open", T0), watch("ana", "gw-dead", "web", "hero"),
               watch("ana", "gw-live", "web", "hero")])
    clock.now += 61
    assert a.passivate(clock.now) == 1
    a.drop_sink("gw-dead")
    b.adopt(a.freeze([p], 2), 2)
    assert "gw-dead" in b.watches.gone
    b.process([event("ana", "app_open", clock.now)], routed=[2])
    assert [w.sink for w in b.watches.by_customer["ana"]] == ["gw-live"]


class _Walks(dict):
    """A watch table that counts the walks over it."""

    walks = 0

    def __iter__(self):
        self.walks += 1
        return super().__iter__()

    def values(self):
        self.walks += 1
        return super().values()


def test_an_adopt_walks_no_watches_for_the_sinks_already_gone_here(compiled):
    """Every handoff names the source's dead sinks: those already dropped here cost no walk
    over every watched customer (one per adopt, for good, once the source knew any)."""
    store = MemoryStore(shared=True)
    p = p_of("ana")
    a = shard(compiled, "a", partitions=[p], store=store)
    b = shard(compiled, "b", partitions=[x for x in range(N_PARTITIONS) if x != p],
              store=store)
    a.drop_sink("gw-dead")
    b.drop_sink("gw-dead")
    b.process([watch("bob", "gw-live", "web", "hero")])
    b.watches.by_customer = _Walks(b.watches.by_customer)
    b.adopt(a.freeze([p], 2), 2)
    assert b.watches.by_customer.walks == 0
    assert list(b.watches.gone) == ["gw-dead"]
    b.drop_sink("gw-new")  # a sink not gone yet is walked for
    assert b.watches.by_customer.walks == 1


def test_the_sinks_the_watches_name_are_counted_not_walked_for(compiled):
    """The probe's list of sinks (every PROBE_S) costs no walk over the watched customers,
    and follows registrations, unregistrations, passivations, returns and dead sinks."""
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=60.0)
    s.process([event("ana", "app_open", T0), watch("ana", "gw-1", "web", "hero"),
               watch("ana", "gw-2", "web", "hero"), watch("bob", "gw-2", "web", "hero"),
               watch("bob", "gw-3", "web", "hero")])
    s.watches.by_customer = _Walks(s.watches.by_customer)

    def named() -> set[str]:
        walks = s.watches.by_customer.walks
        sinks = s.watched_sinks()
        assert s.watches.by_customer.walks == walks
        return sinks

    assert named() == {"gw-1", "gw-2", "gw-3"}
    s.process([watch("bob", "gw-3", "web", "hero", active=False)])
    assert named() == {"gw-1", "gw-2"}
    clock.now += 61
    assert s.passivate(clock.now) == 1  # ana's watches go with her home
    assert named() == {"gw-2"}
    s.process([event("ana", "app_open", clock.now)])
    assert named() == {"gw-1", "gw-2"}
    s.drop_sink("gw-2")
    assert named() == {"gw-1"}
    s.process([watch("zed", "gw-9", "web", "hero")])  # zed not seen yet
    assert named() == {"gw-1", "gw-9"}
    s.freeze([p_of("zed")], 2)
    s.release([p_of("zed")], 2)  # the watches of its customers not seen yet go
    assert p_of("zed") != p_of("ana") and named() == {"gw-1"}
