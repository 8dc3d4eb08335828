"""A forget by alias, cut after a Retire and retried by the same alias (the gateway resolves
the alias on every try): the retired alias resolves to the customer, for a forget saga only,
until its forget is finished, so the retry finishes that customer's forget (identity.py);
other callers get the alias's anonymous customer meanwhile."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster.identity import alias_key, anonymous_id, link_id
from kairos.cluster.protocol import Bury, Forget, Resolve, Retire
from kairos.cluster.settings import TOMBSTONE_S
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.transport.client import Conflict, KairosClient
from tests.support.local_backend import LocalBackend
from tests.unit.shard.test_shard import N_PARTITIONS, T0, Clock, event, p_of, resolve, shard


def test_a_forget_by_alias_cut_after_its_retire_and_retried_forgets_the_whole_customer():
    async def scenario() -> None:
        backend = LocalBackend()
        await backend.start_runtime(3, n_partitions=16)
        client = await KairosClient(backend).connect()
        try:
            await client.ingest("ana", "app_open", T0)
            for v in ("a", "b"):
                await client.ingest(anonymous_id(alias_key("cookie", v)), "page_view", T0,
                                    {"category": "home"})
                await client.link("cookie", v, "ana")
            steps = client.forget_steps(await client.resolve_key("cookie:a"), "cookie:a")
            await steps.__anext__()  # Forget
            await steps.__anext__()  # Retire of cookie:a
            await steps.aclose()  # the caller's deadline
            assert await client._value(Resolve(key="cookie:a", for_forget=True)) == "ana"
            assert await client.resolve_key("cookie:a") == "~cookie:a"
            await client.forget_key("cookie:a")  # the retry, by alias
            assert [await client.resolve("cookie", v) for v in "ab"] == \
                ["~cookie:a", "~cookie:b"]
            for s in backend.shards.values():
                d = s.directory
                assert not any(d.forgetting.values()) and not any(d.retiring.values())
                assert "ana" not in {c for m in d.aliases.values() for c in m.values()}
        finally:
            await client.close()
    asyncio.run(scenario())


def for_forget(key: str) -> Resolve:
    return resolve(key)._replace(for_forget=True)


def test_a_retired_alias_resolves_to_its_customer_across_a_rebuild_until_finished(compiled):
    store, clock = MemoryStore(shared=True), Clock()
    key = alias_key("cookie", "a")
    s = shard(compiled, store=store, clock=clock)
    s.process([event("ana", "app_open", T0)])
    s.process([Retire(partition=p_of(key), key=key, customer_id="ana")])

    def rebuilt() -> Shard:
        s.close()
        again = shard(compiled, store=store, clock=clock)
        again.recover()
        return again
    s = rebuilt()  # replayed from the journal
    assert s.process([for_forget(key)])[0][0].value == "ana"
    s.checkpoint(float("inf"), N_PARTITIONS)
    s = rebuilt()  # from the snapshot
    assert s.process([for_forget(key)])[0][0].value == "ana"
    done = Retire(partition=p_of(key), key=key, customer_id="ana", finished=True)
    assert s.process([done])[0][0].value is True
    assert s.process([for_forget(key)])[0][0].value == anonymous_id(key)
    s = rebuilt()
    assert s.process([for_forget(key)])[0][0].value == anonymous_id(key)


def test_an_alias_its_forgets_client_left_unreleased_resolves_to_its_own_profile_in_time(
        compiled):
    """A forget whose client died after its Bury, before the last Retire: past TOMBSTONE_S
    the alias no longer resolves to the forgotten customer."""
    clock = Clock()
    key = alias_key("cookie", "a")
    s = shard(compiled, clock=clock)
    s.process([Retire(partition=p_of(key), key=key, customer_id="ana")])
    clock.now += TOMBSTONE_S - 1
    assert s.process([for_forget(key)])[0][0].value == "ana"
    clock.now += 1
    assert s.process([for_forget(key)])[0][0].value == anonymous_id(key)


@pytest.mark.parametrize("by_alias", [False, True])
def test_a_forget_cut_after_its_bury_leaves_ordinary_traffic_by_the_alias_anonymous(
        by_alias: bool):
    """The client died after Bury, before the finished Retires: a visitor's event by the
    alias (resolved as the gateway does) goes to the alias's anonymous customer, not to the
    erased id; a retry, by id or by the alias, erases that profile too and releases the
    alias."""
    async def scenario() -> None:
        backend = LocalBackend()
        await backend.start_runtime(3, n_partitions=16)
        client = await KairosClient(backend).connect()
        try:
            await client.ingest("ana", "app_open", T0)
            await client.ingest("~cookie:a", "page_view", T0, {"category": "home"})
            await client.link("cookie", "a", "ana")
            forgotten = await client._ask(Forget(customer_id="ana"))
            await client._value(Retire(key="cookie:a", customer_id="ana"))
            await client._ask(Forget(customer_id="~cookie:a", link=link_id("cookie:a", "ana")))
            await client._ask(Bury(customer_id="ana"))  # and the client died
            assert forgotten.aliases == ["cookie:a"]
            who = await client.resolve("cookie", "a")
            assert who == "~cookie:a"
            await client.ingest(who, "page_view", T0 + 60, {"category": "home"})
            assert not any("ana" in s.engine.table.index for s in backend.shards.values())
            # the visitor's profile by the retired alias is erased with it
            assert await (client.forget_key("cookie:a") if by_alias else client.forget("ana"))
            assert await client._value(Resolve(key="cookie:a", for_forget=True)) == "~cookie:a"
            for s in backend.shards.values():
                assert not any(s.directory.retiring.values())
                assert "~cookie:a" not in s.engine.table.index
        finally:
            await client.close()
    asyncio.run(scenario())


def test_an_alias_a_cut_forget_retired_links_to_another_customer_once_it_finishes():
    """Its next step forgets the alias's anonymous profile: a link to another customer meanwhile
    (which would take that profile) is refused; a retry by the alias finishes the forget."""
    async def scenario() -> None:
        backend = LocalBackend()
        await backend.start_runtime(3, n_partitions=16)
        client = await KairosClient(backend).connect()
        try:
            await client.ingest("ana", "app_open", T0)
            await client.link("cookie", "a", "ana")
            await client.ingest("bob", "app_open", T0)
            steps = client.forget_steps("ana")
            await steps.__anext__()  # Forget
            await steps.__anext__()  # Retire of cookie:a
            await steps.aclose()
            with pytest.raises(Conflict):
                await client.link("cookie", "a", "bob")
            await client.forget_key("cookie:a")
            await client.link("cookie", "a", "bob")
            assert await client.resolve("cookie", "a") == "bob"
        finally:
            await client.close()
    asyncio.run(scenario())
