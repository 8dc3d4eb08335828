"""A shard's durability without Ray: journal, snapshots, homes and recovery.

The oracle is a twin shard that never crashes: the same requests go to both, the subject is
thrown away at random moments and rebuilt from its store, and afterwards every customer's
profile (features, history, timers, sequence numbers) must equal the twin's.
"""
from __future__ import annotations

import random
import shutil
import zlib

import msgpack
import pytest

from kairos.cluster.storage import blocks
from kairos.cluster.identity import alias_key, anonymous_id
from kairos.cluster.control.partitions import partition_of
from kairos.cluster.protocol import OK, EventAck, Missing, Ok, Outcome, Resolve
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.frames import HEADER, JournalCorrupt
from kairos.cluster.storage.journal import Journal
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.sealed import SnapshotCorrupt, unseal
from kairos.cluster.storage.store import StoreUnavailable

from kairos.cluster.storage.redis_server import RedisServer
from tests.support.faults import fsync_fails_once
from tests.support.waiting import until
from tests.unit.shard.test_shard import (N_PARTITIONS, T0, Clock, decide, event, forget,
                                         journey, link_steps, p_of, profile, shard, watch)

CUSTOMERS = [f"c{i}" for i in range(24)]
OFFERED = [("service_menu", "web"), ("cart_recovery_push", "push")]


def everyone(s: Shard, clock: Clock, extra=()) -> dict:
    ids = CUSTOMERS + list(extra)
    results, _ = s.process([profile(c, clock.now) for c in ids])
    return dict(zip(ids, results))


def rebuilt(old: Shard, clock: Clock, **kw) -> Shard:
    """What a restarted shard process does: a new Shard on the same store, recovered."""
    old.close()
    new = Shard(old.name, old.compiled, list(old.owned), N_PARTITIONS, store=old.store,
                clock=clock, steady=clock, idle_s=old.idle_s, **kw)
    new.recover()
    return new


