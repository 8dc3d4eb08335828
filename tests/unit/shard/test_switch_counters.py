"""A catalog switch starts a new engine: the totals of values it clipped and left unbounded
come along, as the metrics ignore a total that went down (the counter would stall)."""
from __future__ import annotations

from tests.unit.shard.test_shard import _catalog_v2, shard


def test_a_catalog_switch_keeps_the_value_counters(compiled):
    s = shard(compiled)
    s.engine.values_clipped, s.engine.values_unbounded = 3, 2
    s.commit(s.prepare(_catalog_v2()))
    assert s.catalog_version == "v2-test"
    assert (s.engine.values_clipped, s.engine.values_unbounded) == (3, 2)
