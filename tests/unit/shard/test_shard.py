"""The shard's logic without Ray: routing answers, handoff, passivation, timers, watches,
catalog switches, identity."""
from __future__ import annotations

import functools
import random

import numpy as np
import pytest
import yaml

from kairos.cluster.control.partitions import partition_of
from kairos.cluster.identity import anonymous_id, link_id
from kairos.cluster.protocol import (BUSY, CONFLICT, INVALID, NOT_MINE, OK, Decide, Event,
                                     EventAck, Forget, Forgotten, Invalid, Link, Merge, Merged,
                                     Missing, Moved, Ok, Outcome, ReadProfile, Resolve, Settle,
                                     Take, Unlink, WatchCustomer)
from kairos.cluster.shard.context import LEARNED_COUNT
from kairos.cluster.shard.shard import Shard
from kairos.cluster.settings import OUTCOME_RATE_WINDOW_S, OUTCOME_WINDOW_S
from kairos.cluster.storage import blocks
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.core.catalog import default_catalog_text, load_catalog, load_default_catalog
from kairos.core.compiler import compile_catalog
from kairos.core.decision import Learned

from bench.workload import random_event

N_PARTITIONS = 64
T0 = 1_795_629_600.0  # 2026-11-20T18:00:00Z


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def shard(compiled, name="s0", partitions=range(N_PARTITIONS), **kw) -> Shard:
    """A Shard; given a test's clock, timed by it throughout: as its steady clock too (the
    outcome rate's), unless the test passes another."""
    if "clock" in kw:
        kw.setdefault("steady", kw["clock"])
    return Shard(name, compiled, partitions, N_PARTITIONS, **kw)


def p_of(customer_or_key: str) -> int:
    return partition_of(customer_or_key, N_PARTITIONS)


def event(customer, etype, t, **attrs) -> Event:
    return Event(partition=p_of(customer), customer_id=customer, event_type=etype, time=t,
                 attributes=attrs)


def decide(customer, channel="web", placement="hero", context=None, now=T0, explain=False,
           record_impression=False) -> Decide:
    return Decide(partition=p_of(customer), customer_id=customer, channel=channel,
                  placement=placement, context=context or {}, explain=explain, now=now,
                  record_impression=record_impression)


def profile(customer, now=T0) -> ReadProfile:
    return ReadProfile(partition=p_of(customer), customer_id=customer, now=now)


def watch(customer, sink, channel, placement=None, active=True) -> WatchCustomer:
    return WatchCustomer(partition=p_of(customer), customer_id=customer, sink=sink,
                         channel=channel, placement=placement, active=active)


def forget(customer) -> Forget:
    return Forget(partition=p_of(customer), customer_id=customer)


@functools.cache
def _catalog():
    return load_default_catalog()


def journey(customer: str, n: int, seed: int = 0, t0: float = T0):
    rng = random.Random(seed)
    cat = _catalog()
    out = []
    for i in range(n):
        etype, attrs = random_event(cat, rng, t0)
        out.append(event(customer, etype, t0 + 60.0 * i, **attrs))
    return out


def test_events_get_per_customer_sequence_numbers_and_decisions_see_them(compiled):
    s = shard(compiled)
    results, _ = s.process([event("ana", "profile_updated", T0 - 60, marketing_opt_in=True),
                            event("bob", "app_open", T0),
                            event("ana", "add_to_cart", T0 + 60, product_id="tv",
                                  category="electronics", price=199.0),
                            event("ana", "app_open", T0 + 35 * 60),  # the cart timer fired
                            decide("ana", "app", "home", now=T0 + 36 * 60)])
    assert results[:4] == [EventAck(sequence=1), EventAck(sequence=1), EventAck(sequence=2),
                           EventAck(sequence=4)]
    decision = results[4].value
    assert results[4].status == OK and decision.catalog_version == compiled.version
    assert decision.actions[0].action_id == "cart_recovery_push"


def test_bad_input_is_answered_per_request_and_applies_nothing(compiled):
    s = shard(compiled)
    results, _ = s.process([event("ana", "page_view", T0, category="cars"),
                            event("ana", "teleport", T0),
                            decide("ana", channel="fax"),
                            event("ana", "app_open", T0)])
    assert results[0] == Invalid(field="attributes.category",
                                 reason="'cars' is not one of apparel, electronics, home, "
                                        "beauty, sports")
    assert (results[1].status, results[1].field) == (INVALID, "type")
    assert (results[2].status, results[2].field) == (INVALID, "channel")
    assert results[3] == EventAck(sequence=1)  # the bad events were not counted


