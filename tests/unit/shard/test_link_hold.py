"""A visitor's request retried by alias while a link of the alias is under way (issue 18): the
customer's shard holds back the events and outcomes that came by way of the alias (`via`) from
the link's Claim until its Merge, LINK_HOLD_S at most, so that a retry is applied once (after
the Merge, a duplicate); the customer's own requests are not held back, but for those a round
holds behind a held one; a link retried once its claim's hold ended holds again, a bounded
number of times; a restart neither restores nor prolongs a hold."""
from __future__ import annotations

import asyncio

import msgpack
import pytest

from kairos.cluster.gateway.requests import Who
from kairos.cluster.identity import anonymous_id, link_id
from kairos.cluster.protocol import Claim, Event, EventAck, Link, Merged, Ok, Outcome, Settle
from kairos.cluster.settings import LINK_HOLD_RENEWALS, LINK_HOLD_S
from kairos.cluster.shard.host import OVERTAKING
from kairos.cluster.shard.identities import FORGETTING
from kairos.cluster.shard.linkhold import BEHIND_LINKING, LINKING
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.frames import frame
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.transport.client import Busy, KairosClient
from tests.support.local_backend import LocalBackend
from tests.unit.shard.test_shard import (N_PARTITIONS, T0, Clock, event, forget, link_steps,
                                         merge, outcome, p_of, profile, resolve, shard, take)
from tests.unit.shard.test_shard_host import run

KEY, ANON, LINK = "cookie:c1", anonymous_id("cookie:c1"), link_id("cookie:c1", "ana")


def claim(key: str = KEY, customer: str = "ana") -> Claim:
    return Claim(partition=p_of(customer), customer_id=customer, key=key,
                 link=link_id(key, customer))


def visit(key: str = "evt-1") -> Event:
    """The visitor's keyed event, addressed to its anonymous id."""
    return event(ANON, "page_view", T0, category="home")._replace(idempotency_key=key)


def by_alias(request: Event | Outcome) -> Event | Outcome:
    """`request` retried by alias once the alias names ana (the gateway's `Who.via`)."""
    return request._replace(partition=p_of("ana"), customer_id="ana",
                            via=Who(None, KEY).via("ana"))


def applied(s: Shard, customer: str = "ana") -> int:
    return s.process([profile(customer, T0 + 60)])[0][0].value["events_applied"]


def test_a_visitors_event_retried_by_alias_during_a_link_is_held_then_a_duplicate(compiled):
    """The repro: the visitor's keyed event applied before the link; the link stopped after
    its step 1, then after its step 2 (the anonymous id answers MERGED: the client re-sends
    it by way of the alias); held each time; after the Merge the retry is a duplicate, and
    the event is applied once."""
    s = shard(compiled, clock=Clock())
    assert s.process([visit()])[0][0].sequence == 1
    assert s.process([claim(), Link(partition=p_of(KEY), key=KEY, customer_id="ana")])[0] == \
        [Ok(), Ok()]
    assert s.process([resolve(KEY)])[0][0].value == "ana"
    assert s.process([by_alias(visit())])[0] == [LINKING]
    state = s.process([take(ANON, LINK, "ana")])[0][0].value
    assert s.process([visit()])[0] == [Merged(customer_id="ana")]
    assert s.process([by_alias(visit())])[0] == [LINKING]
    assert s.process([merge("ana", LINK, KEY, state)])[0] == [Ok(value=True)]
    s.process([Settle(partition=p_of(ANON), anonymous=ANON, link=LINK)])
    assert s.process([by_alias(visit())])[0] == [EventAck(sequence=1, duplicate=True)]
    assert applied(s) == 1