class Steps:
    """A reproducible mix of everything that changes a shard."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.keys: list[tuple] = []

    def next(self, clock: Clock) -> list:
        rng = self.rng
        clock.now += rng.uniform(1, 400)
        roll = rng.random()
        c = rng.choice(CUSTOMERS)
        if roll < 0.55:
            batch = journey(c, rng.randint(1, 4), seed=rng.randrange(10**6), t0=clock.now)
            keyed = [r._replace(idempotency_key=f"k{rng.randrange(10**9)}") for r in batch]
            self.keys.extend(keyed)
            return keyed
        if roll < 0.65 and self.keys:  # a client retrying an event it sent before
            return [rng.choice(self.keys)]
        if roll < 0.75:
            return [event(c, "add_to_cart", clock.now, product_id="tv", category="electronics",
                          price=199.0)]
        if roll < 0.85:
            action, channel = rng.choice(OFFERED)
            return [Outcome(partition=p_of(c), customer_id=c, action_id=action,
                            channel=channel, outcome=rng.choice(["impression", "accept",
                                                                 "reject"]),
                            when=clock.now)]
        if roll < 0.9:
            return [watch(c, "sink", "app")]
        return [forget(c)]


@pytest.fixture(params=["memory", "directory"])
def store_factory(request, tmp_path):
    if request.param == "memory":
        return lambda: MemoryStore()
    return lambda: DirectoryStore(tmp_path / "store")


@pytest.mark.parametrize("seed", range(4))
def test_a_shard_rebuilt_from_its_store_equals_one_that_never_crashed(compiled, store_factory,
                                                                      seed):
    clock = Clock()
    twin = shard(compiled, "twin", clock=clock, idle_s=900)
    subject = shard(compiled, "s0", store=store_factory(), clock=clock, idle_s=900)
    steps, rng = Steps(seed), random.Random(seed + 100)
    crashes = 0
    for _ in range(300):
        requests = steps.next(clock)
        a, _ = twin.process(requests)
        b, _ = subject.process(requests)
        assert [r[:2] for r in a] == [r[:2] for r in b]  # same acks (sequence numbers)
        roll = rng.random()
        if roll < 0.15:  # a tick: timers fire, idle customers go to their homes
            twin.tick()
            subject.tick()
        elif roll < 0.2:
            subject.checkpoint(clock.now, 8)  # some partitions snapshotted, the journal cut
        elif roll < 0.25:
            subject.passivate(clock.now + 10**6)  # everyone to their homes
        elif roll < 0.33:
            subject = rebuilt(subject, clock)
            crashes += 1
    assert crashes > 5
    subject = rebuilt(subject, clock)
    assert everyone(subject, clock) == everyone(twin, clock)
    for c in CUSTOMERS:
        if c in twin.engine.table:
            subject.process([profile(c, clock.now)])
            assert subject.engine.table.export(c).equals(twin.engine.table.export(c))


def test_a_retried_event_after_a_crash_is_applied_once(compiled, store_factory):
    clock = Clock()
    s = shard(compiled, store=store_factory(), clock=clock)
    keyed = event("ana", "app_open", T0)._replace(idempotency_key="key-1")
    assert s.process([keyed])[0] == [EventAck(sequence=1)]
    s = rebuilt(s, clock)
    assert s.process([keyed])[0] == [EventAck(sequence=1, duplicate=True)]
    assert s.process([profile("ana")])[0][0].value["events_applied"] == 1


def test_timers_and_watches_survive_a_crash_and_fire_once(compiled, store_factory):
    clock = Clock()
    s = shard(compiled, store=store_factory(), clock=clock)
    s.process([event("ana", "profile_updated", T0 - 86400, marketing_opt_in=True,
                     push_opt_in=True),
               watch("ana", "sink-1", "push"),
               event("ana", "add_to_cart", T0, product_id="tv", category="electronics",
                     price=199.0)])
    s = rebuilt(s, clock)
    assert s.process([profile("ana")])[0][0].value["timers"] == {"cart_abandoned": T0 + 1800}
    clock.now = T0 + 1801
    pushes = s.tick()
    assert [(x.sink, [a.action_id for a in x.decision.actions]) for x in pushes] == \
        [("sink-1", ["cart_recovery_push"])]
    fired = s.process([profile("ana", clock.now)])[0][0].value
    s = rebuilt(s, clock)  # the firing was journaled: it is neither lost nor repeated
    assert s.process([profile("ana", clock.now)])[0][0].value == fired
    assert s.tick() == []


def test_a_new_shard_recovers_a_dead_ones_partitions_from_its_journal(compiled, tmp_path):
    """A node died: its shard is gone; another shard, on another node, takes its partitions
    from the snapshots and the dead shard's journal, then the dead journal can go."""
    clock = Clock()
    store = DirectoryStore(tmp_path)
    dead = shard(compiled, "dead", store=store, clock=clock)
    for i, c in enumerate(CUSTOMERS):
        dead.process(journey(c, 10, seed=i))
        if i == 10:
            dead.checkpoint(clock.now, N_PARTITIONS)  # half in snapshots, half in the journal
    expected = everyone(dead, clock)
    heir = Shard("heir", compiled, list(dead.owned), N_PARTITIONS, store=DirectoryStore(tmp_path),
                 clock=clock)
    report = heir.recover({p: "dead" for p in dead.owned})
    assert report["journals"] == ["dead"] and report["replayed"] > 0
    store.drop_journal("dead")
    assert everyone(heir, clock) == expected
    again = rebuilt(heir, clock)  # the heir's own snapshots now name it
    assert everyone(again, clock) == expected


def test_forget_erases_the_customer_from_memory_homes_snapshots_and_journal(compiled, tmp_path):
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    secret = "customer-to-forget-7f3a"
    s.process(journey(secret, 8) + journey("bob", 8, seed=1))
    s.checkpoint(clock.now, N_PARTITIONS)
    s.process([event(secret, "app_open", T0 + 3600)])
    s.passivate(clock.now + 10**6)  # a home in the store too
    s.process([forget(secret)])
    s.tick()
    leftovers = [path for path in tmp_path.rglob("*") if path.is_file()
                 and secret.encode() in path.read_bytes()]
    assert leftovers == []
    s = rebuilt(s, clock)
    assert s.process([profile(secret)])[0] == [Missing()]
    assert s.process([profile("bob")])[0][0].status == OK


