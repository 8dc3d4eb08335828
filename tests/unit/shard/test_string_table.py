"""One customer's free text does not use up a shard's string table (issue 18): the shard
compacts its engine's table between rounds and between replayed chunks (Shard._keep_strings),
keeping the strings its residents hold, so another customer's text, a passivated customer's
coming back and a replay's all read back as sent. Only live strings past the limit overflow
to "<other>", tallied and logged once with the fields that hold the most. Limits are scaled
down from 1,000,000."""
from __future__ import annotations

import logging
import random
from collections import Counter as Tally

from kairos.core.compiler import CompiledCatalog, default_compiled
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from kairos.cluster.metrics import ShardMetrics
from kairos.cluster.protocol import OK, EventAck
from kairos.cluster.shard.shard import Shard
from tests.support.inprocess_gateway import serving
from tests.unit.core.test_string_compaction import free_text_catalog
from tests.unit.shard.test_metrics import recorded
from tests.unit.shard.test_shard import N_PARTITIONS, T0, Clock, event, p_of, profile, \
    shard


def limited(room: int, compiled: CompiledCatalog | None = None, **kw) -> Shard:
    """A shard of its own catalog copy (its own string table), room for `room` strings past
    the catalog's. The table's clock stands still: its passes are spaced by counts only
    (a loaded machine's slow pass would hold the next back; test_string_compaction tests the
    spacing on a clock it moves)."""
    s = shard(compiled or default_compiled(), **kw)
    strings = s.engine.compiled.strings
    strings.limit = len(strings.strings) + room  # the catalog's, as nothing came yet
    strings.clock = Clock()
    return s


def store_of(s: Shard, customer: str, now: float = T0 + 10) -> str | None:
    return s.process([profile(customer, now)])[0][0].value["attributes"]["home_store"]


def home(customer: str, store: str, t: float = T0):
    return event(customer, "profile_updated", t, home_store=store)


def test_a_flood_of_one_customers_strings_leaves_every_other_customers_text():
    s = limited(1990)
    s.process([home("resident", "store-0007")])
    for r in range(3):  # rounds, each nearly the table's room
        s.process([home("attacker", f"junk-{r}-{i}", T0 + r) for i in range(1900)])
    s.process([home("victim", "store-0042")])
    assert store_of(s, "victim") == "store-0042"  # on main: "<other>"
    assert store_of(s, "resident") == "store-0007"
    assert store_of(s, "attacker") == "junk-2-1899"
    assert s.counts["string_compactions"] >= 2 and not s.counts["strings_overflowed"]


def test_a_passivated_customer_reloads_its_text_after_compactions():
    """Its block carries its strings as text, which its reload interns: one passivated before a
    restart (its partition snapshotted after: the journal replays nothing of it), whose
    strings the new table never held, the flood since filling a table never compacted; and
    one passivated here, whose strings the compactions dropped."""
    clock = Clock()
    first = shard(free_text_catalog(), clock=clock, idle_s=60.0)
    first.process([home("sleeper", "store-0001"),
                   event("sleeper", "store_visit", T0, store_id="visit-1", curbside=False)])
    clock.now += 61
    assert first.passivate(clock.now) == 1
    first.snapshot()
    s = limited(500, free_text_catalog(), clock=clock, store=first.store, idle_s=60.0)
    s.recover()
    assert "sleeper" not in s.engine.table
    s.process([home("napper", "store-0002", clock.now)])  # passivated here, its text dropped
    clock.now += 61
    assert s.passivate(clock.now) == 1
    for r in range(4):
        s.process([home("attacker", f"junk-{r}-{i}", T0 + r) for i in range(450)])
    assert "store-0002" not in s.engine.compiled.strings.codes
    read = s.process([profile("sleeper", clock.now)])[0][0].value
    assert (read["attributes"]["home_store"], read["features"]["last_store_visited"]) == \
        ("store-0001", "visit-1")  # on main: "<other>", "<other>"
    assert store_of(s, "napper", clock.now) == "store-0002"
    assert s.counts["string_compactions"] >= 3