def test_requests_arrive_as_arrays_and_one_that_is_no_request_answers_for_itself(compiled):
    """The data plane hands the shard msgpack arrays, in the layout the types pack to."""
    s = shard(compiled)
    p = p_of("ana")
    results, _ = s.process([["event", p, "ana", "app_open", T0, {}],
                            ["teleport", p, "ana"],
                            ("event", p, "ana", "app_open", T0, {}, None, None, None, "extra"),
                            list(event("ana", "app_open", T0 + 1)),
                            ["profile", p, "ana", T0 + 2]])
    assert results[:2] == [EventAck(sequence=1),
                           Invalid(field="kind", reason="unknown request kind 'teleport'")]
    assert results[2].field == "request" and results[3] == EventAck(sequence=2)
    assert results[4].value["events_applied"] == 2


def test_partitions_not_owned_answer_moved(compiled):
    p = partition_of("ana", N_PARTITIONS)
    s = shard(compiled, partitions=[q for q in range(N_PARTITIONS) if q != p])
    assert s.process([event("ana", "app_open", T0)])[0] == [Moved(map_version=NOT_MINE)]
    assert s.process([profile("ana")])[0] == [Moved(map_version=NOT_MINE)]
    assert len(s.engine.table) == 0


def test_profile_of_unknown_customer_is_missing_and_creates_nothing(compiled):
    s = shard(compiled)
    assert s.process([profile("nobody")])[0] == [Missing()]
    assert "nobody" not in s.engine.table


def test_handoff_moves_state_and_later_requests_answer_moved(compiled):
    a = shard(compiled, "a")
    b = shard(compiled, "b", partitions=[])
    customers = [f"c{i}" for i in range(40)]
    for i, c in enumerate(customers):
        a.process(journey(c, 12, seed=i))
    a.passivate(T0 + 10**6)  # some customers passivated, some resident
    for c in customers[:20]:
        a.process([event(c, "app_open", T0 + 3600)])
    moving = sorted({partition_of(c, N_PARTITIONS) for c in customers[::3]})
    before = {c: a.process([profile(c, T0 + 7200)])[0][0] for c in customers}
    payload = a.freeze(moving, version=2)
    frozen = [c for c in customers if partition_of(c, N_PARTITIONS) in moving]
    assert all(a.process([event(c, "app_open", T0)])[0] == [Moved(map_version=2)]
               for c in frozen)
    assert b.adopt(payload, 2) == len(frozen)
    a.release(moving, 2)
    for c in customers:
        owner = b if c in frozen else a
        assert owner.process([profile(c, T0 + 7200)])[0][0] == before[c]
    assert not any(a.engine.table.index.get(c) is not None for c in frozen)
    # sequence numbers continue where they were
    c = frozen[0]
    assert b.process([event(c, "app_open", T0 + 9000)])[0][0] == \
        EventAck(sequence=13 + (c in customers[:20]))


def test_failed_handoff_thaws(compiled):
    a = shard(compiled)
    a.process(journey("ana", 5))
    a.passivate(T0 + 10**6)
    p = partition_of("ana", N_PARTITIONS)
    a.freeze([p], version=7)
    assert a.process([profile("ana")])[0] == [Moved(map_version=7)]
    a.thaw([p], 8)
    # senders that routed under an older map must not overtake their own re-sends
    assert a.process([profile("ana")], routed=[7])[0] == [Moved(map_version=8)]
    assert a.process([profile("ana")], routed=[8])[0][0].value["events_applied"] == 5


def test_passivation_round_trip_gives_back_an_identical_profile(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=60.0)
    s.process(journey("ana", 30, seed=3))
    s.process([decide("ana", "web", "hero")])
    s.engine.record_outcomes([("ana", "service_menu", "web", "impression", T0, None)])
    record = s.engine.table.export("ana")
    view = s.process([profile("ana", T0 + 10**5)])[0][0]
    clock.now += 61
    assert s.passivate(clock.now) == 1 and "ana" not in s.engine.table
    assert s.store.count(range(N_PARTITIONS)) == 1
    assert s.process([profile("ana", T0 + 10**5)])[0][0] == view
    assert s.engine.table.export("ana").equals(record)


def test_resident_limit_passivates_the_least_recent(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock, resident_limit=3)
    for i in range(5):
        clock.now += 1
        s.process([event(f"c{i}", "app_open", T0)])
    s.passivate(clock.now)
    assert sorted(c for c in s.engine.table.ids if c) == ["c2", "c3", "c4"]


def test_timer_fires_on_tick_and_pushes_to_watchers(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock)
    s.process([event("ana", "profile_updated", T0 - 86400, marketing_opt_in=True,
                     push_opt_in=True),
               watch("ana", "sink-1", "push")])
    _, pushes = s.process([event("ana", "add_to_cart", T0, product_id="tv",
                                 category="electronics", price=199.0)])
    assert s.process([profile("ana")])[0][0].value["timers"] == {"cart_abandoned": T0 + 1800}
    clock.now = T0 + 1799
    assert s.tick() == []
    clock.now = T0 + 1800.5
    pushes = s.tick()
    view = s.process([profile("ana", T0 + 1801)])[0][0].value
    assert view["features"]["carts_abandoned_30d"] == pytest.approx(1.0, rel=1e-3)
    assert view["timers"] == {}
    assert [(p.sink, [a.action_id for a in p.decision.actions]) for p in pushes] == \
        [("sink-1", ["cart_recovery_push"])]


