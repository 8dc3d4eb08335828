"""A link that loses its alias to another customer's: forgetting the loser leaves the winner's
anonymous profile, redirect and handed-over state alone, and the loser is left no profile
and no alias (identity.py: the sagas)."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.control.partitions import partition_of
from kairos.cluster.identity import alias_key, anonymous_id, link_id
from kairos.cluster.protocol import Claim, Forget, Forgotten
from kairos.cluster.transport.client import Conflict, KairosClient
from tests.support.local_backend import LocalBackend
from tests.unit.shard.test_shard import T0, event, p_of, shard, take


def holding(backend: LocalBackend, customer: str) -> list[str]:
    """Where a shard still holds something of the customer (or notes an alias as its)."""
    found = []
    for s in (s for s in backend.shards.values() if s is not None):
        if customer in s.engine.table.index:
            found.append(f"{s.name} table")
        if customer in s.identities._of:
            found.append(f"{s.name} identities")
        if any(customer in m for m in s.directory.claimed.values()):
            found.append(f"{s.name} claimed")
    return found


def test_forgetting_a_customer_whose_link_was_refused_erases_nothing_of_the_winner():
    """W has claimed and linked cookie:x (its Take and Merge still to come); L's link of x is
    refused; forgetting L must not erase ~x's profile, which is W's to merge; and a customer
    that only tried to link an alias linked to another one never existed."""
    backend = LocalBackend()

    async def scenario() -> None:
        await backend.start_runtime(3, n_partitions=16)
        client = await KairosClient(backend).connect()
        try:
            key = alias_key("cookie", "x")
            await client.ingest("W", "app_open", T0)
            await client.ingest(anonymous_id(key), "page_view", T0, {"category": "home"})
            w = client.link_steps(key, "W")
            await w.__anext__()  # Claim
            await w.__anext__()  # Link
            with pytest.raises(Conflict, match="linked to another customer"):
                await client.link("cookie", "x", "L")
            assert await client.forget("L") is False
            assert holding(backend, "L") == []
            async for _ in w:
                pass
            assert await client.resolve("cookie", "x") == "W"
            assert (await client.profile("W", T0))["events_applied"] == 2
            await client.ingest(anonymous_id(alias_key("cookie", "y")), "page_view", T0,
                                {"category": "home"})
            await client.link("cookie", "y", "W")
            with pytest.raises(Conflict, match="linked to another customer"):
                await client.link("cookie", "y", "L2")
            assert await client.forget("L2") is False
            assert holding(backend, "L2") == []
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


async def claimed_by_l(client: KairosClient):
    """W and ~x (x: cookie "raced") have a profile each, and L's link of x has made its
    Claim: x's key, ~x, and L's link steps to go on with."""
    key = alias_key("cookie", "raced")
    anon = anonymous_id(key)
    await client.ingest("W", "app_open", T0)
    await client.ingest(anon, "page_view", T0, {"category": "home"})
    loser = client.link_steps(key, "L")
    await loser.__anext__()  # L's Claim
    return key, anon, loser


@pytest.mark.parametrize("taken", [False, True])
def test_a_link_that_lost_a_race_for_its_alias_leaves_the_winner_whole_when_forgotten(taken):
    """L claims x first, then W claims and links it, then L's step 1 is refused: L's claim of
    x is dropped (Unclaim). Were that lost (the claim is noted again here), forgetting L
    retires x, but x names W: ~x's profile (before W's Take) or the redirect and the state
    it handed over (after it) are W's."""
    backend = LocalBackend()

    async def scenario() -> None:
        await backend.start_runtime(3, n_partitions=16)
        client = await KairosClient(backend).connect()
        try:
            key, anon, loser = await claimed_by_l(client)
            w = client.link_steps(key, "W")
            for _ in range(3 if taken else 2):  # Claim, Link (and Take)
                await w.__anext__()
            with pytest.raises(Conflict, match="linked to another customer"):
                await loser.__anext__()
            assert holding(backend, "L") == []
            await client._ask(Claim(customer_id="L", key=key, link=link_id(key, "L")))
            assert await client.forget("L") is False
            assert holding(backend, "L") == []
            if taken:  # the redirect keeps W's state until W's Settle
                p = partition_of(anon, 16)
                [entry] = [s.directory.handed_over(p, anon) for s in backend.shards.values()
                           if s is not None and s.directory.handed_over(p, anon) is not None]
                assert entry[2] is not None
            async for _ in w:
                pass
            assert await client.resolve("cookie", "raced") == "W"
            assert (await client.profile("W", T0))["events_applied"] == 2
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_forgetting_an_alias_profile_for_a_link_that_did_not_leave_its_redirect(compiled):
    """A forget of L retired x while x named nobody, then W linked x and took ~x before L's
    forget reached ~x: the redirect is W's link's, and it stays with the state it holds."""
    s = shard(compiled)
    key = alias_key("cookie", "late")
    anon = anonymous_id(key)
    s.process([event(anon, "page_view", T0, category="home")])
    s.process([take(anon, link_id(key, "W"), "W")])
    late = Forget(partition=p_of(anon), customer_id=anon, link=link_id(key, "L"))
    assert s.process([late])[0] == [Forgotten(existed=False, aliases=[])]
    assert s.directory.handed_over(p_of(anon), anon)[2] is not None


def test_unfinished_forgets_dropped_past_their_bound_are_logged(monkeypatch, caplog):
    from kairos.cluster import identity
    monkeypatch.setattr(identity, "TOMBSTONES_PER_PARTITION", 2)
    d = identity.Directory(b"secret")
    for c in ("a", "b", "c"):
        d.start_forget(0, c, [f"cookie:{c}"])
    assert list(d.forgetting[0]) == ["b", "c"]
    assert "forgets never finished" in caplog.text and "'a'" not in caplog.text
