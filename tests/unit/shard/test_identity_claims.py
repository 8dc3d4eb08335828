"""What a link's claim (identity.py, step 0) leaves in the directory: nothing once the link
merged (the customer's block holds the alias) or was refused at step 1 (the alias is another
customer's); a bounded number of claims of links whose client died, and of aliases per
customer; and, while the link is under way, an outcome of a decision shown to the alias's
anonymous visitor is taken under the customer."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.identity import CLAIMS_PER_CUSTOMER, anonymous_id, link_id
from kairos.cluster.protocol import Claim, Forgotten, Link, Ok
from kairos.cluster.protocol import Conflict as Refused
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.transport.client import Busy, Conflict, KairosClient
from tests.support.local_backend import LocalBackend
from tests.unit.shard.test_identity_conflicts import claimed_by_l, holding
from tests.unit.shard.test_shard import (N_PARTITIONS, T0, Clock, decide, event, forget,
                                         link_steps, merge, outcome, p_of, shard, take)


def claims(s: Shard) -> list[tuple[str, str]]:
    return [(c, k) for mine in s.directory.claimed.values() for c, keys in mine.items()
            for k in keys]


def claim(customer: str, key: str) -> Claim:
    return Claim(partition=p_of(customer), customer_id=customer, key=key,
                 link=link_id(key, customer))


def test_a_merged_link_leaves_no_claim_its_forget_finds_the_alias_in_the_block(compiled):
    """Claims of finished links were kept until the customer was forgotten: in memory, and
    in every snapshot and handoff of the partition, however many links it had seen. A link
    retried after its merge claims again, and its merge drops that claim too, also when a
    restart replays the journal."""
    clock = Clock()
    s = shard(compiled, store=MemoryStore(), clock=clock)
    for i in range(50):
        key, customer = f"cookie:k{i}", f"cust{i}"
        s.process([event(anonymous_id(key), "page_view", T0, category="home"),
                   claim(customer, key)])
        link_steps(s, s, s, key, customer)
    assert claims(s) == []
    s.process([claim("cust0", "cookie:k0")])  # a retry of a link that merged
    link_steps(s, s, s, "cookie:k0", "cust0")
    assert claims(s) == []
    s.passivate(clock.now + 10**7)
    s.close()
    again = Shard(s.name, compiled, list(s.owned), N_PARTITIONS, store=s.store, clock=clock)
    again.recover()
    assert claims(again) == []
    [forgotten], _ = again.process([forget("cust7")])  # passivated: its home holds the alias
    assert forgotten == Forgotten(existed=True, aliases=["cookie:k7"])


def test_claims_of_links_that_never_merged_are_bounded_by_refusing_new_ones(compiled,
                                                                           monkeypatch):
    """Only a link client that died between Claim and Merge leaves one. At the bound, per
    partition or per customer, a new Claim answers BUSY and changes nothing (no claim is
    dropped: a forget needs each to retire its alias); the claims held may be retried."""
    monkeypatch.setattr("kairos.cluster.identity.CLAIMED_PER_PARTITION", 2)
    monkeypatch.setattr("kairos.cluster.identity.CLAIMS_PER_CUSTOMER", 3)
    s = shard(compiled)
    customers = [c for c in (f"cust{i}" for i in range(100)) if p_of(c) == p_of("cust0")]
    first, second, third = customers[:3]

    def status(customer: str, key: str) -> str:
        return s.process([claim(customer, key)])[0][0].status
    assert [status(first, f"cookie:c{n}") for n in range(4)] == ["ok"] * 3 + ["busy"]
    assert status(second, "cookie:s") == "ok"
    assert status(third, "cookie:t") == "busy"
    assert [status(first, "cookie:c0"), status(second, "cookie:s")] == ["ok", "ok"]
    assert sorted(claims(s)) == sorted([(first, "cookie:c0"), (first, "cookie:c1"),
                                        (first, "cookie:c2"), (second, "cookie:s")])
    [forgotten], _ = s.process([forget(first)])
    assert sorted(forgotten.aliases) == ["cookie:c0", "cookie:c1", "cookie:c2"]


def test_a_forget_after_many_links_cut_before_their_merge_leaves_no_alias_naming_the_id():
    """65 links to one customer cut after their step 1 (review rev43, p5): the 65th is
    refused BUSY before its Claim, and the forget retires the 64 others, so none of them
    names the erased id, and an event by one of them does not bring it back."""
    backend = LocalBackend()

    async def scenario() -> None:
        await backend.start_runtime(3, n_partitions=16)
        client = await KairosClient(backend).connect()
        try:
            await client.ingest("erased-id", "app_open", T0)
            keys = [f"device:d{i:03d}" for i in range(CLAIMS_PER_CUSTOMER + 1)]
            for key in keys[:-1]:
                steps = client.link_steps(key, "erased-id")
                await steps.__anext__()  # Claim
                await steps.__anext__()  # Link; then the caller's deadline
                await steps.aclose()
            with pytest.raises(Busy, match="links under way"):
                await client.link(*keys[-1].split(":"), "erased-id")
            assert await client.resolve_key(keys[-1]) == anonymous_id(keys[-1])
            assert await client.forget("erased-id") is True
            assert [k for k in keys if await client.resolve_key(k) != anonymous_id(k)] == []
            await client.ingest(await client.resolve_key(keys[0]), "app_open", T0 + 60)
            assert await client.profile("erased-id") is None
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_customer_takes_no_alias_past_its_bound(compiled, monkeypatch):
    """Its aliases, merged (its block, also passivated) and claimed, count: another one's
    Claim is CONFLICT and changes nothing, so a forget's reply, listing them all, stays
    within the plane's limits (review rev43: 66,000 aliases made the customer unforgettable);
    a retried link of one it holds goes on."""
    monkeypatch.setattr("kairos.cluster.shard.identities.ALIASES_PER_CUSTOMER", 3)
    clock = Clock()
    s = shard(compiled, store=MemoryStore(), clock=clock)
    s.process([event("ana", "app_open", T0)])
    for key in ("cookie:a", "cookie:b"):
        s.process([claim("ana", key)])
        link_steps(s, s, s, key, "ana")
    s.passivate(clock.now + 10**7)  # its aliases are in its home only
    assert s.process([claim("ana", "cookie:c")])[0] == [Ok()]
    [refused], _ = s.process([claim("ana", "cookie:d")])
    assert isinstance(refused, Refused) and "KAIROS_ALIASES_PER_CUSTOMER" in refused.reason
    assert s.process([claim("ana", "cookie:a")])[0] == [Ok()]  # a retry of a merged link
    assert ("ana", "cookie:d") not in claims(s)
    [forgotten], _ = s.process([forget("ana")])
    assert sorted(forgotten.aliases) == ["cookie:a", "cookie:b", "cookie:c"]


def test_a_merge_without_its_claim_takes_no_alias_past_the_bound(compiled, monkeypatch):
    """A data-plane client that skips the Claim: its Merge of a new alias past
    KAIROS_ALIASES_PER_CUSTOMER is CONFLICT and folds nothing (review rev43 d-identity finding
    4: the bound was held at Claim only); a merged alias's retry goes on."""
    monkeypatch.setattr("kairos.cluster.shard.identities.ALIASES_PER_CUSTOMER", 2)
    s = shard(compiled)
    for key in ("cookie:a", "cookie:b"):  # it bound the link (with no state: sagas.py)
        assert s.process([merge("ana", link_id(key, "ana"), key, None)])[0] == [Ok(value=True)]
    s.process([event("~cookie:c", "page_view", T0, category="home")])
    state = s.process([take("~cookie:c", link_id("cookie:c", "ana"), "ana")])[0][0].value
    [refused], _ = s.process([merge("ana", link_id("cookie:c", "ana"), "cookie:c", state)])
    assert isinstance(refused, Refused) and "KAIROS_ALIASES_PER_CUSTOMER" in refused.reason
    assert s.process([merge("ana", link_id("cookie:a", "ana"), "cookie:a", None)])[0] == \
        [Ok(value=False)]
    [forgotten], _ = s.process([forget("ana")])
    assert sorted(forgotten.aliases) == ["cookie:a", "cookie:b"]