def test_a_timer_due_while_its_partition_is_frozen_fires_once_the_move_is_undone(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock)
    s.process([event("ana", "add_to_cart", T0, product_id="tv", category="electronics",
                     price=199.0)])
    s.freeze([p_of("ana")], 1)
    clock.now = T0 + 1800.5
    s.tick()  # due, but the partition answers MOVED: it waits
    s.thaw([p_of("ana")], 1)
    clock.now = T0 + 1801
    s.tick()
    view = s.process([profile("ana", T0 + 1802)])[0][0].value
    assert view["features"]["carts_abandoned_30d"] == pytest.approx(1.0, rel=1e-3)
    assert view["timers"] == {}


def test_purchase_cancels_the_timer_and_a_later_event_fires_an_overdue_one_first(compiled):
    s = shard(compiled, clock=Clock())
    cart = dict(product_id="tv", category="electronics", price=199.0)
    s.process([event("ana", "add_to_cart", T0, **cart),
               event("ana", "purchase", T0 + 600, order_id="o", amount=199.0,
                     category="electronics", fulfilment="delivery")])
    assert s.timers.armed == {}
    results, _ = s.process([event("bob", "add_to_cart", T0, **cart),
                            event("bob", "app_open", T0 + 3600)])
    # the timer's event came between them
    assert results == [EventAck(sequence=1), EventAck(sequence=3)]
    view = s.process([profile("bob", T0 + 3600)])[0][0].value
    assert view["features"]["carts_abandoned_30d"] > 0.99


def test_channel_watch_pushes_only_changes(compiled):
    s = shard(compiled)
    s.watch_channel("sink-9", "web", "hero")
    _, first = s.process([event("ana", "app_open", T0)])
    _, again = s.process([event("ana", "app_open", T0 + 1)])
    assert len(first) == 1 and first[0].sink == "sink-9" and again == []
    s.drop_sink("sink-9")
    _, none = s.process([event("ana", "complaint", T0 + 2, topic="delivery", severity="high")])
    assert none == []


def _catalog_v2() -> str:
    doc = yaml.safe_load(default_catalog_text())
    doc["version"] = "v2-test"
    doc["features"]["views_total"] = {"kind": "count", "event": "page_view"}
    del doc["features"]["email_clicks_30d"]
    for action in doc["actions"]:
        if "email_clicks_30d" in str(action.get("value")):
            action["value"] = "18"
    dropped = doc["actions"].pop(0)["id"]
    doc["fallbacks"] = {ch: [a for a in ids if a != dropped]
                        for ch, ids in doc["fallbacks"].items()}
    new = dict(doc["actions"][-1], id="brand_new_offer")
    doc["actions"].append(new)
    return yaml.safe_dump(doc, sort_keys=False)


def test_catalog_switch_relays_out_residents_and_keeps_models(compiled):
    s = shard(compiled)
    for i in range(10):
        s.process(journey(f"c{i}", 20, seed=i))
    s.engine.record_outcomes([("c1", "service_menu", "web", "accept", T0, None)])
    before = s.process([profile("c1", T0 + 86400)])[0][0].value
    learned = s.engine.models.pending()
    version = s.prepare(_catalog_v2())
    s.commit(version)
    after = s.process([profile("c1", T0 + 86400)])[0][0].value
    assert s.catalog_version == "v2-test"
    assert after["attributes"] == before["attributes"]
    kept = {k: v for k, v in before["features"].items() if k != "email_clicks_30d"}
    assert {k: v for k, v in after["features"].items() if k in kept} == kept
    assert after["features"]["views_total"] == 0  # new feature starts at its default
    assert after["history"] == before["history"]
    assert after["events_applied"] == before["events_applied"]
    c = s.compiled
    row = c.action_index["service_menu"] * len(c.channel_names) + c.channel_index["web"]
    old = compiled.action_index["service_menu"] * len(compiled.channel_names) + \
        compiled.channel_index["web"]
    assert s.engine.models.pending().positives[row] == learned.positives[old] == 1
    decision = s.process([decide("c1")])[0][0].value
    assert decision.catalog_version == "v2-test"