def test_events_and_outcomes_by_alias_are_held_keyed_or_not_the_customers_own_are_not(
        compiled):
    """An unkeyed event or outcome by alias is held too (one let through would overtake a
    keyed one of its stream); the customer's own requests, by its id, are served during the
    link, but for its events and outcomes later in a round than a held one."""
    s = shard(compiled, clock=Clock())
    s.process([claim()])
    keyed_outcome = outcome("ana", "service_menu", None, kind="convert")._replace(
        idempotency_key="crm-1")
    unkeyed = event("ana", "app_open", T0 + 1)
    assert s.process([by_alias(unkeyed), by_alias(keyed_outcome)])[0] == [LINKING, LINKING]
    own = event("ana", "app_open", T0 + 2)._replace(idempotency_key="own-1")
    assert s.process([own])[0][0] == EventAck(sequence=1)
    assert s.process([keyed_outcome])[0][0].status == "ok"
    # in one round: the held one first, the customer's own behind it, another customer's not
    replies = s.process([by_alias(visit()), event("ana", "app_open", T0 + 3),
                         outcome("ana", "service_menu", None), event("bob", "app_open", T0)])[0]
    assert replies[:3] == [LINKING, BEHIND_LINKING, BEHIND_LINKING]
    assert replies[3] == EventAck(sequence=1)
    assert s.process([event("ana", "app_open", T0 + 3)])[0][0] == EventAck(sequence=2)
    assert applied(s) == 2


def test_a_held_request_has_the_host_refuse_its_senders_later_ones_for_the_customer(compiled):
    """The hold answers BUSY, so the sender's later batches, sent before it heard, are refused
    for that customer (OVERTAKING) rather than applied ahead of the held one; its other
    customers, and another sender's requests for the customer, are served."""
    async def test(host):
        assert await host.handle("link", 0, [claim()], [0]) == [Ok()]
        assert await host.handle("a", 0, [by_alias(visit())], [0]) == [LINKING]
        assert await host.handle("a", 1, [event("ana", "app_open", T0),
                                          event("bob", "app_open", T0)], [0, 0]) == \
            [OVERTAKING, EventAck(sequence=1)]
        assert await host.handle("b", 0, [event("ana", "app_open", T0)], [0]) == \
            [EventAck(sequence=1)]
    run(compiled, MemoryStore(), test)


def test_a_round_holds_behind_a_held_request_only_its_senders_later_ones(compiled):
    """Two senders' requests have no order between them: in a round with sender a's request
    by alias held, a's later events and outcomes for the customer are held behind it, b's
    are served, whether b's batch comes between a's or after; a Shard told no senders holds
    them all, as one sender's."""
    s = shard(compiled, clock=Clock())
    s.process([claim()])
    round_ = [by_alias(visit()), event("ana", "app_open", T0 + 1),  # a
              event("ana", "app_open", T0 + 2), outcome("ana", "service_menu", None),  # b
              outcome("ana", "service_menu", None)]  # a again
    replies = s.process(round_, None, [("a", 2), ("b", 2), ("a", 1)])[0]
    assert replies[:2] == [LINKING, BEHIND_LINKING]
    assert replies[2] == EventAck(sequence=1) and replies[3].status == "ok"
    assert replies[4] == BEHIND_LINKING
    assert s.process(round_)[0] == [LINKING] + [BEHIND_LINKING] * 4


def test_the_host_holds_behind_a_held_request_only_its_senders_later_ones(compiled):
    """Through ShardHost, sender a's and b's batches in one round: a's event by alias is held
    and a's later one for the customer behind it; b's is served. Then in a round whose first
    batch the host refuses (a's, OVERTAKING: it is not given to the Shard), b's request by
    alias is held and b's later one behind it, c's served: the Shard's senders count only
    what it is given."""
    async def test(host):
        await host.handle("link", 0, [claim()], [0])
        a, b = await asyncio.gather(
            host.handle("a", 0, [by_alias(visit()), event("ana", "app_open", T0)], [0, 0]),
            host.handle("b", 0, [event("ana", "app_open", T0 + 1)], [0]))
        assert (a, b) == ([LINKING, BEHIND_LINKING], [EventAck(sequence=1)])
        a, b, c = await asyncio.gather(
            host.handle("a", 1, [event("ana", "app_open", T0 + 2)], [0]),
            host.handle("b", 1, [by_alias(visit("evt-2")), event("ana", "app_open", T0 + 3)],
                        [0, 0]),
            host.handle("c", 0, [event("ana", "app_open", T0 + 4)], [0]))
        assert (a, b, c) == ([OVERTAKING], [LINKING, BEHIND_LINKING], [EventAck(sequence=2)])
    run(compiled, MemoryStore(), test)


