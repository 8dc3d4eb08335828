"""A link folds an alias's anonymous customer into the customer: what was pushed to the
anonymous id's streams does not count as pushed to the customer's, and a registration of a
block older than registrations' ids stays the anonymous id's (residency.py's fold,
watches.folded)."""
from __future__ import annotations

from kairos.cluster.identity import anonymous_id, link_id
from kairos.cluster.protocol import Link, Ok
from kairos.cluster.shard.watches import Pushed
from kairos.cluster.storage import blocks
from tests.unit.shard.test_shard import T0, event, merge, p_of, shard, take, watch
from tests.unit.shard.test_sleepers import pushed

KEY = "cookie:w1"
ANON = anonymous_id(KEY)


def fold(s, old_block: bool = False) -> list:
    """KairosClient.link's steps on one shard, and what the fold pushed; `old_block`: the
    anonymous customer's block as a shard from before registrations' ids wrote it."""
    link = link_id(KEY, "ana")
    assert s.process([Link(partition=p_of(KEY), key=KEY, customer_id="ana")])[0] == [Ok()]
    taken, = s.process([take(ANON, link, "ana")])[0]
    state = taken.value
    if old_block:
        block = blocks.unpack(state)
        for extra in block["extras"]:
            extra["watches"] = [w[:3] for w in extra["watches"]]
        state = blocks.pack(block)
    return s.process([merge("ana", link, KEY, state)])[1]


def test_what_was_pushed_to_a_folded_anonymous_customers_streams_is_pushed_to_hers(compiled):
    s = shard(compiled)
    s.process([event(ANON, "app_open", T0), watch(ANON, "gw-2", "web", "hero")])
    s.process([watch("ana", "gw-1", "web", "hero")])  # not seen yet: nothing pushed to her
    assert s.watches.shown[ANON]  # what gw-2 was pushed
    assert sorted(p[0] for p in pushed(fold(s))) == ["gw-1", "gw-2"]
    assert list(s.watches.extra("ana")) == ["watches", "shown"]  # whose it is goes unsaid


def test_a_folded_old_blocks_registration_stays_the_anonymous_ids(compiled):
    """Its pushes name the anonymous id (the sink hands them to its streams), and the
    customer's own unregistration leaves it."""
    s = shard(compiled)
    s.process([event(ANON, "app_open", T0), watch(ANON, "gw", "web", "hero"),
               event("ana", "app_open", T0), watch("ana", "gw", "web", "hero")])
    fold(s, old_block=True)
    s.watches.shown.clear()  # so that her unchanged best action is pushed again
    _, pushes = s.process([event("ana", "app_open", T0 + 1)])
    assert [type(p.decision) for p in pushes] == [Pushed] and pushes[0].decision.also == (ANON,)
    s.process([watch("ana", "gw", "web", "hero", active=False)])
    assert list(s.watches.by_customer["ana"].values()) == [[ANON]]


def test_a_block_that_names_whose_its_record_of_pushes_is_still_loads(compiled):
    """Blocks written since c3e6ef1 name whose the record is ("shown_by"): the customer's,
    but in a fold, which now leaves the record out. They load as before."""
    s = shard(compiled)
    s.watches.restore("ana", {"watches": [["gw", "web", "hero", "ana"]],
                              "shown": [["web", "hero", ["a1"]]], "shown_by": "ana"})
    assert s.watches.shown["ana"] == {("web", "hero"): ("a1",)}
