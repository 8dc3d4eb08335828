"""A sink found Gone stays gone: its registrations that customers' homes and the journal still
hold are left out as they come back, so nothing pushes to it again (and drops it again)."""
from __future__ import annotations

from kairos.cluster.shard import watches
from tests.unit.shard.test_shard import T0, Clock, event, shard, watch


def test_a_customer_back_from_its_home_brings_no_watch_of_a_dead_sink(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=60.0)
    s.process([event("ana", "app_open", T0), watch("ana", "gw-dead", "web", "hero"),
               watch("ana", "gw-live", "web", "hero")])
    clock.now += 61
    assert s.passivate(clock.now) == 1  # her home holds both registrations
    s.drop_sink("gw-dead")
    _, pushes = s.process([event("ana", "page_view", clock.now, category="electronics")])
    assert "gw-dead" not in {p.sink for p in pushes}
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