def test_the_hold_ends_link_hold_s_after_the_claim_and_a_retried_claim_does_not_renew_it(
        compiled):
    """A link whose caller gave up between its steps: its claim holds requests by way of its
    alias LINK_HOLD_S at most, from the first claim; a Claim retried while more than half the
    hold is left (the link retried, cut again) does not prolong it. Another alias's link holds
    nothing of these."""
    clock = Clock()
    s = shard(compiled, clock=clock)
    assert s.process([claim()])[0] == [Ok()]
    clock.now += LINK_HOLD_S / 2 - 1
    assert s.process([claim(), claim("cookie:other")])[0] == [Ok(), Ok()]
    clock.now += LINK_HOLD_S / 2
    assert s.process([by_alias(visit())])[0] == [LINKING]
    clock.now += 1
    assert s.process([by_alias(visit())])[0][0] == EventAck(sequence=1)


def test_a_link_retried_after_its_merge_holds_nothing(compiled):
    """Its Claim of an alias the customer holds already: the visitor's keys are the
    customer's, so a retry by alias is answered as a duplicate, not held."""
    clock = Clock()
    s = shard(compiled, clock=clock)
    s.process([visit(), claim()])
    link_steps(s, s, s, KEY, "ana")
    for _ in range(2):  # retried at once, and again once a hold would have ended
        assert s.process([claim()])[0] == [Ok()]
        assert s.process([by_alias(visit())])[0] == [EventAck(sequence=1, duplicate=True)]
        clock.now += LINK_HOLD_S + 1


@pytest.mark.parametrize("retried_after", [LINK_HOLD_S + 1, LINK_HOLD_S - 0.5])
def test_a_link_retried_late_in_or_after_its_hold_is_held_again_and_applies_once(compiled,
                                                                               retried_after):
    """Review rev46/d-link finding 1: the first LinkIdentity claimed the alias and failed at
    step 1; its caller retried it more than LINK_HOLD_S later (as told: until it answers OK),
    or just before the hold ended, its Link a second later (rev46/d-link2 finding 1). The
    retry's Claim re-arms the hold, so the visitor's retry by alias between the retried link's
    Link and Merge is held (not applied, then applied again by the Merge)."""
    clock = Clock()
    s = shard(compiled, clock=clock)
    s.process([visit(), claim()])
    clock.now += retried_after
    assert s.process([claim()])[0] == [Ok()]
    clock.now += 1
    assert s.process([Link(partition=p_of(KEY), key=KEY, customer_id="ana")])[0] == [Ok()]
    assert s.process([by_alias(visit())])[0] == [LINKING]
    state = s.process([take(ANON, LINK, "ana")])[0][0].value
    assert s.process([merge("ana", LINK, KEY, state)])[0] == [Ok(value=True)]
    s.process([Settle(partition=p_of(ANON), anonymous=ANON, link=LINK)])
    assert s.process([by_alias(visit())])[0] == [EventAck(sequence=1, duplicate=True)]
    assert applied(s) == 1


def test_a_claim_re_arms_its_hold_link_hold_renewals_times_at_most(compiled):
    """However often a caller with the link scope repeats a link (never merging it), its
    claim holds the alias's requests (1 + LINK_HOLD_RENEWALS) * LINK_HOLD_S at most: the
    71d4bba concern, a hold renewed by every repeated link."""
    clock = Clock()
    s = shard(compiled, clock=clock)
    s.process([claim()])
    for _ in range(LINK_HOLD_RENEWALS):
        clock.now += LINK_HOLD_S
        assert s.process([by_alias(event("ana", "app_open", T0))])[0][0].status == "ok"
        s.process([claim()])
        assert s.process([by_alias(visit())])[0] == [LINKING]
    clock.now += LINK_HOLD_S
    s.process([claim()])
    assert s.process([by_alias(visit())])[0][0] == EventAck(sequence=LINK_HOLD_RENEWALS + 1)