def test_a_catalog_switch_starts_a_feature_of_another_kind_over(compiled):
    """`since_cart` become a count of carts: neither a resident customer nor one passivated
    before the switch (its home is read under the new catalog) takes its cart's time for a
    count; the cart's other features stay."""
    clock = Clock()
    s = shard(compiled, clock=clock, resident_limit=1)
    cart = dict(product_id="tv", category="electronics", price=199.0)
    s.process([event("ana", "add_to_cart", T0, **cart)])
    clock.now += 1
    s.process([event("bob", "add_to_cart", T0, **cart)])
    assert s.passivate(clock.now) == 1 and "ana" not in s.engine.table
    before = s.process([profile("bob", T0 + 60)])[0][0].value["features"]
    doc = yaml.safe_load(default_catalog_text())
    doc["version"] = "v2-counts-carts"
    doc["features"]["since_cart"] = {"kind": "count", "event": "add_to_cart"}
    s.commit(s.prepare(yaml.safe_dump(doc, sort_keys=False)))
    s.process([event("bob", "add_to_cart", T0 + 120, **cart)])
    for customer, carts in (("ana", 0.0), ("bob", 1.0)):
        after = s.process([profile(customer, T0 + 180)])[0][0].value["features"]
        assert after["since_cart"] == carts, customer
        assert after["cart_category"] == before["cart_category"] == "electronics"


def test_commit_needs_a_prepared_version(compiled):
    with pytest.raises(ValueError, match="has not prepared"):
        shard(compiled).commit("v9")


def test_blocks_round_trip_through_msgpack(compiled):
    s = shard(compiled)
    for i in range(5):
        s.process(journey(f"c{i}", 15, seed=i))
    ids = [f"c{i}" for i in range(5)]
    block = blocks.unpack(blocks.pack(s.residency.export(ids)))
    t = shard(compiled, "t")
    blocks.import_block(t.engine, block)
    for c in ids:
        assert t.engine.profile(c, T0 + 999) == s.engine.profile(c, T0 + 999)
        assert np.array_equal(t.engine.table.export(c).ring_action,
                              s.engine.table.export(c).ring_action)


def test_blocks_into_a_smaller_history_keep_the_newest_entries(compiled):
    s = shard(compiled)
    s.process([event("ana", "app_open", T0)])
    for k in range(10):
        s.engine.record_outcomes([("ana", "service_menu", "web", "impression", T0 + k, None)])
    doc = yaml.safe_load(default_catalog_text())
    doc["history"] = {"size": 6}  # the default catalog's policies count up to 5
    small = compile_catalog(load_catalog(yaml.safe_dump(doc)))
    t = Shard("t", small, range(N_PARTITIONS), N_PARTITIONS)
    blocks.import_block(t.engine, s.residency.export(["ana"]))
    assert [h["time"] for h in t.engine.history("ana")] == [T0 + k for k in range(9, 3, -1)]


def test_an_idempotency_key_applies_once_even_after_a_move(compiled):
    a = shard(compiled, "a")
    p = partition_of("ana", N_PARTITIONS)
    keyed = event("ana", "app_open", T0)._replace(idempotency_key="key-1")
    results, _ = a.process([keyed, keyed, keyed._replace(idempotency_key="key-2")])
    assert results == [EventAck(sequence=1), EventAck(sequence=1, duplicate=True),
                       EventAck(sequence=2)]
    b = shard(compiled, "b", partitions=[])
    b.adopt(a.freeze([p], 2), 2)
    a.release([p], 2)
    assert b.process([keyed])[0] == [EventAck(sequence=1, duplicate=True)]
    assert b.process([profile("ana")])[0][0].value["events_applied"] == 2


def test_an_event_can_ask_for_the_new_decision_and_a_decision_can_record_its_impression(
        compiled):
    s = shard(compiled)
    results, _ = s.process([event("ana", "app_open", T0)._replace(decide=("web", "hero"))])
    ack = results[0]
    assert (ack.status, ack.sequence, ack.duplicate, ack.decision.channel) == \
        (OK, 1, False, "web")
    shown = s.process([decide("ana", record_impression=True)])[0][0].value
    assert [h["action_id"] for h in s.engine.history("ana")] == \
        [a.action_id for a in shown.actions][::-1]


def test_forget_erases_resident_and_passivated_customers(compiled):
    s = shard(compiled)
    s.process([event("ana", "app_open", T0), event("bob", "app_open", T0)])
    s.passivate(T0 + 10**6)
    s.process([event("ana", "app_open", T0)])  # ana back in memory, bob in the store
    assert s.process([forget(c) for c in ("ana", "bob", "eve")])[0] == \
        [Forgotten(existed=True, aliases=[]), Forgotten(existed=True, aliases=[]),
         Forgotten(existed=False, aliases=[])]
    assert s.process([profile("ana"), profile("bob")])[0] == [Missing(), Missing()]
    s.erase()  # homes go once the journal holds the forget (it does here: synced commits)
    assert s.store.count(range(N_PARTITIONS)) == 0


