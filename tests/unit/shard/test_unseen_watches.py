"""A watch of a customer nobody has seen yet (it waits for the customer's first event) goes
where its partition goes, and nowhere else: a move hands it to the new owner, which the
stream's unregistration reaches, and the old owner forgets it; an undone move leaves it with
the source alone; a catalog switch keeps it while the catalog still has its view."""
from __future__ import annotations

import yaml

from kairos.cluster.storage.memory_store import MemoryStore
from kairos.core.catalog import default_catalog_text
from tests.unit.shard.test_shard import T0, Clock, event, p_of, shard, watch

IDS = [f"new{i}" for i in range(40)]
PARTS = sorted({p_of(c) for c in IDS})


def sinks_of(pushes) -> list[tuple[str, str]]:
    return sorted((p.sink, p.decision.customer_id) for p in pushes)


def two(compiled):
    clock, store = Clock(), MemoryStore(shared=True)
    a = shard(compiled, "a", clock=clock, store=store)
    b = shard(compiled, "b", partitions=[], clock=clock, store=store)
    a.process([watch(c, "gw-1", "web", "hero") for c in IDS])
    return a, b


def test_a_watch_of_a_customer_not_seen_yet_moves_with_its_partition(compiled):
    a, b = two(compiled)
    b.adopt(a.freeze(PARTS, 2), 2)
    a.release(PARTS, 2)
    assert a.watches.by_customer == {} and sorted(b.watches.by_customer) == sorted(IDS)
    _, pushes = b.process([event("new0", "app_open", T0)])
    assert sinks_of(pushes) == [("gw-1", "new0")]
    # the stream closes: its unregistration goes to the new owner, which holds the watch
    b.process([watch(c, "gw-1", "web", "hero", active=False) for c in IDS])
    assert b.watches.by_customer == {}
    a.adopt(b.freeze(PARTS, 3), 3)  # and back: nothing of the closed stream comes with it
    b.release(PARTS, 3)
    assert a.process([event(c, "app_open", T0) for c in IDS[1:4]])[1] == []


def test_an_undone_move_leaves_the_watch_with_the_source_alone(compiled):
    a, b = two(compiled)
    b.adopt(a.freeze(PARTS, 2), 2)
    b.release(PARTS, 2)
    a.thaw(PARTS, 2)
    assert b.watches.by_customer == {} and sorted(a.watches.by_customer) == sorted(IDS)
    assert sinks_of(a.process([event("new0", "app_open", T0)])[1]) == [("gw-1", "new0")]


def test_a_catalog_switch_keeps_the_watches_its_catalog_still_has(compiled):
    s = shard(compiled)
    s.process([watch("new0", "gw-1", "web", "hero"), watch("new1", "gw-1", "web", "account"),
               watch("old0", "gw-1", "web", "account"), event("old0", "app_open", T0)])
    doc = yaml.safe_load(default_catalog_text())
    doc["version"] = "v2-no-account"
    del doc["channels"]["web"]["placements"]["account"]
    for action in doc["actions"]:
        web = action["channels"].get("web", {})
        if "account" in web.get("placements", ()):
            web["placements"] = [p for p in web["placements"] if p != "account"] or ["hero"]
    s.commit(s.prepare(yaml.safe_dump(doc, sort_keys=False)))
    assert sorted(s.watches.by_customer) == ["new0"]
    _, pushes = s.process([event(c, "app_open", T0 + 1) for c in ("new0", "new1", "old0")])
    assert sinks_of(pushes) == [("gw-1", "new0")]