def test_a_replay_compacts_between_its_chunks(tmp_path):
    """Recovery replays the journal in chunks of REPLAY_CHUNK records: a journal holding more
    distinct strings than the table's room replays whole."""
    first = shard(default_compiled())
    for r in range(6):
        first.process([home("attacker", f"junk-{r}-{i}", T0 + r) for i in range(500)])
    first.process([home("victim", "store-0042", T0 + 10)])
    rebuilt = limited(600, store=first.store)
    rebuilt.recover()
    assert store_of(rebuilt, "victim", T0 + 20) == "store-0042"  # without: "<other>"
    assert store_of(rebuilt, "attacker", T0 + 20) == "junk-5-499"


class Ticking:
    """A table's clock on which every look takes a second: a pass then lasts seconds, and a
    serving shard's next one would wait ten times that (core/strings.py SPACING)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_a_replays_passes_are_not_held_back_by_the_spacing(tmp_path):
    """A replay serves no one and brings its chunks far faster than rounds come: spaced as a
    serving shard's, its passes would wait while the journal's dead strings piled up, and the
    victim's text, replayed last, would read `<other>` (71a815f)."""
    first = shard(default_compiled())
    for r in range(6):
        first.process([home("attacker", f"junk-{r}-{i}", T0 + r) for i in range(500)])
    first.process([home("victim", "store-0042", T0 + 10)])
    rebuilt = limited(600, store=first.store)
    rebuilt.engine.compiled.strings.clock = Ticking()
    rebuilt.recover()
    assert store_of(rebuilt, "victim", T0 + 20) == "store-0042"  # spaced: "<other>"


def test_live_strings_past_the_limit_overflow_counted_and_said_once(caplog):
    s = limited(50)
    with caplog.at_level(logging.WARNING, "kairos.shard"):
        s.process([home(f"c{i}", f"store-{i}") for i in range(60)])
        s.process([home(f"d{i}", f"store-d{i}") for i in range(60)])
    texts = [store_of(s, f"c{i}") for i in range(60)]
    assert texts[:50] == [f"store-{i}" for i in range(50)] and \
        set(texts[50:]) == {"<other>"}  # the last resort: every one of them is live
    assert s.counts["strings_overflowed"] == 70  # the second round: 60, of room for 50
    said = [r.getMessage() for r in caplog.records if "string table" in r.getMessage()]
    assert len(said) == 1 and "home_store (5" in said[0], said
    metrics = recorded(ShardMetrics("s0"))  # as the actor flushes the shard's tallies
    metrics.flush(s.counts.copy(), Tally(), Tally(), 0, 0, 0, 0.0, 0)
    assert metrics.strings_overflowed.calls == [(70, {"shard": "s0"})]


def test_new_strings_take_dead_strings_codes_before_any_overflows():
    """The review's R1: once the residents' strings took more than half the room, the table
    filled with one customer's dead strings before a compaction was due, and the next new
    strings, anyone's, were stored as <other> for good. Now a compaction comes before a round
    may find the table full, and its new strings take the dead strings' codes: every
    resident reads its own text after."""
    s = limited(1000)
    s.process([home(f"r{i}", f"addr-{i}") for i in range(600)])  # 600 live, distinct
    for r in range(4):  # one customer's 400 updates: 399 of them dead at once
        s.process([home("attacker", f"junk-{r}-{i}", T0 + r) for i in range(100)])
    s.process([home("victim", "store-0042", T0 + 10)])
    assert store_of(s, "victim", T0 + 20) == "store-0042"  # before: "<other>", for good
    for r in range(20):  # and so on: the attacker's dead strings are freed as they come
        s.process([home("attacker", f"more-{r}-{i}", T0 + 30 + r) for i in range(100)])
    assert not s.counts["strings_overflowed"]
    assert [store_of(s, f"r{i}", T0 + 60) for i in range(600)] == \
        [f"addr-{i}" for i in range(600)]  # no resident reads a code given out again
    assert store_of(s, "attacker", T0 + 60) == "more-19-99"
    strings = s.engine.compiled.strings
    assert len(strings.strings) <= strings.limit  # 2,400 strings came in a room of 1,000
    stats = s.stats()
    assert stats["string_compactions"] >= 2 and stats["string_compaction_s"] > 0
    metrics = recorded(ShardMetrics("s0"))  # as the actor flushes the shard's tallies
    metrics.flush(s.counts.copy(), Tally(), Tally(), 0, 0, 0, 0.0, 0)
    assert metrics.string_compaction_s.calls == [(stats["string_compaction_s"],
                                                  {"shard": "s0"})]