def link_steps(directory: Shard, anon_host: Shard, host: Shard, key: str, customer: str):
    """KairosClient.link's three steps, run on the shards by hand."""
    link, anon = link_id(key, customer), anonymous_id(key)
    assert directory.process([Link(partition=p_of(key), key=key, customer_id=customer)])[0] \
        == [Ok()]
    taken, = anon_host.process([take(anon, link, customer)])[0]
    merged = host.process([merge(customer, link, key, taken.value)])[0][0]
    anon_host.process([Settle(partition=p_of(anon), anonymous=anon, link=link)])
    return taken.value, merged


def take(anon, link, customer) -> Take:
    return Take(partition=p_of(anon), anonymous=anon, link=link, target=customer)


def merge(customer, link, key, state) -> Merge:
    return Merge(partition=p_of(customer), customer_id=customer, link=link, key=key, state=state)


def resolve(key) -> Resolve:
    return Resolve(partition=p_of(key), key=key)


def test_an_alias_resolves_to_its_anonymous_customer_until_linked(compiled):
    s = shard(compiled)
    key, anon = "cookie:c1", anonymous_id("cookie:c1")
    assert s.process([resolve(key)])[0] == [Ok(value=anon)]
    s.process([event(anon, "page_view", T0, category="home")] * 3)
    s.process([event("ana", "page_view", T0 + 5, category="home")])
    state, merged = link_steps(s, s, s, key, "ana")
    assert state is not None and merged == Ok(value=True)
    assert s.process([resolve(key)])[0] == [Ok(value="ana")]
    ana = s.process([profile("ana", T0 + 10)])[0][0].value
    assert ana["events_applied"] == 4
    # the anonymous id now redirects, so requests already on their way are not lost
    assert s.process([event(anon, "app_open", T0 + 6), profile(anon)])[0] == \
        [Merged(customer_id="ana"), Merged(customer_id="ana")]


def test_a_retried_link_merges_once(compiled):
    s = shard(compiled)
    anon = anonymous_id("email:a@x")
    s.process([event(anon, "page_view", T0, category="home")] * 2)
    link_steps(s, s, s, "email:a@x", "ana")
    state, merged = link_steps(s, s, s, "email:a@x", "ana")
    assert merged == Ok(value=False)
    assert s.process([profile("ana")])[0][0].value["events_applied"] == 2


def test_a_retry_before_the_merge_gets_the_same_state(compiled):
    s = shard(compiled)
    key, anon = "cookie:c2", anonymous_id("cookie:c2")
    link = link_id(key, "ana")
    s.process([event(anon, "page_view", T0, category="home")])
    first = s.process([take(anon, link, "ana")])[0][0].value
    again = s.process([take(anon, link, "ana")])[0][0].value
    assert first == again is not None
    assert s.process([merge("ana", link, key, first)])[0] == [Ok(value=True)]
    assert s.process([merge("ana", link, key, again)])[0] == [Ok(value=False)]


def test_an_alias_linked_to_another_customer_is_a_conflict(compiled):
    s = shard(compiled)

    def link(customer):
        return Link(partition=p_of("cookie:c3"), key="cookie:c3", customer_id=customer)
    s.process([link("ana")])
    conflict, = s.process([link("bob")])[0]
    assert conflict.status == CONFLICT and "linked to another customer" in conflict.reason
    assert s.process([link("ana")])[0] == [Ok()]


def test_the_directory_and_redirects_move_with_their_partition(compiled):
    key, anon = "cookie:c4", anonymous_id("cookie:c4")
    a = shard(compiled, "a")
    a.process([event(anon, "app_open", T0)])
    link_steps(a, a, a, key, "ana")
    moving = sorted({p_of(key), p_of(anon)})
    b = shard(compiled, "b", partitions=[])
    b.adopt(a.freeze(moving, 2), 2)
    a.release(moving, 2)
    assert b.process([resolve(key)])[0] == [Ok(value="ana")]
    assert b.process([event(anon, "app_open", T0)])[0] == [Merged(customer_id="ana")]
    assert a.directory.count() == 0 and not a.directory.redirecting


def test_forget_returns_the_aliases_and_erases_the_redirect(compiled):
    s = shard(compiled)
    key, anon = "cookie:c5", anonymous_id("cookie:c5")
    s.process([event(anon, "app_open", T0)])
    link_steps(s, s, s, key, "ana")
    s.passivate(T0 + 10**6)  # the aliases ride along with the passivated customer
    assert s.process([forget("ana")])[0] == [Forgotten(existed=True, aliases=[key])]
    assert s.process([Unlink(partition=p_of(key), key=key, customer_id="ana"),
                      forget(anon)])[0] == [Ok(value=True), Forgotten(existed=True, aliases=[],
                                                                      merged_into="ana")]
    assert s.process([resolve(key), profile(anon)])[0] == [Ok(value=anon), Missing()]


