"""The labels outcomes taught are a customer state of their own ("label_records",
outcomes.TaughtLabels), apart from its idempotency keys: labels push out no event's key and
keys no label (both shared the customer's KEYS_PER_CUSTOMER keys before, so 256 unkeyed
ignores made an event's retry apply again), and a label is kept as long as its decision takes
outcomes (OUTCOME_WINDOW_S; 24 h before, so a convert two days after the accept taught a
second positive). The records ride wherever the customer's block goes: a snapshot and the
journal, a home, a move, a link; a forget erases them."""
from __future__ import annotations

import pytest

from kairos.cluster.identity import anonymous_id
from kairos.cluster.protocol import EventAck, Ok
from kairos.cluster.shard.keys import RECORD
from kairos.cluster.storage import blocks
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.core.decision import Learned
from tests.unit.storage.test_block_extras import SOUND
from tests.unit.storage.test_blocks import exported

from .test_decision_log import respond
from .test_shard import (N_PARTITIONS, T0, Clock, decide, event, forget, link_steps, p_of,
                         shard)

FORGOTTEN, REPEATED = Ok(value=Learned.PROFILE_DECISION_FORGOTTEN), Ok(value=Learned.REPEATED)


def decisions(s, clock: Clock, n: int, customer: str = "ana") -> list:
    """`n` decisions that show an action, a minute apart (one that shows none is passed)."""
    made = []
    while len(made) < n:
        clock.now += 60.0
        d = s.process([decide(customer, now=clock.now)])[0][0].value
        if d.actions:
            made.append(d)
    return made


def test_unkeyed_outcomes_push_out_no_event_key(compiled, monkeypatch):
    monkeypatch.setattr("kairos.cluster.shard.keys.KEYS_PER_CUSTOMER", 8)
    clock = Clock()
    s = shard(compiled, store=MemoryStore(), clock=clock)
    first = event("ana", "page_view", T0 - 60, category="home")._replace(
        idempotency_key="evt-0")
    s.process([first])
    for d in decisions(s, clock, 20):
        assert s.process([respond("ana", d, "ignore", when=clock.now + 1)])[0] == \
            [Ok(value=Learned.DECISION)]
    assert s.process([first])[0] == [EventAck(sequence=1, duplicate=True)]


def test_keyed_events_push_out_no_label(compiled, monkeypatch):
    monkeypatch.setattr("kairos.cluster.shard.keys.KEYS_PER_CUSTOMER", 8)
    clock = Clock()
    s = shard(compiled, store=MemoryStore(), clock=clock)
    [d] = decisions(s, clock, 1)
    assert s.process([respond("ana", d)])[0] == [Ok(value=Learned.DECISION)]
    s.engine._remembered.clear()
    s.process([event("ana", "app_open", T0 + i)._replace(idempotency_key=f"k{i}")
               for i in range(20)])
    assert s.process([respond("ana", d, "convert")])[0] == [REPEATED]


def test_a_label_is_kept_as_long_as_its_decision_takes_outcomes(compiled):
    clock = Clock()
    s = shard(compiled, store=MemoryStore(), clock=clock, idle_s=60.0)
    [d] = decisions(s, clock, 1)
    assert s.process([respond("ana", d)])[0] == [Ok(value=Learned.DECISION)]
    s.engine._remembered.clear()
    clock.now += 2 * 86_400.0  # past the keys' 24 h, within the outcomes' 7 days
    assert s.passivate(clock.now) == 1  # the home keeps what is within the window
    learnt = float(s.engine.models.positives.sum())
    assert s.process([respond("ana", d, "convert", when=clock.now)])[0] == [REPEATED]
    assert float(s.engine.models.positives.sum()) == learnt


def test_past_its_cap_a_customers_oldest_label_is_taught_again(compiled, monkeypatch):
    monkeypatch.setattr("kairos.cluster.shard.outcomes.LABELS_PER_CUSTOMER", 2)
    clock = Clock()
    s = shard(compiled, store=MemoryStore(), clock=clock)
    made = decisions(s, clock, 3)
    s.process([respond("ana", d) for d in made])
    s.engine._remembered.clear()
    assert s.process([respond("ana", d, "convert") for d in made[::-1]])[0] == \
        [REPEATED, REPEATED, FORGOTTEN]
    assert len(s.labels.extra("ana")["label_records"]) == 2 * RECORD.size


def test_labels_taught_before_and_after_a_snapshot_survive_a_restart(compiled):
    clock = Clock()
    s = shard(compiled, store=MemoryStore(), clock=clock)
    d, e = decisions(s, clock, 2)
    s.process([respond("ana", d, "ignore")])
    extra = s.residency.extra("ana")
    assert len(extra["label_records"]) == RECORD.size and "key_records" not in extra
    s.snapshot(range(N_PARTITIONS))
    s.process([respond("ana", e)])  # in the journal only
    rebuilt = shard(compiled, clock=clock, store=s.store)
    rebuilt.recover()
    assert rebuilt.process([respond("ana", d, "reject"), respond("ana", e, "convert")])[0] \
        == [REPEATED] * 2


def test_a_label_moves_with_its_customer(compiled):
    store, clock = MemoryStore(shared=True), Clock()
    a = shard(compiled, "a", store=store, clock=clock)
    b = shard(compiled, "b", partitions=[], store=store, clock=clock)
    [d] = decisions(a, clock, 1)
    assert a.process([respond("ana", d)])[0] == [Ok(value=Learned.DECISION)]
    b.adopt(a.freeze([p_of("ana")], 2), 2)
    a.release([p_of("ana")], 2)
    assert b.process([respond("ana", d, "convert")])[0] == [REPEATED]


def test_a_visitors_labels_are_folded_into_the_customers_by_a_link(compiled):
    s = shard(compiled, store=MemoryStore(), clock=Clock())
    visitor = anonymous_id("cookie:c1")
    s.process([event(visitor, "page_view", T0 - 60, category="home")])
    sent = s.process([decide(visitor)])[0][0].value
    s.process([respond(visitor, sent)])
    link_steps(s, s, s, "cookie:c1", "ana")
    assert len(s.labels.extra("ana")["label_records"]) == RECORD.size
    assert s.labels.extra(visitor) == {}


def test_a_forget_erases_the_customers_labels(compiled):
    clock = Clock()
    s = shard(compiled, store=MemoryStore(), clock=clock)
    [d] = decisions(s, clock, 1)
    s.process([respond("ana", d)])
    assert s.labels.extra("ana")
    s.process([forget("ana")])
    assert s.labels.extra("ana") == {}


@pytest.mark.parametrize("records", [bytes(RECORD.size - 1), None, [b"x"]], ids=repr)
def test_malformed_label_records_are_corrupt(compiled, records):
    block = exported(compiled)
    with pytest.raises(blocks.BlockCorrupt, match="label_records"):
        blocks.validate({**block, "extras": [block["extras"][0],
                                             {**SOUND, "label_records": records}]})


def test_blocks_with_and_without_label_records_are_sound(compiled):
    block = exported(compiled)
    blocks.validate({**block, "extras": [SOUND, {**SOUND, "label_records":
                                                 bytes(2 * RECORD.size)}]})
