"""Forgetting a customer for good, whatever a link was doing meanwhile, and store deletes
that wait until the journal holds the record that justifies them (identity.py: the sagas)."""
from __future__ import annotations

import asyncio
import itertools
import math
import time
from pathlib import Path

import pytest

from kairos.cluster.identity import alias_key, anonymous_id, link_id
from kairos.cluster.protocol import Bury, Claim, Forget, Forgotten, Link, Missing, Ok, Retire
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.store import StoreUnavailable
from kairos.cluster.transport.client import Conflict, KairosClient
from tests.support.local_backend import LocalBackend
from tests.unit.shard.test_shard import (N_PARTITIONS, T0, Clock, decide, event, forget,
                                         merge, outcome, p_of, profile, shard, take)

LINK_STEPS = 5  # Claim, Link, Take, Merge, Settle (client.link_steps)
FORGET_STEPS = 4  # Forget, Retire and Forget of the alias's anonymous profile, Bury


def power_cut(s: Shard, store_dir: Path) -> None:
    """What a crash of the machine loses: the journal's writes since its last sync."""
    synced = s.journal._synced_size
    s.close()
    segment = max((store_dir / "journals" / s.name).glob("*.log"))
    with open(segment, "r+b") as f:
        f.truncate(synced)


def rebuilt(old: Shard, clock) -> Shard:
    new = Shard(old.name, old.compiled, list(old.owned), N_PARTITIONS, store=old.store,
                clock=clock)
    new.recover()
    return new


def with_a_home_only(compiled, tmp_path: Path, customer: str) -> tuple[Shard, Clock]:
    """A shard whose customer lives only in its home: passivated, its events snapshotted
    and cut from the journal."""
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    s.process([event(customer, "page_view", T0, category="home")])
    s.passivate(clock.now + 10**6)
    s.checkpoint(float("inf"), N_PARTITIONS)
    assert s.store.get(p_of(customer), customer) is not None
    s.sync_commits = False  # as under ShardHost: a round is synced after process() returns
    return s, clock


def handing_over(kind: str, anon: str, customer: str):
    key = anon[1:]
    return take(anon, link_id(key, customer), customer) if kind == "take" else forget(anon)


@pytest.mark.parametrize("kind", ["take", "forget"])
def test_a_take_or_forget_lost_in_a_crash_before_its_sync_deletes_no_home(compiled, tmp_path,
                                                                         kind):
    anon = anonymous_id(alias_key("cookie", "crash"))
    s, clock = with_a_home_only(compiled, tmp_path, anon)
    s.process([handing_over(kind, anon, "ana")])
    assert s.journal.unsynced
    power_cut(s, tmp_path)
    again = rebuilt(s, clock)
    # never acknowledged, so never applied: the profile is whole
    assert again.process([profile(anon, clock.now)])[0][0].value["events_applied"] == 1


@pytest.mark.parametrize("kind", ["take", "forget"])
def test_a_durable_take_or_forget_deletes_the_home_even_after_a_crash(compiled, tmp_path,
                                                                      kind):
    anon = anonymous_id(alias_key("cookie", "crash"))
    s, clock = with_a_home_only(compiled, tmp_path, anon)
    s.process([handing_over(kind, anon, "ana")])
    s.journal.sync()  # acknowledged from here on
    assert s.store.get(p_of(anon), anon) is not None  # not deleted before the tick
    power_cut(s, tmp_path)
    again = rebuilt(s, clock)
    again.tick()  # the home goes once a snapshot covers the record (a forget's: at the erase)
    again.checkpoint(math.inf, N_PARTITIONS)
    assert again.store.get(p_of(anon), anon) is None
    if kind == "take":  # the state it handed over survived in the redirect, for a retry
        assert again.directory.handed_over(p_of(anon), anon)[2] is not None