def test_a_link_survives_a_crash_of_every_shard_it_touched(compiled, store_factory):
    clock = Clock()
    store = store_factory()
    store.shared = True
    key = alias_key("cookie", "abc")
    anon = anonymous_id(key)
    host = shard(compiled, "host", store=store, clock=clock)
    assert host.process([event(anon, "page_view", T0, category="home")])[0][0].status == OK
    _, merged = link_steps(host, host, host, key, "ana")
    assert merged == Ok(value=True)
    expected = host.process([profile("ana")])[0][0]
    host = rebuilt(host, clock)
    assert host.process([profile("ana")])[0][0] == expected
    assert host.process([Resolve(partition=p_of(key), key=key)])[0] == [Ok(value="ana")]
    _, merged_again = link_steps(host, host, host, key, "ana")  # a retried link: no-op
    assert merged_again == Ok(value=False) and host.process([profile("ana")])[0][0] == expected


def test_a_failed_journal_write_acknowledges_nothing(compiled, tmp_path, monkeypatch):
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    s.process([event("ana", "app_open", T0)])

    def disk_full(records, sync=True):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(s.journal, "append", disk_full)
    with pytest.raises(StoreUnavailable, match="No space left on device"):
        s.process([event("ana", "app_open", T0 + 1), event("bob", "app_open", T0 + 1)])
    monkeypatch.undo()
    s = rebuilt(s, clock)  # what the actor does: the un-acknowledged round is gone
    assert s.process([profile("ana")])[0][0].value["events_applied"] == 1
    assert s.process([profile("bob")])[0] == [Missing()]


def test_recovery_through_redis(compiled, tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        from kairos.cluster.storage.providers import open_store
        clock = Clock()
        s = shard(compiled, store=open_store(server.url), clock=clock)
        for i, c in enumerate(CUSTOMERS[:8]):
            s.process(journey(c, 6, seed=i))
        s.checkpoint(clock.now, 4)
        expected = everyone(s, clock)
        server.stop()
        with pytest.raises(StoreUnavailable):
            s.process([event("c0", "app_open", T0 + 10)])
        server.start()  # the same data directory: the append-only file brings it all back
        s = Shard("s0", compiled, list(s.owned), N_PARTITIONS, store=open_store(server.url),
                  clock=clock)
        s.recover()
        assert everyone(s, clock) == expected
    finally:
        server.stop()


def test_blocks_keep_lsns_only_for_their_own_journal(compiled):
    s = shard(compiled, "a")
    s.process([event("ana", "app_open", T0)])
    block = blocks.unpack(blocks.pack(s.residency.export(["ana"])))
    assert block["journal"] == "a" and int(block["lsn"][0]) == s.journal.last_lsn
    other = shard(compiled, "b")
    blocks.import_block(other.engine, block, "b")
    assert other.engine.table.lsn[other.engine.table.index["ana"]] == 0


def test_a_partition_being_handed_over_is_never_snapshotted_by_its_old_owner(compiled):
    clock = Clock()
    store = MemoryStore(shared=True)
    a = shard(compiled, "a", store=store, clock=clock)
    b = shard(compiled, "b", partitions=[], store=store, clock=clock)
    p = partition_of("ana", N_PARTITIONS)
    a.process([event("ana", "app_open", T0), forget("bob")])
    payload = a.freeze([p], version=2)
    b.adopt(payload, 2)
    adopted = store.get_snapshot(p)
    clock.now += 10**6
    a.tick()  # erase and checkpoint run while the controller has not released p yet
    a.checkpoint(float("inf"), N_PARTITIONS)
    assert store.get_snapshot(p) == adopted
    assert blocks.unpack(unseal(adopted, "p")[0])["journal"] == "b"
    a.release([p], 2)
    assert rebuilt(b, clock).process([profile("ana")])[0][0].value["events_applied"] == 1


def test_snapshots_and_homes_never_name_an_lsn_the_journal_has_not_made_durable(compiled,
                                                                               tmp_path):
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock, idle_s=60.0)
    s.sync_commits = False  # as in ShardActor: rounds are synced after process() returns
    s.process([event("ana", "app_open", T0), event("bob", "app_open", T0)])
    assert s.journal.unsynced
    s.snapshot(list(s.owned))
    assert not s.journal.unsynced
    s.process([event("ana", "app_open", T0 + 1)])
    assert s.journal.unsynced
    clock.now += 600.0
    assert s.passivate(clock.now) == 2
    assert not s.journal.unsynced