def restarted_within_the_hold(compiled, s: Shard, clock, snapshot: bool) -> Shard:
    """`s` restarted (from its journal, or a snapshot) a second before its hold ends, still
    holding a request by alias; its clock then at the hold's end."""
    if snapshot:
        s.snapshot()
    s.close()
    clock.now += LINK_HOLD_S - 1
    again = Shard(s.name, compiled, list(s.owned), N_PARTITIONS, store=s.store, clock=clock)
    again.recover()
    assert again.process([by_alias(visit())])[0] == [LINKING]
    clock.now += 1
    return again


@pytest.mark.parametrize("snapshot", [False, True])
def test_a_restart_keeps_a_claims_re_arms(compiled, snapshot):
    """A re-armed hold, restored from the journal (its retried Claim's time) or a snapshot,
    holds until LINK_HOLD_S after the retry, not after the restart, and a claim that used its
    re-arms up gets none more after a restart."""
    clock = Clock()
    s = shard(compiled, store=MemoryStore(), clock=clock)
    s.process([event("ana", "app_open", T0), claim()])
    for _ in range(LINK_HOLD_RENEWALS):
        clock.now += LINK_HOLD_S
        s.process([claim()])
    again = restarted_within_the_hold(compiled, s, clock, snapshot)
    again.process([claim()])  # no re-arm left
    assert again.process([by_alias(visit())])[0][0] == EventAck(sequence=2)


@pytest.mark.parametrize("snapshot", [False, True])
def test_a_restart_does_not_renew_the_hold(compiled, snapshot):
    """The claim's time is kept with it (its journal record, or the partition's snapshot):
    a shard restarted holds until LINK_HOLD_S after the claim, not after the restart."""
    clock = Clock()
    s = shard(compiled, store=MemoryStore(), clock=clock)
    s.process([event("ana", "app_open", T0), claim()])
    again = restarted_within_the_hold(compiled, s, clock, snapshot)
    assert again.process([by_alias(visit())])[0][0] == EventAck(sequence=2)


def test_a_claim_restored_without_its_time_holds_nothing(compiled):
    """A snapshot or handoff from before claims kept their time: nothing says how old its
    claims are, so they hold nothing back (the window stays open for those links); one from
    before their re-arms (`claimed_at`: times only) holds from those times."""
    s = shard(compiled, clock=Clock())
    s.process([claim()])
    payload = s.directory.export([p_of("ana")])
    assert payload.pop("claim_holds") == {p_of("ana"): {"ana": {KEY: [T0, 0]}}}
    older, times_only, newer = (type(s.directory)(b"secret") for _ in range(3))
    older.load(payload)
    assert older.claims(p_of("ana"), "ana") == [KEY]
    assert not older.linking(p_of("ana"), "ana", ANON, T0)
    times_only.load({**payload, "claimed_at": {p_of("ana"): {"ana": {KEY: T0}}}})
    assert times_only.linking(p_of("ana"), "ana", ANON, T0 + LINK_HOLD_S - 1)
    newer.load(s.directory.export([p_of("ana")]))
    assert newer.linking(p_of("ana"), "ana", ANON, T0 + LINK_HOLD_S - 1)


def test_a_format_6_claim_replays_holding_nothing_until_its_link_is_retried(compiled,
                                                                            tmp_path):
    """A journal's Claim from before claims had times: replayed, it holds nothing back (how
    old it is, nothing says); its link retried now re-arms it, as any claim's whose hold
    ended (the retried link's steps are held)."""
    journal = tmp_path / "journals" / "s0"
    journal.mkdir(parents=True)
    link = Link(partition=p_of(KEY), key=KEY, customer_id="ana")
    (journal / f"{1:020d}.log").write_bytes(
        frame(1, [list(claim())[:5], list(link)], journal_format=6))
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=Clock())
    s.recover()
    assert s.directory.claims(p_of("ana"), "ana") == [KEY]
    assert s.process([by_alias(visit("k1"))])[0][0] == EventAck(sequence=1)
    s.process([claim()])
    assert s.process([by_alias(visit("k2"))])[0] == [LINKING]
    s.close()


def test_a_forget_during_a_link_leaves_no_hold(compiled):
    """The customer forgotten between the link's steps: its claims and their holds go with
    it; a request by the alias meets the forget, not the link."""
    s = shard(compiled, clock=Clock())
    s.process([event("ana", "app_open", T0), claim(),
               Link(partition=p_of(KEY), key=KEY, customer_id="ana")])
    assert s.process([by_alias(visit())])[0] == [LINKING]
    assert s.process([forget("ana")])[0][0].status == "ok"
    assert s.directory.claims(p_of("ana"), "ana") == []
    assert s.directory.holds.held == {}
    assert s.process([by_alias(visit())])[0] == [FORGETTING]


