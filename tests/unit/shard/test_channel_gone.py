"""A channel watch of a sink found Gone: a late or replayed registration is left out, and
dropping the sink again takes away any it has (the sink's Gone, found once more by a push)."""
from __future__ import annotations

from kairos.cluster.shard.watches import Watch
from tests.unit.shard.test_shard import T0, event, shard


def test_a_late_channel_registration_of_a_dead_sink_is_left_out(compiled):
    s = shard(compiled)
    s.drop_sink("gw-dead")
    s.watch_channel("gw-dead", "web", "hero")
    s.watch_channel("gw-live", "web", "hero")
    _, pushes = s.process([event("ana", "app_open", T0)])
    assert {p.sink for p in pushes} == {"gw-live"}
    assert s.watches.channel == {Watch("gw-live", "web", "hero")}


def test_dropping_a_sink_already_gone_drops_its_channel_watches(compiled):
    s = shard(compiled)
    s.drop_sink("gw-dead")
    s.watches.channel.add(Watch("gw-dead", "web", "hero"))  # as a shard before the check took
    s.drop_sink("gw-dead")
    assert s.watches.channel == set()
    assert s.process([event("ana", "app_open", T0)])[1] == []
