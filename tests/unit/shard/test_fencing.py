"""A shard the controller replaced while it still runs (a node the GCS declared dead that runs
on a while, a partitioned network): its heir fences its journal before reading it, so the old
shard acknowledges nothing the heir did not read, cannot rebuild itself into serving again,
and writes no snapshot or truncation over the heir's; and the heir reads the old journal as
it is, cutting no torn tail under a writer that may be mid-write."""
from __future__ import annotations

import asyncio
import math

import pytest

from kairos.cluster.protocol import EventAck
from kairos.cluster.shard.host import ShardHost
from kairos.cluster.storage import blocks
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.storage.sealed import unseal
from kairos.cluster.storage.store import JournalFenced

from tests.unit.storage.conftest import redis_server  # noqa: F401 (a fixture)

from .test_shard import N_PARTITIONS, T0, Clock, event, forget, p_of, profile, shard

EVERY = {p: 0 for p in range(N_PARTITIONS)}
FROM_S0 = {p: "s0" for p in range(N_PARTITIONS)}


def app_open(customer: str, t: float = T0):
    return event(customer, "app_open", t)


def events_applied(replies) -> list[int]:
    return [reply.value["events_applied"] for reply in replies]


@pytest.mark.parametrize("kind", ["directory", "memory"])
def test_a_shard_replaced_while_it_runs_acknowledges_nothing_its_heir_did_not_read(
        compiled, tmp_path, kind):
    """The old shard keeps running beside its heir: its next round answers UNAVAILABLE, its
    rebuild stays fenced, the heir holds everything it acknowledged, and the heir, started
    again under its own name (as Ray restarts it), is not fenced."""
    memory = MemoryStore(shared=True)

    def host(name: str) -> ShardHost:
        return ShardHost(name, N_PARTITIONS, 0, lambda: DirectoryStore(tmp_path)
                         if kind == "directory" else memory, "fsync", tick_s=3600.0)

    async def main():
        old = host("s0")
        await old.start(compiled, EVERY, [])
        for seq, customer in enumerate(("ana", "bob", "cy")):
            assert await old.handle("a", seq, [app_open(customer)], [0]) == \
                [EventAck(sequence=1)]
        heir = host("s1")
        await heir.start(compiled, EVERY, [], FROM_S0)
        assert heir.shard is not None, heir.recovery
        late, = await old.handle("a", 3, [app_open("ana", T0 + 1)], [0])
        assert late.status == "unavailable" and "s0 is fenced" in late.reason
        await asyncio.sleep(0.5)  # it rebuilds, and retries: its journal stays fenced
        assert old.shard is None and "JournalFenced" in old.recovery["failed"]
        old.stop()
        reads = [profile(c) for c in ("ana", "bob", "cy")]
        assert events_applied(await heir.handle("b", 0, reads, [0] * 3)) == [1, 1, 1]
        assert await heir.handle("b", 1, [app_open("ana", T0 + 2)], [0]) == \
            [EventAck(sequence=2)]
        heir.stop()
        heir.shard.close()
        again = host("s1")
        await again.start(compiled, EVERY, [])
        assert again.shard is not None, again.recovery
        assert events_applied(await again.handle("c", 0, reads, [0] * 3)) == [2, 1, 1]
        assert await again.handle("c", 1, [app_open("bob", T0 + 2)], [0]) == \
            [EventAck(sequence=2)]
        again.stop()
    asyncio.run(asyncio.wait_for(main(), 30))


def journal_named(store: DirectoryStore, partition: int) -> str:
    return blocks.unpack(unseal(store.get_snapshot(partition), "a snapshot")[0])["journal"]


def test_an_heir_reads_the_old_journal_as_it_is_and_the_old_shard_snapshots_nothing_over_it(
        compiled, tmp_path):
    store = DirectoryStore(tmp_path)
    old = shard(compiled, "s0", store=store)
    old.process([app_open("ana"), app_open("bob")])
    segment = max((tmp_path / "journals" / "s0").glob("*.log"))
    with open(segment, "ab") as f:
        f.write(b"\x40\x00\x00\x00torn")  # the header of a batch the old shard is writing
    before = segment.read_bytes()
    heir = shard(compiled, "s1", store=DirectoryStore(tmp_path))
    heir.recover(FROM_S0)
    assert segment.read_bytes() == before  # not cut under its writer
    assert events_applied(heir.process([profile("ana"), profile("bob")])[0]) == [1, 1]
    assert journal_named(store, p_of("ana")) == "s1"
    with pytest.raises(JournalFenced):
        old.snapshot()  # the old shard's tick, say
    assert journal_named(store, p_of("ana")) == "s1"


def test_an_old_shard_fenced_while_it_snapshots_writes_no_snapshot_nor_truncates(
        compiled, tmp_path, monkeypatch):
    """The heir fences, reads, snapshots and drops the old journal (as ShardHost does) between
    the old shard's check and its snapshot write: the write is refused, so the heir's
    snapshots stand (written over, they would name the dropped journal, and the heir's next
    restart would lose what it journaled since), and nothing is truncated."""
    old = shard(compiled, "s0", store=DirectoryStore(tmp_path))
    old.process([app_open("ana")])
    old.snapshot()
    old.process([app_open("ana", T0 + 1)])
    heir = shard(compiled, "s1", store=DirectoryStore(tmp_path))
    put_snapshots = old.store.put_snapshots

    def heir_takes_over_first(snapshots, unless_fenced=None, lsn=None):
        heir.recover(FROM_S0)
        heir.snapshot()
        heir.store.drop_journal("s0")
        put_snapshots(snapshots, unless_fenced, lsn)
    monkeypatch.setattr(old.store, "put_snapshots", heir_takes_over_first)
    truncated = []
    monkeypatch.setattr(old.journal, "truncate", truncated.append)
    with pytest.raises(JournalFenced):
        old.checkpoint(math.inf, N_PARTITIONS)
    assert truncated == []
    assert journal_named(heir.store, p_of("ana")) == "s1"
    heir.process([app_open("ana", T0 + 2)])
    again = shard(compiled, "s1", store=DirectoryStore(tmp_path))
    again.recover()
    assert events_applied(again.process([profile("ana")])[0]) == [3]