def test_a_home_delete_that_fails_is_tried_again_and_the_others_are_not_dropped(
        compiled, tmp_path, monkeypatch):
    from kairos.cluster.storage import directory_store
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    p = p_of("c0")
    same = [c for c in (f"c{i}" for i in range(500)) if p_of(c) == p][:3]
    s.process([event(c, "page_view", T0, category="home") for c in same])
    s.passivate(clock.now + 10**6)  # they live in their homes only
    s.process([forget(c) for c in same])
    real, calls = directory_store.fsync_directory, []

    def failing_once(path):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(directory_store, "fsync_directory", failing_once)
    with pytest.raises(StoreUnavailable, match="deleting customers"):
        s.durability.delete_homes()
    assert set(s.journaling.deletes[p]) == set(same)  # none is forgotten by the shard
    s.durability.delete_homes()  # the next tick's try: it finds no file, and syncs all the same
    assert all(s.store.get(p, c) is None for c in same) and not s.journaling.deletes
    assert calls == [tmp_path / "customers" / f"p{p}"] * 2  # the folder once a try
    s.process([event(same[-1], "page_view", T0 + 5, category="home")])
    assert s.process([profile(same[-1], T0 + 5)])[0][0].value["events_applied"] == 1


def test_a_passivation_that_fails_keeps_the_home_delete_of_a_customer_re_created_since(
        compiled, tmp_path):
    """A customer forgotten, then back under the same id: its passivation writes the new home
    over the old, whose delete is dropped then, and only once the batch is written: a batch
    that fails before it leaves the old home to the next tick's deletes."""
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    s.process([event("ana", "page_view", T0, category="home")])
    s.passivate(clock.now + 10**6)
    s.process([forget("ana")])
    bob = next(c for c in (f"b{i}" for i in range(500)) if p_of(c) != p_of("ana"))
    s.process([event(bob, "app_open", T0 + 1), event("ana", "app_open", T0 + 1)])
    blocked = tmp_path / "customers" / f"p{p_of(bob)}"
    blocked.write_bytes(b"")  # a file where bob's folder goes: his home, first, fails
    with pytest.raises(StoreUnavailable, match="writing"):
        s.passivate(clock.now + 10**6)
    blocked.unlink()
    blocked.mkdir(mode=0o700)  # the store took it for the folder it made: it makes it no more
    assert s.durability.delete_homes() == 1
    assert s.store.get(p_of("ana"), "ana") is None
    assert s.process([profile("ana", T0 + 2)])[0][0].value["events_applied"] == 1
    assert s.passivate(clock.now + 10**6) == 2 and s.store.count(range(N_PARTITIONS)) == 2


def test_a_forget_in_a_partition_being_handed_over_is_erased_only_once_a_snapshot_holds_it(
        compiled, tmp_path):
    """The partition was not snapshotted here (its new owner does that), yet its records
    were cut from the journal: a crash before the move finished brought the forgotten
    customer back from the older snapshot."""
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    s.process([event("ana", "page_view", T0, category="home")])
    s.checkpoint(float("inf"), N_PARTITIONS)  # a snapshot that holds ana
    p = p_of("ana")
    s.process([event("ana", "page_view", T0 + 1, category="home")])  # in the journal only
    s.process([forget("ana")])
    s.freeze([p], 2)  # being handed over
    assert s.erase() == 0  # not yet
    s.close()  # a crash before the new owner took it
    again = rebuilt(s, clock)
    assert isinstance(again.process([profile("ana", clock.now)])[0][0], Missing)
    again.freeze([p], 3)
    again.release([p], 3)  # moved: the new owner's snapshot holds it
    assert again.erase() == 2  # ana's later event and her forget, dropped from this journal
    assert not [r for _, r in again.journal.replay()]