def test_a_table_its_live_strings_fill_is_not_scanned_every_few_rounds():
    """The review's R2: with more live strings than room (each resident a distinct text),
    every room/64 refused strings made a pass over every resident that freed next to
    nothing: 9 in 20 rounds of 10 new strings. A pass that leaves little room makes the next
    wait for room/16 new strings, then twice as many each time, up to room/4."""
    s = limited(640)
    s.process([home(f"r{i}", f"addr-{i}") for i in range(700)])  # 700 live > room 640
    before = s.counts["string_compactions"]
    for r in range(20):
        s.process([home(f"r{r}", f"new-{r}-{i}", T0 + 1 + r) for i in range(10)])
    assert s.counts["string_compactions"] - before <= 2  # before: 9
    # the strings that died are freed all the same, a pass at least every room/4 new strings
    for r in range(20, 60):
        s.process([home(f"r{r}", f"new-{r}-{i}", T0 + 1 + r) for i in range(10)])
    assert s.counts["string_compactions"] - before <= 2 + 3
    strings = s.engine.compiled.strings
    assert not [r for r in range(40) if f"addr-{r}" in strings.codes]
    assert [store_of(s, f"r{i}", T0 + 70) for i in range(60, 640)] == \
        [f"addr-{i}" for i in range(60, 640)]


def test_a_nearly_full_table_under_churn_frees_dead_strings_before_any_overflows():
    """The review's N1 (of ff71546): live strings at 95% of the room, residents replacing
    their text 8 a round. A pass that freed little (the first, after the residents' own
    strings came) made the next wait for room/16 new strings, more than the 32 codes it left
    vacant: 23 new strings were stored as <other> while the strings they replaced waited,
    dead. Now such a pass, no string having overflowed, waits only for the room it left
    (less room/64), and a pass that frees as many as come waits for nothing but the table
    running short."""
    s = limited(640)
    residents = 608
    s.process([home(f"r{i}", f"addr-{i}") for i in range(residents)])
    rng, last = random.Random(3), [f"addr-{i}" for i in range(residents)]
    for r in range(200):
        who = rng.sample(range(residents), 8)
        s.process([home(f"r{w}", f"new-{r}-{w}", T0 + 1 + r) for w in who])
        for w in who:
            last[w] = f"new-{r}-{w}"
    assert not s.counts["strings_overflowed"]  # before: 23, and 7 residents read <other>
    assert [store_of(s, f"r{i}", T0 + 500) for i in range(residents)] == last


def test_a_handoffs_block_gets_room_from_the_dead_strings_before_it_loads():
    """The review's N2: a handoff's block is interned outside any round, where no pass is
    due: a table with room for a round's strings but not the block's stored 140 of 200
    arriving customers' text as <other> while 279 dead strings waited. Now the adopt
    compacts first when fewer codes are vacant than the block carries."""
    mine, theirs = list(range(32)), list(range(32, N_PARTITIONS))
    b = limited(640, partitions=mine, name="b")
    a = shard(default_compiled(), "a", partitions=theirs)
    ids = [f"c{i}" for i in range(2000)]
    residents = [c for c in ids if p_of(c) in mine][:300]
    movers = [c for c in ids if p_of(c) in theirs][:200]
    b.process([home(c, f"addr-{c}") for c in residents])
    for r in range(28):  # one customer's 280 updates: 279 dead strings
        b.process([home(residents[0], f"junk-{r}-{i}", T0 + r) for i in range(10)])
    a.process([home(c, f"moved-{c}") for c in movers])
    passes = b.counts["string_compactions"]
    assert b.adopt(a.freeze(sorted({p_of(c) for c in movers}), version=2), 2) == len(movers)
    assert b.counts["string_compactions"] == passes + 1 and not b.counts["strings_overflowed"]
    assert [store_of(b, c, T0 + 100) for c in movers] == [f"moved-{c}" for c in movers]
    assert [store_of(b, c, T0 + 100) for c in residents[1:]] == \
        [f"addr-{c}" for c in residents[1:]]