def test_a_merge_brings_timers_and_watches_along(compiled):
    s = shard(compiled)
    key, anon = "cookie:c6", anonymous_id("cookie:c6")
    s.process([event(anon, "add_to_cart", T0, product_id="s1", category="home", price=10.0)])
    s.process([watch(anon, "sink-1", "push")])
    s.process([event("ana", "app_open", T0)])
    link_steps(s, s, s, key, "ana")
    assert set(s.timers.armed["ana"]) == {s.compiled.timer_names.index("cart_abandoned")}
    assert {w.sink for w in s.watches.by_customer["ana"]} == {"sink-1"}


# -- idempotency keys: per customer, a window of time and count -------------------------------

def same_partition(n: int, prefix: str = "k") -> list[str]:
    """`n` customer ids of one partition."""
    by_partition: dict[int, list[str]] = {}
    for i in range(10_000):
        ids = by_partition.setdefault(p_of(f"{prefix}{i}"), [])
        ids.append(f"{prefix}{i}")
        if len(ids) == n:
            return ids
    raise AssertionError("no partition got enough ids")


def keyed(customer: str, key: str, t: float = T0) -> Event:
    return event(customer, "app_open", t)._replace(idempotency_key=key)


def test_the_same_key_from_two_customers_of_one_partition_applies_for_each(compiled):
    ana, bob = same_partition(2)
    s = shard(compiled)
    results, _ = s.process([keyed(ana, "order-1"), keyed(bob, "order-1")])
    assert results == [EventAck(sequence=1), EventAck(sequence=1)]
    assert s.process([keyed(bob, "order-1")])[0] == [EventAck(sequence=1, duplicate=True)]


def test_flooding_one_customers_keys_never_evicts_anothers(compiled, monkeypatch):
    monkeypatch.setattr("kairos.cluster.shard.keys.KEYS_PER_CUSTOMER", 8)
    victim, flooder = same_partition(2)
    s = shard(compiled)
    s.process([keyed(victim, "pay-1")])
    s.process([keyed(flooder, f"junk-{i}") for i in range(5000)])
    assert s.process([keyed(victim, "pay-1")])[0] == [EventAck(sequence=1, duplicate=True)]
    # the flooder pushed out only its own oldest keys
    assert s.process([keyed(flooder, "junk-0")])[0][0].duplicate is False
    assert s.process([keyed(flooder, "junk-4999")])[0][0].duplicate is True


def test_keys_are_kept_for_the_retention_window_then_forgotten(compiled, monkeypatch):
    monkeypatch.setattr("kairos.cluster.shard.keys.KEY_RETENTION_S", 3600.0)
    clock = Clock()
    s = shard(compiled, clock=clock)
    s.process([keyed("ana", "k-1")])
    clock.now += 3599
    assert s.process([keyed("ana", "k-1")])[0][0].duplicate is True
    clock.now += 2
    assert s.process([keyed("ana", "k-1")])[0][0] == EventAck(sequence=2)


def test_keys_live_with_the_customer_through_passivation_and_recovery(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=60.0)
    s.process([keyed("ana", "k-1")])
    clock.now += 61
    assert s.passivate(clock.now) == 1 and not s.keys._keys  # nothing left in memory
    assert s.process([keyed("ana", "k-1")])[0] == [EventAck(sequence=1, duplicate=True)]
    s.snapshot(range(N_PARTITIONS))
    s.process([keyed("ana", "k-2")])  # journaled after the snapshot
    rebuilt = shard(compiled, clock=clock, store=s.store)
    rebuilt.recover()
    assert rebuilt.process([keyed("ana", "k-1"), keyed("ana", "k-2")])[0] == \
        [EventAck(sequence=1, duplicate=True), EventAck(sequence=2, duplicate=True)]


# -- what unseen ids and outcomes may make a shard do ---------------------------------------------

def outcome(customer, action, decision_id, channel="web", kind="accept", when=T0) -> Outcome:
    return Outcome(partition=p_of(customer), customer_id=customer, action_id=action,
                   channel=channel, outcome=kind, when=when, decision_id=decision_id)


def test_a_decision_for_an_unseen_customer_leaves_nothing_behind(compiled):
    s = shard(compiled)
    results, _ = s.process([decide("ghost"), decide("ghost", "app", "home")])
    assert [r.status for r in results] == [OK, OK] and results[0].value.actions
    assert "ghost" not in s.engine.table and not s.residency.residents(range(N_PARTITIONS))
    assert s.process([profile("ghost")])[0] == [Missing()]
    s.process([decide("shown", record_impression=True)])  # what was shown is its history
    assert s.process([profile("shown")])[0][0].value["history"]