def test_forget_drops_the_customers_decisions_from_the_memo(compiled):
    s = shard(compiled)
    s.process([event("ana", "app_open", T0), event("bob", "app_open", T0)])
    s.process([decide("ana"), decide("bob")])
    memo = s.engine._remembered
    assert {m.customer_id for m in memo.values()} == {"ana", "bob"}
    s.process([forget("ana")])
    assert {m.customer_id for m in memo.values()} == {"bob"}


def test_a_retried_forget_retires_every_alias_and_late_link_steps_are_refused(compiled):
    """A link that had only claimed its alias when the forget came: the forget (and its retry)
    knows the alias, and the link's later steps re-create nothing."""
    s = shard(compiled)
    key, customer = alias_key("cookie", "late"), "ana"
    anon, link = anonymous_id(key), link_id(key, customer)
    s.process([event(anon, "page_view", T0, category="home"), event(customer, "app_open", T0)])
    claim = Claim(partition=p_of(customer), customer_id=customer, key=key, link=link)
    assert s.process([claim])[0] == [Ok()]
    assert s.process([forget(customer)])[0] == [Forgotten(existed=True, aliases=[key])]
    # the client died here; its retry still retires the alias
    assert s.process([forget(customer)])[0] == [Forgotten(existed=False, aliases=[key])]
    retire = Retire(partition=p_of(key), key=key, customer_id=customer)
    assert s.process([retire])[0] == [Ok(value=False)]
    gone = Forget(partition=p_of(anon), customer_id=anon, link=link)
    assert s.process([gone])[0] == [Forgotten(existed=True, aliases=[])]
    assert s.directory.resolve(p_of(key), key, s.ctx.clock(), for_forget=True) == customer
    s.process([Bury(partition=p_of(customer), customer_id=customer),
               retire._replace(finished=True)])
    late = s.process([claim, Link(partition=p_of(key), key=key, customer_id=customer),
                      take(anon, link, customer), merge(customer, link, key, None)])[0]
    assert [r.status for r in late] == ["conflict"] * 4
    assert "was forgotten" in late[0].reason
    assert s.process([profile(customer), profile(anon)])[0] == [Missing(), Missing()]
    assert s.directory.resolve(p_of(key), key, s.ctx.clock(), for_forget=True) == anon
    assert s.directory.forgetting.get(p_of(customer)) == {}
    # the same id later is a new customer: its events are served
    assert s.process([event(customer, "app_open", T0 + 60)])[0][0].sequence == 1


def test_tombstones_move_with_their_partition_and_survive_recovery(compiled):
    """A forget's tombstones ride in the snapshot and the handoff: wherever the partition
    goes, a late step of the forgotten customer's link is still refused."""
    key, customer = alias_key("cookie", "moved"), "ana"
    link, p = link_id(key, customer), p_of(customer)
    a = shard(compiled, "a", store=MemoryStore(shared=True))
    a.process([event(customer, "app_open", T0),
               Claim(partition=p, customer_id=customer, key=key, link=link)])
    assert a.process([forget(customer)])[0][0].aliases == [key]
    b = shard(compiled, "b", partitions=[], store=a.store)
    b.adopt(a.freeze([p], 2), 2)
    a.release([p], 2)
    late = merge(customer, link, key, None)
    assert b.process([late], [2])[0][0].status == "conflict"
    assert b.process([forget(customer)], [2])[0][0].aliases == [key]  # a retry still knows
    again = rebuilt(b, time.time)
    assert again.process([late], [2])[0][0].status == "conflict"
    again.process([Bury(partition=p, customer_id=customer)], [2])  # (refused while under way)
    assert again.process([profile(customer)], [2])[0] == [Missing()]