def test_a_link_that_lost_its_alias_leaves_a_later_visitor_of_it_whole_when_forgotten():
    """L claims x, W links x, L's step 1 is refused: L's claim goes. W is forgotten (x is
    anonymous again) and a new visitor uses x: forgetting L erases nothing of that visitor.
    A claim an earlier refused try left (its Unclaim lost) goes with the next try's refusal,
    refused before its own Claim."""
    backend = LocalBackend()

    async def scenario() -> None:
        await backend.start_runtime(3, n_partitions=16)
        client = await KairosClient(backend).connect()
        try:
            key, anon, loser = await claimed_by_l(client)
            await client.link("cookie", "raced", "W")
            try:
                await loser.__anext__()
                raise AssertionError("L's step 1 was not refused")
            except Conflict:
                pass
            assert holding(backend, "L") == []
            assert await client.forget("W") is True
            assert await client.resolve("cookie", "raced") == anon
            await client.ingest(anon, "page_view", T0 + 100, {"category": "home"})
            assert await client.forget("L") is False
            assert (await client.profile(anon, T0 + 101))["events_applied"] == 1
            await client.link("cookie", "raced", "W2")
            await client._ask(Claim(customer_id="L2", key=key, link=link_id(key, "L2")))
            try:
                await client.link("cookie", "raced", "L2")
                raise AssertionError("L2's link was not refused")
            except Conflict:
                pass
            assert holding(backend, "L2") == []
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_an_outcome_sent_under_the_customer_between_take_and_merge_is_taken(compiled):
    """A decision shown to the alias's anonymous visitor; its link has taken the profile but
    not merged it yet (under way, or its client died): the outcome sent under the anonymous
    id is redirected to the customer, and taken there."""
    s = shard(compiled)
    key = "cookie:c9"
    anon, link = anonymous_id(key), link_id(key, "ana")
    s.process([event(anon, "page_view", T0, category="home"), event("ana", "app_open", T0)])
    d = s.process([decide(anon)])[0][0].value
    shown = d.actions[0].action_id
    s.process([claim("ana", key), Link(partition=p_of(key), key=key, customer_id="ana")])
    state = s.process([take(anon, link, "ana")])[0][0].value
    assert s.process([outcome(anon, shown, d.decision_id)])[0][0].status == "merged"
    [taken], _ = s.process([outcome("ana", shown, d.decision_id)])
    assert isinstance(taken, Ok)
    assert s.process([merge("ana", link, key, state)])[0] == [Ok(value=True)]
