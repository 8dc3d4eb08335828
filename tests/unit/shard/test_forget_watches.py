"""ForgetCustomer drops the id's watches however the shard holds the customer (in memory,
passivated, or not seen yet): a customer re-created under the id gets no push from a watch
registered before the forget."""
from __future__ import annotations

import pytest

from tests.unit.shard.test_shard import T0, Clock, event, forget, shard, watch


@pytest.mark.parametrize("held", ["resident", "passivated", "unseen"])
def test_a_forget_drops_the_ids_watches(compiled, held):
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=60.0)
    if held != "unseen":
        s.process([event("zed", "app_open", T0)])
    s.process([watch("zed", "gw-1", "web", "hero")])
    if held == "passivated":
        clock.now += 61
        assert s.passivate(clock.now) == 1
    s.process([forget("zed")])
    assert "zed" not in s.watches.by_customer and "gw-1" not in s.watches.sinks()
    assert s.process([event("zed", "app_open", T0 + 10)])[1] == []
