"""A forget cut after its Bury and retried by id (diff review rev40 d-identity2 finding 1): the
customer's shard keeps its aliases until the forget's last step, so the retry retires and
releases them; the kept list takes no request back and lasts TOMBSTONE_S at most. Also the
times a peer sends in a Forget or Retire, trusted only as a replay's (finding 3), and the
forget check's hot path (finding 4)."""
from __future__ import annotations

import asyncio

import pytest

from kairos.cluster import identity
from kairos.cluster.identity import alias_key, anonymous_id, link_id
from kairos.cluster.protocol import (Bury, Claim, Conflict, EventAck, Forget, Link, Retire,
                                     record_from)
from kairos.cluster.settings import TOMBSTONE_S
from kairos.cluster.shard.shard import Shard
from kairos.cluster.shard.wire import typed
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.transport.client import KairosClient
from tests.support.local_backend import LocalBackend
from tests.unit.shard.test_shard import (N_PARTITIONS, T0, Clock, event, forget, p_of,
                                      shard)


def test_a_forget_cut_after_its_bury_and_retried_by_id_leaves_no_id_and_frees_its_aliases():
    async def scenario() -> None:
        backend = LocalBackend()
        await backend.start_runtime(3, n_partitions=16)
        client = await KairosClient(backend).connect()
        try:
            await client.ingest("ana@example.com", "app_open", T0)
            for v in "ab":
                await client.link("cookie", v, "ana@example.com")
            ana = "ana@example.com"
            forgotten = await client._ask(Forget(customer_id=ana))
            for key in forgotten.aliases:
                await client._value(Retire(key=key, customer_id=ana))
                await client._ask(Forget(customer_id=anonymous_id(key), link=link_id(key, ana)))
            await client._ask(Bury(customer_id=ana))  # the client died here
            assert any(any(s.directory.retiring.values()) for s in backend.shards.values())
            await client.forget("ana@example.com")  # the retry, by id
            for s in backend.shards.values():
                d = s.directory
                assert not any(d.retiring.values()) and not any(d.releasing.values())
                assert not any(d.forgetting.values())
                for _ in range(2):
                    s.snapshot()
                    s.erase()
            assert not [p for p in range(16) if b"ana@example.com" in
                        (backend.store.get_snapshot(p) or b"")]
            for v in "ab":  # no longer refused as a forget's under way
                assert await client.link("cookie", v, "bob") is False
        finally:
            await client.close()
    asyncio.run(scenario())


def _buried(s: Shard, customer: str, key: str) -> None:
    """A forget of the customer and its alias, cut after its Bury."""
    p = p_of(customer)
    s.process([event(customer, "app_open", T0)])
    s.process([Claim(partition=p, customer_id=customer, key=key, link=link_id(key, customer))])
    assert s.process([forget(customer)])[0][0].aliases == [key]
    s.process([Bury(partition=p, customer_id=customer)])


def test_the_aliases_kept_after_a_bury_take_no_request_back_and_survive_a_rebuild(compiled):
    store, clock, key = MemoryStore(shared=True), Clock(), alias_key("cookie", "a")
    s = shard(compiled, store=store, clock=clock)
    _buried(s, "ana", key)
    assert isinstance(s.process([event("ana", "app_open", T0 + 1)])[0][0], EventAck)
    for snapshot in (False, True):  # replayed from the journal, then from a snapshot
        if snapshot:
            s.checkpoint(float("inf"), N_PARTITIONS)
        s.close()
        s = shard(compiled, store=store, clock=clock)
        s.recover()
        assert s.directory.releasing[p_of("ana")]["ana"][0] == [key]
    assert s.process([forget("ana")])[0][0].aliases == [key]  # the retry retires it again
    s.process([Bury(partition=p_of("ana"), customer_id="ana")])
    s.process([Bury(partition=p_of("ana"), customer_id="ana", finished=True)])
    assert not any(s.directory.releasing.values()) and not any(s.directory.forgetting.values())
    s.close()
    s = shard(compiled, store=store, clock=clock)
    s.recover()
    assert not any(s.directory.releasing.values())


def test_the_aliases_kept_after_a_bury_last_tombstone_s(compiled):
    clock, key = Clock(), alias_key("cookie", "a")
    s = shard(compiled, clock=clock)
    _buried(s, "ana", key)
    clock.now += TOMBSTONE_S
    assert s.process([forget("ana")])[0][0].aliases == []
    _buried(s, "bob", key)  # a later forget's Bury drops the expired ones of the partition
    assert "ana" not in s.directory.releasing.get(p_of("ana"), {})


def test_a_journal_of_an_older_format_reads_a_bury_as_its_forgets_end():
    assert record_from(["bury", 3, "ana"], 5).finished is True
    assert record_from(["bury", 3, "ana"]).finished is False


@pytest.mark.parametrize("kind", ["retire", "forget"])
def test_a_time_a_peer_sends_is_not_trusted(compiled, kind: str):
    clock, key = Clock(T0 + 10 * TOMBSTONE_S), alias_key("cookie", "a")
    s = shard(compiled, clock=clock)
    p = p_of(key) if kind == "retire" else p_of("ana")
    raw = ["retire", p, key, "ana", False, 0] if kind == "retire" else \
        ["forget", p, "ana", link_id(key, "ana"), 0]
    request = typed(raw)
    assert isinstance(request, (Retire, Forget)) and request.when == 0
    s.process([request])
    assert s.directory.is_buried(p, link_id(key, "ana"), clock.now)
    if kind == "retire":  # a late step 1 of the buried link
        late = s.process([Link(partition=p, key=key, customer_id="ana")])[0][0]
        assert isinstance(late, Conflict)


def test_the_forget_check_hashes_nothing_for_a_customer_not_being_forgotten(monkeypatch):
    d = identity.Directory(b"secret")
    d.bury_customer(3, "ana", T0)

    def hashed(*args: object) -> str:
        raise AssertionError("a keyed hash on the hot path")
    monkeypatch.setattr(identity, "fingerprint", hashed)
    assert d.being_forgotten(3, "ana", T0) is False