@pytest.mark.parametrize("kind", ["directory", "memory", "redis"])
def test_an_old_shard_passivating_after_its_heir_took_over_writes_no_home_over_the_heirs(
        compiled, tmp_path, request, kind):
    """The old shard acknowledged an event; its heir fenced it, recovered, acknowledged
    another and passivated the customer; then the old shard, still running, ticks: its
    passivation is refused, so the heir's home (both events) stands."""
    memory = MemoryStore(shared=True)

    def store():
        if kind == "redis":
            server = request.getfixturevalue("redis_server")
            return RedisStore(f"{server.url}?prefix=zombie")
        return DirectoryStore(tmp_path) if kind == "directory" else memory

    old_clock, heir_clock = Clock(), Clock()
    old = shard(compiled, "s0", store=store(), clock=old_clock, idle_s=60)
    old.process([app_open("ana")])
    heir = shard(compiled, "s1", store=store(), clock=heir_clock, idle_s=60)
    heir.recover(FROM_S0)
    heir.process([app_open("ana", T0 + 10)])
    heir_clock.now = T0 + 200
    heir.tick()
    assert "ana" not in heir.engine.table  # in its home only, with both events
    old_clock.now = T0 + 300
    with pytest.raises(JournalFenced):
        old.tick()
    assert events_applied(heir.process([profile("ana", T0 + 400)])[0]) == [2]


@pytest.mark.parametrize("kind", ["directory", "redis"])
def test_a_passivation_and_a_ticks_home_deletes_check_the_fence_once_for_all_their_homes(
        compiled, tmp_path, request, monkeypatch, kind):
    """The resident limit passivates thousands of customers in a tick: one fence check (a
    shared flock on a directory's fence lock, a WATCH of a Redis fence key) for all their
    homes, where one per home cost a round trip each and kept an heir's fence waiting."""
    from kairos.cluster.storage import directory_store
    if kind == "redis":
        store = RedisStore(f"{request.getfixturevalue('redis_server').url}?prefix=batches")

        def checks() -> int:
            return store.r.info("commandstats").get("cmdstat_watch", {}).get("calls", 0)
    else:
        store, held = DirectoryStore(tmp_path), []
        monkeypatch.setattr(directory_store, "FENCE_HOLD_S", 3600.0)  # one chunk of 40 homes
        real_unfenced = directory_store.unfenced

        def unfenced(directory):
            held.append(directory)
            return real_unfenced(directory)
        monkeypatch.setattr(directory_store, "unfenced", unfenced)

        def checks() -> int:
            return len(held)
    clock = Clock()
    s = shard(compiled, store=store, clock=clock)
    customers = [f"c{i}" for i in range(40)]
    s.process([app_open(c) for c in customers])
    before = checks()
    assert s.passivate(clock.now + 10**6) == 40
    assert checks() - before == 1
    assert store.count(range(N_PARTITIONS)) == 40
    s.process([forget(c) for c in customers[:30]])
    before = checks()
    assert s.durability.delete_homes() == 30
    assert checks() - before == 1
    assert store.count(range(N_PARTITIONS)) == 10
    assert events_applied(s.process([profile(c) for c in customers[30:]])[0]) == [1] * 10
    assert s.process([profile("c0")])[0][0].status == "missing"


@pytest.mark.parametrize("kind", ["directory", "redis"])
def test_a_passivation_fenced_mid_batch_evicts_none_of_its_customers(
        compiled, tmp_path, request, monkeypatch, kind):
    """A batch of homes goes out in several transactions (Redis) or holds of the fence lock
    (a directory), each checking the fence: an heir's fence after the third stops it there
    (JournalFenced). A customer is evicted only once every home is durable, so all stay
    resident, those whose homes went out included, and the shard still answers for them."""
    from kairos.cluster.storage import directory_store, redis_store
    checks = []
    if kind == "redis":
        store = RedisStore(f"{request.getfixturevalue('redis_server').url}?prefix=partial")
        monkeypatch.setattr(redis_store, "PIPELINE_BYTES", 1)  # a home a transaction
        real_unless_fenced = store._unless_fenced

        def unless_fenced(journal, write):
            checks.append(journal)
            if len(checks) == 4:
                store.fence_journal("s0")  # the heir's
            return real_unless_fenced(journal, write)
        monkeypatch.setattr(store, "_unless_fenced", unless_fenced)
    else:
        store = DirectoryStore(tmp_path)
        monkeypatch.setattr(directory_store, "FENCE_HOLD_HOMES", 1)
        real_unfenced = directory_store.unfenced

        def unfenced(directory):
            checks.append(directory)
            if len(checks) == 4:
                store.fence_journal("s0")  # the heir's
            return real_unfenced(directory)
        monkeypatch.setattr(directory_store, "unfenced", unfenced)
    clock = Clock()
    s = shard(compiled, store=store, clock=clock)
    customers = [f"c{i}" for i in range(20)]
    s.process([app_open(c) for c in customers])
    with pytest.raises(JournalFenced):
        s.passivate(clock.now + 10**6)
    assert (len(checks), store.count(range(N_PARTITIONS))) == (4, 3)
    assert all(c in s.engine.table for c in customers)
    assert events_applied(s.process([profile(c) for c in customers])[0]) == [1] * 20
