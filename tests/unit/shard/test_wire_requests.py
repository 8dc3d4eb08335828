"""A request array with a field of another type than its kind declares answers Invalid by
itself: the shard indexes, hashes and packs its tables by those fields, and a round that raised
would fail every caller's request in it and rebuild the shard."""
from __future__ import annotations

import itertools

import pytest

from kairos.cluster import protocol
from kairos.cluster.identity import anonymous_id, link_id
from kairos.cluster.protocol import (Bury, Claim, EventAck, Fire, Invalid, Link, Merge, Outcome,
                                     Resolve, Retire, Settle, Take, Unclaim, Unlink)
from kairos.cluster.storage import blocks

from .test_shard import T0, decide, event, forget, p_of, profile, shard, watch

BOB, KEY, LINK = "bob", "cookie-1", link_id("cookie-1", "bob")
ONE_OF_EACH = [
    event(BOB, "app_open", T0), decide(BOB), profile(BOB), watch(BOB, "sink-1", "web"),
    forget(BOB),
    Outcome(partition=p_of(BOB), customer_id=BOB, action_id="a", channel="web",
            outcome="CONVERT", when=T0, decision_id="d", value=1.0, idempotency_key="k"),
    Fire(partition=p_of(BOB), customer_id=BOB, timer="t", due=T0),
    Resolve(partition=p_of(KEY), key=KEY), Link(partition=p_of(KEY), key=KEY, customer_id=BOB),
    Unlink(partition=p_of(KEY), key=KEY, customer_id=BOB),
    Retire(partition=p_of(KEY), key=KEY, customer_id=BOB),
    Take(partition=p_of(anonymous_id(KEY)), anonymous=anonymous_id(KEY), link=LINK,
         target=BOB),
    Merge(partition=p_of(BOB), customer_id=BOB, link=LINK, key=KEY),
    Settle(partition=p_of(anonymous_id(KEY)), anonymous=anonymous_id(KEY), link=LINK),
    Bury(partition=p_of(BOB), customer_id=BOB), Claim(partition=p_of(BOB), customer_id=BOB,
                                                      key=KEY, link=LINK),
    Unclaim(partition=p_of(BOB), customer_id=BOB, key=KEY, link=LINK)]
# of every type msgpack can carry, and numbers an int64 or a finite float cannot hold
ODD = [["x"], {"a": 1}, {1: ["b"]}, b"x", 1.5, "s", None, 2**70, True, -1, float("nan"),
       float("inf")]


def test_every_kind_of_request_is_tried():
    assert {r.kind for r in ONE_OF_EACH} == set(protocol.REQUESTS)


@pytest.mark.parametrize("request_", ONE_OF_EACH, ids=lambda r: r.kind)
def test_any_field_of_any_type_fails_its_request_alone(compiled, request_):
    s = shard(compiled, "s0")
    for n, (field, odd) in enumerate(itertools.product(range(1, len(request_)), ODD)):
        bad = list(request_)
        bad[field] = odd
        fine = event(f"ana-{n}", "app_open", T0)
        replies, _ = s.process([bad, list(fine)])  # raised before: the round failed
        assert replies[1] == EventAck(sequence=1), (request_._fields[field], odd)


@pytest.mark.parametrize("bad, field", [
    (["decide", 0, ["ana"]], "customer_id"), (["profile", 0, {"ana": 1}], "customer_id"),
    (["event", "0", "ana"], "partition"), (["watch", 0.5, "ana"], "partition"),
    (["resolve", 0, None], "key"), (["event", 2**70, "ana"], "partition"),
    (["decide", 0, "ana", ["web"]], "channel"),
    (["event", 0, "ana", "app_open", T0, {}, 7], "idempotency_key"),
    (["watch", 0, "ana", "sink", "web", None, True, {"by": 1}], "by"),
    (["forget", 0, "ana", None, "yesterday"], "when"),
    (["event", 0, "ana", "app_open", T0, {}, None, ["web"]], "decide"),
    (["take", 0, "anon", None], "link")], ids=str)
def test_the_invalid_answer_names_the_field(compiled, bad, field):
    replies, _ = shard(compiled, "s0").process([bad])
    assert isinstance(replies[0], Invalid) and replies[0].field == field, replies[0]


def test_an_array_with_more_fields_than_its_kind_or_an_unknown_kind_fails_alone(compiled):
    replies, _ = shard(compiled, "s0").process([["resolve", 0, "k", False, "extra"], ["nope", 0],
                                                 [], 5, list(event("ana", "app_open", T0))])
    assert [getattr(r, "field", None) for r in replies[:4]] == ["request", "kind", "kind",
                                                                "request"]
    assert replies[4] == EventAck(sequence=1)


@pytest.mark.parametrize("state", [b"x", b"\xc1", blocks.pack({"format": 1})], ids=repr)
def test_a_merge_whose_state_is_no_block_changes_nothing(compiled, state):
    s = shard(compiled, "s0")
    merge = Merge(partition=p_of(BOB), customer_id=BOB, link=LINK, key=KEY, state=state)
    replies, _ = s.process([merge, event("ana", "app_open", T0)])
    assert isinstance(replies[0], Invalid) and replies[0].field == "state"
    assert replies[1] == EventAck(sequence=1)
    assert s.identities.aliases(BOB) == [] and s.journaling.journal.last_lsn == 1  # event


def test_a_merge_of_two_customers_state_is_refused(compiled):
    s = shard(compiled, "s0")
    s.process([event("anon-1", "app_open", T0), event("anon-2", "app_open", T0)])
    two = blocks.pack(s.residency.export(["anon-1", "anon-2"]))
    merge = Merge(partition=p_of(BOB), customer_id=BOB, link=LINK, key=KEY, state=two)
    assert s.process([merge])[0][0].field == "state"


def test_a_request_sent_as_a_map_or_nested_deep_fails_alone(compiled):
    deep: list = []
    inner = deep
    for _ in range(5_000):  # deeper than repr recurses: the Invalid's words must not raise
        inner.append([])
        inner = inner[0]
    replies, _ = shard(compiled, "s0").process([
        {0: "event", 1: 0, 2: "ana"}, {"kind": "event"}, ["event", 0, deep],
        ["event", 0, "x" * 1_000_000, ["app_open"]], list(event("ana", "app_open", T0))])
    assert [r.field for r in replies[:4]] == ["request", "request", "customer_id", "event_type"]
    assert len(replies[2].reason) < 200 and len(replies[3].reason) < 200
    assert isinstance(replies[3], Invalid) and replies[4] == EventAck(sequence=1)