class _NotToBeWalked(dict):
    """A residents' index a request must look up, never walk (the soak's collapse at 100,000
    customers: every decision batch walked all of them)."""

    def __iter__(self):
        raise AssertionError("walked every resident")

    keys = values = items = __iter__


def test_deciding_looks_residents_up_without_walking_them(compiled):
    s = shard(compiled)
    s.process([event(f"c{i}", "app_open", T0) for i in range(50)])
    s.residency.recent = _NotToBeWalked(s.residency.recent)
    results, _ = s.process([decide("c1"), decide("ghost"), decide("c2", "app", "home")])
    assert [r.status for r in results] == [OK, OK, OK]
    assert "ghost" not in s.engine.table and "c1" in s.engine.table


def test_a_watch_of_an_unseen_customer_creates_no_profile_and_waits_for_it(compiled):
    s = shard(compiled)
    assert s.process([watch("newbie", "sink-1", "app", "home")])[0] == [Ok()]
    assert "newbie" not in s.engine.table
    _, pushes = s.process([event("newbie", "app_open", T0)])
    assert [(p.sink, p.decision.customer_id) for p in pushes] == [("sink-1", "newbie")]
    s.process([watch("passer-by", "sink-1", "app", "home"),
               watch("passer-by", "sink-1", "app", "home", active=False)])
    assert "passer-by" not in s.engine.table and "passer-by" not in s.watches.by_customer


def test_outcomes_must_name_a_decision_a_shard_issued_and_an_action_it_showed(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock)
    s.process([event("ana", "app_open", T0)])
    d = s.process([decide("ana")])[0][0].value
    shown = d.actions[0].action_id
    other = next(a for a in compiled.action_ids if a not in {x.action_id for x in d.actions}
                 and compiled.offered[compiled.action_index[a], compiled.channel_index["web"]])
    engine_id = d.decision_id.split(".")[0]
    refused = [outcome("ana", shown, ""), outcome("ana", shown, "made-up"),
               outcome("ana", shown, engine_id),  # the engine's id, unsealed
               outcome("ana", shown, d.decision_id[:-1] + ("B" if d.decision_id[-1] == "A"
                                                            else "A")),  # its seal altered
               outcome("ana", other, d.decision_id),  # not shown
               outcome("ana", shown, d.decision_id, channel="app"),
               outcome("bob", shown, d.decision_id),  # another customer's decision
               outcome("ana", "no_such_action", d.decision_id),
               # tags added: each was another guess of the shown action's tag
               outcome("ana", shown, d.decision_id + "AAAAAAAA" * 1000)]
    results, _ = s.process(refused)
    assert [(r.status, r.field) for r in results] == [(INVALID, "decision_id")] * 9
    assert "bob" not in s.engine.table and not s.engine.history("ana")
    assert s.process([outcome("ana", shown, d.decision_id)])[0] == [Ok(value=Learned.DECISION)]
    assert [h["action_id"] for h in s.engine.history("ana")] == [shown]
    clock.now += OUTCOME_WINDOW_S + 1
    late = s.process([outcome("ana", shown, d.decision_id, kind="convert")])[0][0]
    assert (late.status, late.field) == (INVALID, "decision_id") and "too old" in late.reason


def test_a_decision_shown_before_a_login_takes_its_outcome_after_the_link(compiled):
    """Shown to an anonymous visitor (by cookie), answered once the visitor has logged in:
    the outcome names the customer the cookie was linked to, and counts; a customer the
    cookie was never linked to still cannot use that decision."""
    s = shard(compiled)
    key, anon = "cookie:c9", anonymous_id("cookie:c9")
    s.process([event(anon, "page_view", T0, category="home")])
    d = s.process([decide(anon)])[0][0].value
    shown = d.actions[0].action_id
    s.process([event("ana", "app_open", T0), event("bob", "app_open", T0)])
    link_steps(s, s, s, key, "ana")
    results, _ = s.process([outcome("bob", shown, d.decision_id),
                            outcome("ana", shown, d.decision_id)])
    assert [(r.status, getattr(r, "field", None)) for r in results] == \
        [(INVALID, "decision_id"), (OK, None)]
    assert [h["action_id"] for h in s.engine.history("ana")] == [shown]


def test_an_outcome_of_a_decision_made_before_the_profile_existed_creates_it(compiled):
    s = shard(compiled)
    d = s.process([decide("fresh")])[0][0].value
    assert "fresh" not in s.engine.table
    assert s.process([outcome("fresh", d.actions[0].action_id, d.decision_id)])[0] == [Ok(value=Learned.DECISION)]
    assert s.residency.residents([p_of("fresh")]) == ["fresh"]
    assert s.process([profile("fresh")])[0][0].value["history"]