def test_an_outcome_of_a_decision_issued_before_a_forget_is_refused_wherever_it_arrives(
        compiled):
    """A sealed decision id outlives its customer's erasure by up to OUTCOME_WINDOW_S: its
    outcome, late, must not bring the customer back (a profile, its history, a decision-log
    record), whether it had a profile or only decisions, after a restart and a move too; a new
    customer under the same id takes outcomes of its own decisions."""
    clock = Clock()
    s = shard(compiled, "a", store=MemoryStore(shared=True), clock=clock)
    s.process([event("ana", "app_open", T0)])
    late = [outcome(c, d.actions[0].action_id, d.decision_id, when=T0 + 3600)
            for c in ("ana", "ghost")  # "ghost" was only ever decided for: it had no profile
            for d in [s.process([decide(c, now=T0)])[0][0].value]]
    s.process([forget("ana"), forget("ghost")])
    clock.now += 3600

    def refused(shard_: Shard, routed=None) -> None:
        replies = shard_.process(late, routed)[0]
        assert [(r.status, r.field) for r in replies] == [("invalid", "decision_id")] * 2
        assert "forgotten" in replies[0].reason
        assert shard_.process([profile("ana", clock.now), profile("ghost", clock.now)],
                              routed)[0] == [Missing(), Missing()]

    refused(s)
    s.close()
    s = rebuilt(s, clock)  # the Forget records replayed
    refused(s)
    s.tick()  # the erase compacts them away: the partition's snapshot keeps the tombstones
    s.close()
    s = rebuilt(s, clock)
    refused(s)
    assert logged(s, {"ana", "ghost"}) == []
    moving = sorted({p_of("ana"), p_of("ghost")})
    b = shard(compiled, "b", partitions=[], store=s.store, clock=clock)
    b.adopt(s.freeze(moving, 2), 2)
    s.release(moving, 2)
    refused(b, [2] * 2)
    assert logged(b, {"ana", "ghost"}) == []
    clock.now += 1
    b.process([event("ana", "app_open", clock.now)], [2])
    d = b.process([decide("ana", now=clock.now)], [2])[0][0].value
    reply = b.process([outcome("ana", d.actions[0].action_id, d.decision_id, when=clock.now)],
                      [2])[0][0]
    assert reply.status == "ok"


def logged(s: Shard, ids: set[str]) -> list[str]:
    """The ids among `ids` that the store's decision logs name."""
    s.decision_log.flush()
    return [c for name in s.store.decision_logs()
            for _, c, _ in s.store.decision_log(name).read(-math.inf, math.inf) if c in ids]


# -- every interleaving of one link and one forget, through the client -------------------------

def schedules() -> list[tuple[str, ...]]:
    """Which saga takes the next step, for every way the two can interleave."""
    n = LINK_STEPS + FORGET_STEPS
    return [tuple("L" if i in link_at else "F" for i in range(n))
            for link_at in itertools.combinations(range(n), LINK_STEPS)]


async def advance(steps) -> bool:
    """One step of a saga; whether it has more (a refused link step ends it)."""
    try:
        await steps.__anext__()
        return True
    except (StopAsyncIteration, Conflict):
        return False


async def interleave(client: KairosClient, order: tuple[str, ...], key: str, customer: str,
                     cut: int | None) -> None:
    """Run the link's and the forget's steps in `order`; the forget's client dies after
    `cut` steps (None: it finishes)."""
    sagas = {"L": client.link_steps(key, customer), "F": client.forget_steps(customer)}
    taken = 0
    for who in order:
        if not sagas:
            return
        if who not in sagas:  # it finished early (nothing to retire, refused, or cut)
            who = next(iter(sagas))
        if not await advance(sagas[who]):
            sagas.pop(who)
        elif who == "F":
            taken += 1
            if taken == cut:
                await sagas.pop("F").aclose()
    for steps in sagas.values():
        while await advance(steps):
            pass