def test_a_journal_of_plain_arrays_in_the_old_layout_still_replays(compiled, tmp_path):
    """Journals written before records were named (format 1: frames `[first lsn, records]`,
    records plain arrays) replay into the same customers."""
    clock = Clock()
    live = shard(compiled, clock=clock)
    key = alias_key("cookie", "old")
    anon = anonymous_id(key)
    p = p_of("ana")
    live.process([event("ana", "add_to_cart", T0, product_id="tv", category="electronics",
                        price=199.0)._replace(idempotency_key="k1"),
                  event("ana", "app_open", T0 + 3600)])  # the cart timer fires first
    shown = live.process([decide("ana", "web", now=T0 + 3650)])[0][0].value  # outcomes name one
    action = shown.actions[0].action_id
    live.process([Outcome(partition=p, customer_id="ana", action_id=action, channel="web",
                          outcome="accept", when=T0 + 3700, decision_id=shown.decision_id),
                  watch("ana", "sink-1", "push"),
                  event(anon, "page_view", T0, category="home"),
                  event("bob", "app_open", T0), forget("bob")])
    link_steps(live, live, live, key, "ana")
    written = [record for _, record in live.journal.replay()]
    assert [tuple(r) for r in written[:5]] == [
        ("event", p, "ana", "add_to_cart", T0,
         {"product_id": "tv", "category": "electronics", "price": 199.0}, "k1", 1),
        ("fire", p, "ana", "cart_abandoned", T0 + 1800),
        ("event", p, "ana", "app_open", T0 + 3600, {}, None, 3),
        ("outcome", p, "ana", action, "web", "accept", T0 + 3700,
         shown.decision_id.split(".")[0], None, None, None),
        ("watch", p, "ana", "sink-1", "push", None, True, None)]
    assert {r[0] for r in written} >= {"forget", "link", "take", "merge", "settle"}
    segment = tmp_path / "journals" / "s0"
    segment.mkdir(parents=True)
    # format 1's outcomes had no value field, its watches no `by`, its forgets no `when`
    fields = {"outcome": 8, "watch": 7, "forget": 4}
    payload = msgpack.packb([1, [tuple(r)[:fields.get(r[0])] for r in written]],
                            use_bin_type=True)
    (segment / f"{1:020d}.log").write_bytes(HEADER.pack(len(payload), zlib.crc32(payload)) +
                                            payload)
    old = Shard("s0", compiled, list(live.owned), N_PARTITIONS,
                store=DirectoryStore(tmp_path), clock=clock)
    assert old.recover()["replayed"] == len(written)
    assert everyone(old, clock, ["ana", "bob", anon]) == everyone(live, clock, ["ana", "bob",
                                                                               anon])
    assert old.process([Resolve(partition=p_of(key), key=key)])[0] == [Ok(value="ana")]
    assert old.process([event("ana", "app_open", T0)._replace(idempotency_key="k1")])[0] == \
        [EventAck(sequence=1, duplicate=True)]


def test_a_flipped_byte_anywhere_in_a_journal_never_loses_or_repeats_an_acknowledged_record(
        tmp_path):
    """Every byte of every segment flipped in turn: the journal either refuses (corrupt),
    or replays every acknowledged record, or (a whole last frame that fails its CRC, which
    a power cut mid-write also leaves) every record but the last batch's, and then never
    gives out their LSNs again."""
    directory = tmp_path / "j"
    j = Journal(directory, segment_bytes=200)
    batches = [[["event", p, f"c{p}", float(b)] for p in range(3)] for b in range(8)]
    for batch in batches:
        j.append(batch)
    j.close()
    acked = [(lsn, r) for lsn, r in enumerate((r for b in batches for r in b), 1)]
    segments = {path: path.read_bytes() for path in sorted(directory.glob("*.log"))}
    assert len(segments) >= 3
    outcomes = {"refused": 0, "whole": 0, "last batch cut": 0}
    for path, original in segments.items():
        for offset in range(len(original)):
            damaged = bytearray(original)
            damaged[offset] ^= 1 << (offset % 8)
            path.write_bytes(bytes(damaged))
            try:
                reopened = Journal(directory, segment_bytes=200)
                replayed = list(reopened.replay())
            except JournalCorrupt:
                outcomes["refused"] += 1
            else:
                if replayed == acked:
                    outcomes["whole"] += 1
                else:
                    assert replayed == acked[:-len(batches[-1])], (path.name, offset)
                    assert reopened.append([["event", 0, "c0", 99.0]]) > len(acked)
                    outcomes["last batch cut"] += 1
                reopened.close()
            for segment, data in segments.items():  # back to the undamaged journal
                segment.write_bytes(data)
            for extra in set(directory.glob("*.log")) - set(segments):
                extra.unlink()
            shutil.rmtree(directory / "quarantine", ignore_errors=True)
    assert outcomes["refused"] > 0 and outcomes["last batch cut"] > 0