def test_an_offline_outcome_names_no_decision_and_learns_from_the_profile(compiled):
    """No decision id at all (None) is offline feedback: the gateway lets it through only for
    keys with the feedback scope."""
    s = shard(compiled)
    before = s.engine.models.mean.copy()
    assert s.process([outcome("walk-in", "service_menu", None, kind="convert")])[0] == [Ok(value=Learned.PROFILE_NO_DECISION)]
    assert [h["outcome"] for h in s.engine.history("walk-in")] == ["convert"]
    assert (s.engine.models.mean != before).any()


def test_outcomes_say_what_they_taught_from_and_are_tallied_so(compiled):
    """Only an outcome whose decision's inputs the engine still keeps learns from them; the
    others learn from the profile as it is now, and each kind has its tally (the metric)."""
    s = shard(compiled)
    d = s.process([decide("ana", record_impression=True)])[0][0].value
    shown = d.actions[0].action_id
    s.engine.forget("bob")  # another customer's: ana's decision stays remembered
    replies, _ = s.process([outcome("ana", shown, d.decision_id),
                            outcome("walk-in", "service_menu", None, kind="convert")])
    assert [r.value for r in replies] == [Learned.DECISION, Learned.PROFILE_NO_DECISION]
    s.engine.forget("ana")
    assert s.process([outcome("ana", shown, d.decision_id, kind="reject")])[0] == \
        [Ok(value=Learned.PROFILE_DECISION_FORGOTTEN)]
    stats = s.stats()
    assert [stats[LEARNED_COUNT + kind] for kind in (
        "decision", "profile_no_decision", "profile_decision_forgotten")] == [1, 1, 1]
    assert stats[LEARNED_COUNT + "nothing"] == len(d.actions)  # the decision's impressions


def test_outcomes_past_a_customers_rate_are_refused_busy(compiled, monkeypatch):
    monkeypatch.setattr("kairos.cluster.shard.outcomes.OUTCOMES_PER_CUSTOMER", 3)
    clock = Clock()
    s = shard(compiled, clock=clock)
    mine, theirs = (s.process([decide(c)])[0][0].value for c in ("ana", "bob"))
    results, _ = s.process([outcome("ana", mine.actions[0].action_id, mine.decision_id)] * 4 +
                           [outcome("bob", theirs.actions[0].action_id, theirs.decision_id)])
    assert [r.status for r in results] == [OK, OK, OK, BUSY, OK]
    assert "outcomes for this customer" in results[3].reason
    clock.now += OUTCOME_RATE_WINDOW_S
    assert s.process([outcome("ana", mine.actions[0].action_id, mine.decision_id)])[0] == \
        [Ok(value=Learned.REPEATED)]  # the same decision: taught
    clock.now += OUTCOME_RATE_WINDOW_S  # guesses at a decision id count as outcomes too
    results, _ = s.process([outcome("bob", "service_menu", f"guess-{i}.1.AAAAAAAA")
                            for i in range(3)] +
                           [outcome("bob", theirs.actions[0].action_id, theirs.decision_id)])
    assert [r.status for r in results] == [INVALID, INVALID, INVALID, BUSY]


def test_a_sealed_decision_takes_outcomes_after_a_move_and_a_restart(compiled):
    store = MemoryStore(shared=True)
    a = shard(compiled, "a", store=store)
    b = shard(compiled, "b", partitions=[], store=store)
    d = a.process([decide("ana")])[0][0].value
    p = p_of("ana")
    b.adopt(a.freeze([p], 2), 2)
    a.release([p], 2)
    assert b.process([outcome("ana", d.actions[0].action_id, d.decision_id)])[0] == [Ok(value=Learned.PROFILE_DECISION_FORGOTTEN)]
    b.close()
    restarted = Shard("b", compiled, [p], N_PARTITIONS, store=store)
    restarted.recover()
    assert restarted.process([outcome("ana", d.actions[0].action_id, d.decision_id,
                                      kind="convert")])[0] == [Ok(value=Learned.REPEATED)]


def test_a_step_of_a_move_that_comes_after_the_move_was_settled_is_refused(compiled):
    """A remote call that timed out may still run, and calls to an actor can run out of
    order: an adopt after the target released the undone move would make two owners, a
    freeze after the source thawed would answer MOVED for ever."""
    a, b = shard(compiled, "a"), shard(compiled, "b", partitions=[])
    p = p_of("ana")
    a.process([event("ana", "app_open", T0)])
    payload = a.freeze([p], 2)
    b.release([p], 3)  # the controller undid the move: the target forgets what it may hold
    a.thaw([p], 3)
    with pytest.raises(ValueError, match="after their move was settled"):
        b.adopt(payload, 2)
    assert p not in b.owned
    with pytest.raises(ValueError, match="after their move was settled"):
        a.freeze([p], 2)
    assert a.process([profile("ana")])[0][0].value["events_applied"] == 1
    b.adopt(a.freeze([p], 4), 4)  # the next move, of a later version, goes through
    assert p in b.owned