def left_in_memory(shards: list[Shard], ids: set[str]) -> list[str]:
    """Where any of the ids is still held in the shards' memory."""
    found = []
    for s in shards:
        d = s.directory
        places = {
            "table": set(s.engine.table.index),
            "members": set().union(*s.engine.table.members_of().values()),
            "identities": set(s.identities._of) | {a for v in s.identities._of.values()
                                                   for a in v["aliases"]},
            "aliases": {x for m in d.aliases.values() for kv in m.items() for x in kv},
            "redirects": {x for m in d.redirects.values() for a, v in m.items()
                          for x in (a, v[0])},
            "forgetting": {x for m in d.forgetting.values() for c, v in m.items()
                           for x in [c, *v]},
            "claimed": {x for m in d.claimed.values() for c, v in m.items() for x in [c, *v]},
            "memo": {m.customer_id for m in s.engine._remembered.values()},
            "watches": set(s.watches.by_customer) | set(s.watches.shown) | {
                x for m in s.watches.by_customer.values() for ids in m.values() for x in ids},
            "deletes": set().union(*s.journaling.deletes.values()),
        }
        found += [f"{s.name} {place}: {x}" for place, held in places.items()
                  for x in held & ids]
    return found


def test_every_interleaving_of_a_link_and_a_forget_leaves_nothing_of_the_customer(tmp_path):
    """For every interleaving of the steps of one link (alias -> customer, with an anonymous
    profile that has a home; both watched) and one forget of the customer, then a retried
    forget: a forget that finished after the link's Claim left nothing of the customer, its
    alias or the alias's profile even before the retry (a late step re-creating it is caught
    there, where the retry would erase it again); after the retry, nothing of the customer or
    its alias stays in memory (watches included) or in the store (homes, snapshots, journals,
    after the erase tick), and a late retry of the link re-creates nothing. In a quarter of
    the schedules each, the first forget's client dies after its first, second or third step,
    so only the retry can finish it. Schedules run side by side, each on its own customer (so
    the shards' rounds batch their fsyncs)."""
    backend = LocalBackend()
    backend.store = DirectoryStore(tmp_path)
    orders = schedules()
    cases = [(order, alias_key("cookie", f"a{i:03d}-zq"), f"cust{i:03d}-xq",
              (None, 1, 2, 3)[i % 4]) for i, order in enumerate(orders)]

    async def scenario() -> None:
        await backend.start_runtime(3, n_partitions=16)
        client = await KairosClient(backend).connect()
        shards = lambda: [s for s in backend.shards.values() if s is not None]  # noqa: E731
        try:
            await asyncio.gather(*(client.ingest(c, "app_open", T0) for _, _, c, _ in cases))
            await asyncio.gather(*(client.ingest(anonymous_id(k), "page_view", T0,
                                                 {"category": "home"}) for _, k, _, _ in cases))
            await asyncio.gather(*(client.decide(c, "web", "hero") for _, _, c, _ in cases))
            await asyncio.gather(*(client.watch(x, "gw", "web") for _, k, c, _ in cases
                                   for x in (c, anonymous_id(k))))
            for s in shards():
                s.passivate(s.ctx.clock() + 10**6)  # every profile has a home
            await asyncio.gather(*(interleave(client, order, k, c, cut)
                                   for order, k, c, cut in cases))
            # a forget that finished after the link's Claim left nothing, before any retry
            done = [(k, c) for order, k, c, cut in cases if cut is None and order[0] == "L"]
            left = left_in_memory(shards(), {x for k, c in done for x in (c, k, anonymous_id(k))})
            assert [x for x in left if " deletes: " not in x] == []  # homes go at the tick
            assert [c for _, c in done if await client.profile(c) is not None] == []
            await asyncio.gather(*(client.forget(c) for _, _, c, _ in cases))  # the retry
            for s in shards():
                s.tick()
            ids = {x for _, k, c, _ in cases for x in (c, k, anonymous_id(k))}
            assert left_in_memory(shards(), ids) == []
            stored = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
            assert [(str(path), x) for path, data in stored.items() for x in ids
                    if x.encode() in data] == []
            for _, k, c, _ in cases:  # a client retrying the link late
                with pytest.raises(Conflict, match="was forgotten"):
                    await client.link(*k.split(":"), c)
            assert left_in_memory(shards(), ids) == []
            assert await client.profile(cases[0][2]) is None
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_concurrent_links_merge_each_anonymous_profile_once(tmp_path):
    """LinkIdentity racing itself: the same link twice and two aliases to one customer at once
    merge each anonymous profile exactly once; one alias to two customers at once links one."""
    backend = LocalBackend(seed=3)

    async def scenario() -> None:
        await backend.start_runtime(3, n_partitions=16)
        client = await KairosClient(backend).connect()
        try:
            for value in ("x", "y", "z"):
                await client.ingest(anonymous_id(alias_key("cookie", value)), "page_view", T0,
                                    {"category": "home"})
            merged = await asyncio.gather(client.link("cookie", "x", "ana"),
                                          client.link("cookie", "x", "ana"),
                                          client.link("cookie", "y", "ana"))
            assert sorted(merged) == [False, True, True]
            assert (await client.profile("ana", T0))["events_applied"] == 2
            raced = await asyncio.gather(client.link("cookie", "z", "bob"),
                                         client.link("cookie", "z", "eve"),
                                         return_exceptions=True)
            winner = "bob" if raced[0] is True else "eve"
            assert [type(r) for r in raced].count(Conflict) == 1
            assert await client.resolve("cookie", "z") == winner
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_replay_warning_names_no_customer_id(compiled, caplog):
    """Logs end up in Ray's log files, which a forget cannot erase: a record that no longer
    applies on replay is logged by a fingerprint of its id, not the id."""
    import yaml

    from kairos.core.catalog import default_catalog_text
    from kairos.core.compiler import compiled_from_text
    before = shard(compiled)
    before.process([event("cust-secret-9", "app_open", T0, screen="home")])
    doc = yaml.safe_load(default_catalog_text())
    doc["version"] = "without-screen"
    doc["events"]["app_open"]["fields"] = {}  # the journaled attribute is undeclared now
    after = Shard("s0", compiled_from_text(yaml.safe_dump(doc, sort_keys=False)),
                  range(N_PARTITIONS), N_PARTITIONS, store=before.store)
    with caplog.at_level("WARNING", logger="kairos.shard"):
        after.recover()
    assert "replaying event for id " in caplog.text
    assert "cust-secret-9" not in caplog.text