def test_a_damaged_snapshot_stops_recovery_naming_it_until_it_is_removed(compiled, tmp_path):
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    s.process([event("ana", "add_to_cart", T0, product_id="tv", category="electronics",
                     price=199.0), event("ana", "app_open", T0 + 5)])
    expected = everyone(s, clock)
    p = p_of("ana")
    s.snapshot([p])
    path = tmp_path / "snapshots" / f"p{p}.snap"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorrupt, match=f"the snapshot of partition {p} in {tmp_path}: "
                                              f"the checksum of its {len(data)} bytes fails"):
        rebuilt(s, clock)
    assert issubclass(SnapshotCorrupt, StoreUnavailable)  # the host retries until it is gone
    path.unlink()  # the way out: the partition replays its journal (not truncated here)
    assert everyone(rebuilt(s, clock), clock) == expected


def test_a_snapshot_written_before_sealing_still_recovers_and_is_counted_unchecked(compiled,
                                                                                   tmp_path):
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    s.process([event("ana", "app_open", T0)])
    expected = everyone(s, clock)
    p = p_of("ana")
    s.snapshot([p])
    path = tmp_path / "snapshots" / f"p{p}.snap"
    snap = blocks.unpack(unseal(path.read_bytes(), "p")[0])
    path.write_bytes(blocks.pack({**snap, "format": 1}))  # as format 1 was: unsealed
    s.close()
    again = Shard(s.name, compiled, list(s.owned), N_PARTITIONS, store=s.store, clock=clock)
    assert again.recover()["unchecked_snapshots"] == 1
    assert everyone(again, clock) == expected


def test_a_corrupt_journal_keeps_the_host_unavailable_naming_it_until_it_is_quarantined(
        compiled, tmp_path, monkeypatch):
    """The operator's view and way out: the host answers UNAVAILABLE and its `recovery`
    (shown by the actor's health) names the segment and the byte; once the segment is moved
    into quarantine/ the host recovers by itself from the snapshot and serves again."""
    import asyncio

    from kairos.cluster.protocol import EventAck, Unavailable
    from kairos.cluster.shard.host import ShardHost

    store = DirectoryStore(tmp_path)
    segments = tmp_path / "journals" / "s0"

    async def scenario():
        host = ShardHost("s0", N_PARTITIONS, 0, lambda: store, "fsync", tick_s=3600.0)
        await host.start(compiled, {p: 0 for p in range(N_PARTITIONS)}, [])
        try:
            assert await host.handle("a", 0, [event("ana", "app_open", T0)], [0]) == \
                [EventAck(sequence=1)]
            await host.run(Shard.snapshot, list(range(N_PARTITIONS)))
            assert await host.handle("a", 1, [event("ana", "app_open", T0 + 1)], [0]) == \
                [EventAck(sequence=2)]
            segment, = segments.glob("*.log")
            damaged = bytearray(segment.read_bytes())
            damaged[HEADER.size + 2] ^= 0x04  # inside the first batch; intact ones follow
            segment.write_bytes(bytes(damaged))
            fsync_fails_once(monkeypatch)
            unavailable, = await host.handle("a", 2, [event("ana", "app_open", T0 + 2)], [0])
            assert unavailable.status == "unavailable"
            await until(lambda: "failed" in host.recovery, 20, "the rebuild to fail")
            assert f"JournalCorrupt: {segment}: damaged frame at byte 0" in \
                host.recovery["failed"]
            assert await host.handle("b", 0, [profile("ana")], [0]) == \
                [Unavailable(reason="s0 is recovering from the store")]
            (segments / "quarantine").mkdir()
            segment.rename(segments / "quarantine" / segment.name)  # the way out
            await until(lambda: host.shard is not None, 20, "the host to recover")
            assert "failed" not in host.recovery
            # refused, "a" and "b" go on in fresh sessions, as clients do
            ana, = await host.handle("b2", 0, [profile("ana")], [0])
            assert ana.value["events_applied"] == 1  # the snapshot's; the segment's is gone
            assert await host.handle("a2", 0, [event("ana", "app_open", T0 + 3)], [0]) == \
                [EventAck(sequence=2)]
            assert host.shard.journal.last_lsn > 2  # past every LSN the segment held
        finally:
            host.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_round_past_the_frame_limit_is_refused_not_acknowledged_and_lost(compiled, tmp_path,
                                                                             monkeypatch):
    """Readers refuse frames past MAX_FRAME, so a round that packs to more must never be
    acknowledged (it used to be written, acknowledged, then cut off as a torn tail)."""
    from kairos.cluster.storage import frames
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    s.process([event("ana", "app_open", T0)])
    monkeypatch.setattr(frames, "MAX_FRAME", 600)
    big = [event("ana", "page_view", T0 + i, category="home") for i in range(1, 40)]
    with pytest.raises(StoreUnavailable, match="past the journal's 600-byte frame limit"):
        s.process(big)
    again = rebuilt(s, clock)
    assert again.process([profile("ana", clock.now)])[0][0].value["events_applied"] == 1
    assert again.process([event("ana", "app_open", T0 + 50)])[0] == [EventAck(sequence=2)]