def test_a_partition_handed_off_keeps_its_holds_after_the_source_dropped_it(compiled):
    """The export, packed after its source dropped the partition (as a move does), still
    holds from the claim's time on its new shard."""
    s = shard(compiled, clock=Clock())
    s.process([claim()])
    payload = s.directory.export([p_of("ana")])
    s.directory.drop([p_of("ana")])
    assert not s.directory.linking(p_of("ana"), "ana", ANON, T0)
    moved = type(s.directory)(b"secret")
    moved.load(msgpack.unpackb(msgpack.packb(payload), strict_map_key=False))
    assert moved.linking(p_of("ana"), "ana", ANON, T0 + LINK_HOLD_S - 1)
    assert not moved.linking(p_of("ana"), "ana", ANON, T0 + LINK_HOLD_S)


def test_who_via_names_the_alias_only_when_it_resolved_to_another_customer():
    assert Who(None, KEY).via("ana") == ANON
    assert Who(None, KEY).via(ANON) is None  # not linked: the request is the visitor's
    assert Who("ana", None).via("ana") is None


def test_the_client_follows_a_redirect_by_way_of_the_alias_and_a_retry_applies_once():
    """Through the runtime's client: the link cut after its step 1, then after its step 2;
    the visitor's event retried by alias (sent to the customer with `via`), and to the
    anonymous id (the client follows its MERGED with `via`), is refused BUSY each time; once
    the link is retried to the end, the retry is a duplicate, applied once."""
    backend = LocalBackend()

    async def cut(client: KairosClient, steps: int) -> None:
        link = client.link_steps(KEY, "ana")
        for _ in range(steps):
            await link.__anext__()
        await link.aclose()

    async def send(client: KairosClient, request: Event) -> EventAck:
        return await client.settle(request, await client.enqueue(request))

    async def scenario() -> None:
        await backend.start_runtime(3, n_partitions=16)
        client = await KairosClient(backend).connect()
        try:
            first = Event(customer_id=ANON, event_type="page_view", time=T0,
                          attributes={"category": "home"}, idempotency_key="evt-1")
            assert (await send(client, first)).sequence == 1
            await cut(client, 2)  # Claim, Link
            assert await client.resolve_key(KEY) == "ana"
            retry = first._replace(customer_id="ana", via=Who(None, KEY).via("ana"))
            with pytest.raises(Busy, match="LinkIdentity of the alias"):
                await send(client, retry)
            await cut(client, 3)  # Claim (a retry: no longer hold), Link, Take
            with pytest.raises(Busy, match="LinkIdentity of the alias"):
                await send(client, first)  # MERGED: re-sent to ana by way of the alias
            assert await client.link("cookie", "c1", "ana") is True
            assert await send(client, retry) == EventAck(sequence=1, duplicate=True)
            assert await send(client, first) == EventAck(sequence=1, duplicate=True)
            assert (await client.profile("ana", T0 + 60))["events_applied"] == 1
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_rounds_senders_count_each_batchs_requests_less_those_the_host_answered():
    """rounds.senders_of against the count it stands for, on random rounds (it places each held
    position once: looked for in every batch, an overload's round cost 0.45 s)."""
    import random
    from types import SimpleNamespace

    from kairos.cluster.shard.rounds import senders_of
    rng = random.Random(7)
    for _ in range(500):
        round_ = [SimpleNamespace(session=f"s{rng.randrange(4)}",
                                  requests=[None] * rng.randrange(6))
                  for _ in range(rng.randrange(12))]
        total = sum(len(b.requests) for b in round_)
        held = set(rng.sample(range(total), rng.randrange(total + 1)))
        starts = [sum(len(b.requests) for b in round_[:i]) for i in range(len(round_))]
        assert senders_of(round_, held) == [
            (b.session, sum(start + j not in held for j in range(len(b.requests))))
            for b, start in zip(round_, starts)]