def test_the_first_overflows_warning_that_cannot_count_fields_leaves_the_round(caplog,
                                                                                monkeypatch):
    """The first overflow's warning counts each string field's distinct values (np.unique
    over the residents): a MemoryError there escaped process() after the round was
    journaled, answered UNAVAILABLE. Now the warning goes out without the fields."""
    s = limited(10)

    def out_of_memory(top: int = 3) -> list:
        raise MemoryError
    monkeypatch.setattr(s.engine, "distinct_strings", out_of_memory)
    with caplog.at_level(logging.WARNING, "kairos.shard"):
        replies, _ = s.process([home(f"c{i}", f"store-{i}") for i in range(20)])
    assert all(isinstance(r, EventAck) and r.status == OK for r in replies)
    assert s.counts["strings_overflowed"] == 10
    assert [r for r in caplog.records if "not counted (out of memory)" in r.getMessage()]


def test_a_compaction_that_fails_leaves_the_table_and_the_rounds_answers(caplog):
    """A compaction runs after the round is journaled: one that raises (here a resident's
    slot holding a code the table never gave, as corrupt memory would) is logged, the
    round's answers stand, and the table is as it was, its strings still read."""
    s = limited(100)
    s.process([home(f"c{i}", f"store-{i}") for i in range(10)])
    engine = s.engine
    engine.table.values[engine.table.index["c9"], engine.compiled.layout.slot["home_store"]] \
        = 1e9
    strings = engine.compiled.strings
    before = (dict(strings.codes), list(strings.strings))
    with caplog.at_level(logging.ERROR, "kairos.shard"):
        replies, _ = s.process([home("flood", f"junk-{i}", T0 + 1) for i in range(95)])
    # before: the round raised IndexError, its events journaled but answered UNAVAILABLE
    assert all(isinstance(r, EventAck) and r.status == OK for r in replies)
    held = len(before[1])  # the round's 90 strings then, and 5 overflowed: none freed
    assert strings.strings == before[1] + [f"junk-{i}" for i in range(90)] + ["<other>"]
    assert strings.codes == {**before[0], **{f"junk-{i}": held + i for i in range(90)}}
    assert strings.free == []
    assert [r for r in caplog.records if "compaction failed" in r.getMessage()]
    assert [store_of(s, f"c{i}", T0 + 2) for i in range(9)] == [f"store-{i}" for i in range(9)]
    assert not s.counts["string_compactions"] and s.counts["string_compaction_s"] > 0


KEYS = """keys:
  - {key: 'web-ingest-decide-0123456789', name: web, channel: web, scopes: [ingest, decide]}
  - {key: 'crm-unbound-ingest-profile01', name: crm, scopes: [ingest, profile:read]}
"""
WEB = (("x-api-key", "web-ingest-decide-0123456789"),)
CRM = (("x-api-key", "crm-unbound-ingest-profile01"),)


def test_one_keys_free_text_does_not_turn_every_customers_into_other():
    """The gateway review's repro, over gRPC: one ingest key's 2,000 distinct strings (its
    IngestBatch one round) against a table scaled to room for 1,990."""
    with serving(KEYS) as (gateway, channel):
        for shard_ in gateway.client.backend.shards.values():
            strings = shard_.engine.compiled.strings
            strings.limit = len(strings.strings) + 1990
        stub = DecisionServiceStub(channel)
        stub.IngestBatch(pb.EventBatch(events=[
            pb.Event(customer_id="attacker", type="profile_updated", channel="web",
                     attributes={"home_store": pb.Value(string_value=f"junk-{i}")})
            for i in range(2000)]), metadata=WEB, timeout=60)
        stub.Ingest(pb.Event(customer_id="victim", type="profile_updated",
                             attributes={"home_store": pb.Value(string_value="store-0042")}),
                    metadata=CRM, timeout=10)
        profile_ = stub.GetProfile(pb.ProfileRequest(customer_id="victim"), metadata=CRM,
                                   timeout=10)
        assert profile_.attributes["home_store"].string_value == "store-0042"  # main: <other>