def test_every_store_keeps_snapshots_sealed_so_damage_is_refused(compiled, store_factory):
    clock = Clock()
    s = shard(compiled, store=store_factory(), clock=clock)
    s.process([event("ana", "app_open", T0)])
    p = p_of("ana")
    s.snapshot([p])
    stored = s.store.get_snapshot(p)
    values = blocks.unpack(unseal(stored, "p")[0])["block"]["values"].tobytes()
    damaged = bytearray(stored)
    damaged[stored.index(values) + 3] ^= 0x20  # inside a profile value: it still decodes
    s.store.put_snapshots({p: bytes(damaged)})
    with pytest.raises(SnapshotCorrupt, match=f"the snapshot of partition {p} in "):
        rebuilt(s, clock)


def test_a_shard_whose_journal_is_corrupt_at_start_comes_up_unavailable_and_retrying(
        compiled, tmp_path):
    """`start` does not raise to the controller (which would fail `kairos up`): the host
    answers UNAVAILABLE, `recovery` (health, `kairos status`) names the damage, and once the
    segment is quarantined it recovers by itself."""
    import asyncio

    from kairos.cluster.protocol import EventAck, Unavailable
    from kairos.cluster.shard.host import ShardHost

    store = DirectoryStore(tmp_path)
    before = shard(compiled, store=store)
    before.process([event("ana", "app_open", T0)])
    before.snapshot(range(N_PARTITIONS))
    before.process([event("ana", "app_open", T0 + 1)])
    before.close()
    segments = tmp_path / "journals" / "s0"
    segment, = segments.glob("*.log")
    damaged = bytearray(segment.read_bytes())
    damaged[HEADER.size + 2] ^= 0x04  # inside the first batch; an intact one follows
    segment.write_bytes(bytes(damaged))

    async def scenario():
        host = ShardHost("s0", N_PARTITIONS, 0, lambda: store, "fsync", tick_s=3600.0)
        await host.start(compiled, {p: 0 for p in range(N_PARTITIONS)}, [])
        try:
            assert host.shard is None
            assert f"JournalCorrupt: {segment}: damaged frame at byte 0" in \
                host.recovery["failed"]
            assert await host.handle("b", 0, [profile("ana")], [0]) == \
                [Unavailable(reason="s0 is recovering from the store")]
            (segments / "quarantine").mkdir()
            segment.rename(segments / "quarantine" / segment.name)
            await until(lambda: host.shard is not None, 20, "the host to recover")
            assert "failed" not in host.recovery
            ana, = await host.handle("b2", 0, [profile("ana")], [0])  # refused: afresh
            assert ana.value["events_applied"] == 1  # the snapshot's
            assert await host.handle("a", 0, [event("ana", "app_open", T0 + 3)], [0]) == \
                [EventAck(sequence=2)]
        finally:
            host.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
