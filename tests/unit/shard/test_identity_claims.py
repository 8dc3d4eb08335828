"""What a link's claim (identity.py, step 0) leaves in the directory: nothing once the link
merged (the customer's block holds the alias) or was refused at step 1 (the alias is another
customer's); a bounded number of claims of links whose client died; and, while the link is
under way, an outcome of a decision shown to the alias's anonymous visitor is taken under
the customer."""
from __future__ import annotations

import asyncio
import logging

from kairos.cluster.identity import Directory, anonymous_id, link_id
from kairos.cluster.protocol import Claim, Forgotten, Link, Ok
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.transport.client import Conflict, KairosClient
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


def test_claims_of_links_that_never_merged_are_bounded(monkeypatch, caplog):
    """Only a link client that died between Claim and Merge leaves one: past the bound, the
    oldest customer's go, logged without its id."""
    monkeypatch.setattr("kairos.cluster.identity.CLAIMED_PER_PARTITION", 2)
    d = Directory(b"k" * 32)
    with caplog.at_level(logging.ERROR, logger="kairos.shard"):
        for customer in ("cust-old-1", "cust-2", "cust-old-1", "cust-3"):
            d.claim(0, customer, f"cookie:{customer}")
    assert d.claimed[0] == {"cust-old-1": ["cookie:cust-old-1"], "cust-3": ["cookie:cust-3"]}
    assert "links claimed and never merged" in caplog.text and "cust-2" not in caplog.text


def test_one_customers_claims_of_links_that_never_merged_are_bounded(monkeypatch, caplog):
    """Links cancelled again and again between Claim and Merge leave a claim each: past the
    bound, the customer's oldest goes, logged without its id."""
    monkeypatch.setattr("kairos.cluster.identity.CLAIMS_PER_CUSTOMER", 3)
    d = Directory(b"k" * 32)
    with caplog.at_level(logging.ERROR, logger="kairos.shard"):
        for n in range(5):
            d.claim(0, "cust-many", f"cookie:c{n}")
    assert d.claims(0, "cust-many") == ["cookie:c2", "cookie:c3", "cookie:c4"]
    assert "aliases claimed by links never merged" in caplog.text
    assert "cust-many" not in caplog.text


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