def test_a_customer_re_created_after_a_forget_keeps_its_outcomes_after_a_restart(compiled):
    """The forget is buried at the time it happened, also when its record is replayed."""
    clock = Clock()
    s = shard(compiled, "a", store=MemoryStore(shared=True), clock=clock)
    s.process([event("ana", "app_open", T0)])
    s.process([forget("ana")])
    clock.now += 60  # a new customer under the id, a minute later
    s.process([event("ana", "app_open", clock.now)])
    d = s.process([decide("ana", now=clock.now)])[0][0].value
    clock.now += 60
    s.close()
    again = Shard("a", compiled, list(s.owned), N_PARTITIONS, store=s.store, clock=clock)
    again.recover()
    [reply] = again.process([outcome("ana", d.actions[0].action_id, d.decision_id,
                                     when=clock.now)])[0]
    assert isinstance(reply, Ok)


def test_forgetting_many_customers_keeps_the_links_tombstones(compiled, monkeypatch):
    monkeypatch.setattr("kairos.cluster.identity.TOMBSTONES_PER_PARTITION", 8)
    s = shard(compiled, "a")
    p = 0
    s.directory.bury(p, "link-1", T0)
    for i in range(20):  # erasures of visitors never seen
        s.directory.bury_customer(p, f"visitor-{i}", T0)
    assert s.directory.is_buried(p, "link-1", T0 + 1)
    assert s.directory.forgotten_at(p, "visitor-19") == T0
    assert s.directory.forgotten_at(p, "visitor-0") is None  # the oldest went first
