"""The watches of customers not seen yet that a handoff carries come from another process:
an adopt checks them before it takes anything in, so a malformed payload leaves the adopter
as it was (a ValueError, and the move is undone), never half adopted."""
from __future__ import annotations

import pytest

from kairos.cluster.shard.watches import checked_unseen
from kairos.cluster.storage import blocks
from kairos.cluster.storage.memory_store import MemoryStore
from tests.unit.shard.test_shard import T0, Clock, event, p_of, shard, watch


def test_a_malformed_handoff_of_unseen_watches_is_refused_before_anything_is_adopted(compiled):
    clock, store = Clock(), MemoryStore(shared=True)
    a = shard(compiled, "a", clock=clock, store=store)
    b = shard(compiled, "b", partitions=[], clock=clock, store=store)
    p = p_of("zed")
    ana = next(f"ana{i}" for i in range(1000) if p_of(f"ana{i}") == p)
    a.process([event(ana, "app_open", T0), watch("zed", "gw-1", "web", "hero")])
    payload = blocks.unpack(a.freeze([p], 2))
    payload["watches"] = {"zed": [["gw-1", "web"]]}
    with pytest.raises(ValueError):
        b.adopt(blocks.pack(payload), 2)
    assert p not in b.owned and ana not in b.engine.table


@pytest.mark.parametrize("value", [[], {"zed": "gw-1"}, {"zed": [[1, "web", None, "zed"]]},
                                   {"zed": [["gw-1", "web", 3, "zed"]]},
                                   {"zed": [["gw-1", "web", None, "zed", "x"]]}])
def test_checked_unseen_refuses_what_is_not_registrations(value):
    with pytest.raises(ValueError):
        checked_unseen(value)


def test_checked_unseen_takes_registrations_with_or_without_their_id():
    value = {"zed": [["gw-1", "web", None], ["gw-1", "web", "hero", "anon-1"]]}
    assert checked_unseen(value) == value
