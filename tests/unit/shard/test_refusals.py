"""What a shard remembers of the requests it refused, and for how long (refusals.py)."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.protocol import Busy, EventAck
from kairos.cluster.shard.host import OVERTAKING
from kairos.cluster.shard.refusals import EVERYTHING, NOTHING, SESSION_KEYS_KEPT, Refusals
from kairos.cluster.shard.sequencer import OutOfTurn
from kairos.cluster.storage.memory_store import MemoryStore

from .test_shard import T0, Clock, forget, profile
from .test_shard_host import app_open, run


async def refuse_cy(host) -> None:
    """At a ceiling of one, with ana resident and two sessions kept: session "b"'s first batch,
    cy's, is refused busy."""
    host._sequencer.kept = 2
    assert await host.handle("a", 0, [app_open("ana")], [0]) == [EventAck(sequence=1)]
    host.shard.residency.resident_limit, host.shard.residency.overflow = 1, 0
    refused, = await host.handle("b", 0, [app_open("cy")], [0])
    assert refused.status == "busy"


def test_a_refused_session_is_refused_once_the_sequencer_has_forgotten_it(compiled):
    """Refused senders go on in fresh sessions, so at the ceiling the sequencer forgets
    sessions fast: a late batch of a refused one, come back unseen, is refused all the
    same, though there is room for it by then."""
    async def test(host):
        await refuse_cy(host)
        assert [r.status for r in await host.handle("c", 0, [forget("ana")], [0])] == ["ok"]
        for i in range(3):
            await host.handle(f"x{i}", 0, [profile("ana")], [0])
        assert "b" not in host._sequencer._turns
        assert await host.handle("b", 1, [app_open("cy", T0 + 1)], [0]) == [OVERTAKING]
        missing, = await host.handle("d", 0, [profile("cy")], [0])
        assert missing.status == "missing"
    run(compiled, MemoryStore(), test, session_start_s=0.05)


def test_the_sequencer_forgets_refused_sessions_before_live_ones(compiled):
    """A refused sender goes on in a fresh session, one per refusal at the ceiling: past the
    sessions kept those abandoned go first, not the live sender least recently heard from
    ("a" still knows where it is: a replay of its batch 0 is out of turn, not its start)."""
    async def test(host):
        await refuse_cy(host)
        await host.handle("c", 0, [profile("ana")], [0])
        with pytest.raises(OutOfTurn):
            await host.handle("a", 0, [app_open("ana")], [0])
    run(compiled, MemoryStore(), test)


def test_a_full_queue_refuses_the_sessions_later_batches_not_those_queued_before(compiled):
    """Batch 0 was queued when batch 1 found the queue full: 0 is an earlier one, which
    1's refusal must not cost, and it is applied; batch 2 would overtake 1, and is refused."""
    async def test(host):
        first, second = await asyncio.gather(host.handle("a", 0, [app_open("ana")], [0]),
                                             host.handle("a", 1, [app_open("bob")], [0]))
        assert (first, second) == ([EventAck(sequence=1)], [Busy()])
        assert await host.handle("a", 2, [app_open("cy")], [0]) == [OVERTAKING]
    run(compiled, MemoryStore(), test, queue_limit=1)


def test_a_request_with_no_customer_in_a_refused_session_is_answered(compiled):
    """A list where the customer goes (unhashable) in a session refused for some customers:
    the check for refused customers failed on it with a TypeError outside the round, whose
    batches were then never answered. (What the shard answers it is the shard's matter.)"""
    async def test(host):
        host.shard.residency.resident_limit, host.shard.residency.overflow = 0, 0
        refused, = await host.handle("b", 0, [app_open("cy")], [0])
        assert refused.status == "busy"
        bad = list(app_open("dan"))
        bad[2] = ["not", "a", "customer"]
        assert len(await asyncio.wait_for(host.handle("b", 1, [bad], [0]), 5)) == 1
        assert host.queued == 0
    run(compiled, MemoryStore(), test)


def test_a_sessions_refusal_names_its_customers_until_it_is_forgotten():
    clock = Clock(0.0)
    refusals = Refusals(keep_s=30.0, clock=clock)
    assert refusals.of("s") is NOTHING
    refusals.refuse("s", 0, ["cy"])
    clock.now = 20.0
    refusals.refuse("s", 0, ["dan"])  # a later refusal: kept 30 s from this one
    assert "cy" in refusals.of("s") and "dan" in refusals.of("s")
    assert "ana" not in refusals.of("s") and refusals.of("t") is NOTHING
    clock.now = 49.0
    assert "cy" in refusals.of("s")
    clock.now = 50.0
    assert refusals.of("s") is NOTHING


def test_a_whole_sessions_refusal_stays_whole():
    refusals = Refusals()
    refusals.refuse("s", 0)
    refusals.refuse("s", 0, ["cy"])
    assert refusals.of("s") is EVERYTHING


def test_past_the_customers_it_may_name_a_sessions_refusal_covers_all_of_it():
    """Memory stays bounded: customers past what it may name cost the session's refusal only
    the sender's later requests (it covers all of them); a session forgotten past the sessions
    kept is no longer held, so a late batch of it may overtake its refused one."""
    refusals = Refusals(kept=3)
    refusals.refuse("s", 0, ["a", "b"])
    refusals.refuse("t", 0, ["c", "d"])
    assert refusals.of("t") is EVERYTHING and "c" not in refusals.of("s")
    refusals.refuse("u", 0, ["e"])
    refusals.refuse("v", 0, ["f"])  # past 3 sessions: the least recently refused is forgotten
    assert refusals.of("s") is NOTHING and "f" in refusals.of("v")


def test_a_session_refused_for_many_customers_is_refused_whole_not_the_others():
    """Sessions refused for many new customers each (a client's batch holds up to 512) are
    refused whole past SESSION_KEYS_KEPT, and leave room to name a later session's customers:
    128 of 512 each used every name REFUSALS_KEPT allows, so each refusal for 30 s more
    covered all of its session."""
    refusals = Refusals()
    for s in range(128):
        refusals.refuse(f"s{s}", 0, [f"c{s}-{i}" for i in range(512)])
    refusals.refuse("next", 0, ["x"])
    assert "x" in refusals.of("next") and "y" not in refusals.of("next")
    assert refusals.of("s0") is EVERYTHING
    refusals.refuse("few", 0, [f"k{i}" for i in range(SESSION_KEYS_KEPT)])
    assert "k0" in refusals.of("few") and "other" not in refusals.of("few")
