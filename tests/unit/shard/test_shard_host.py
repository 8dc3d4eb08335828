"""ShardHost without Ray: each sender's order (and a restarted shard's first batches), the
bounded queue, rounds, answers only after the sync that follows the write, rebuilding from the
store after a failed sync or a round that fails half-way, rounds budgeted in bytes; and model
sync's books."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import msgpack
import pytest

from kairos.cluster.protocol import Busy, EventAck, Invalid, Moved, Ok, Unavailable
from kairos.cluster.shard.host import OVERTAKING, ShardHost
from kairos.cluster.shard.modelsync import ModelSync
from kairos.cluster.shard.rounds import FIRE_OVERHEAD
from kairos.cluster.shard.syncs import Syncs
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.store import StoreUnavailable

from tests.support.faults import fsync_fails_once
from tests.support.waiting import until

from .test_shard import N_PARTITIONS, T0, event, p_of, profile


def test_the_host_imports_no_ray():
    code = "import sys, kairos.cluster.shard.host; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def run(compiled, store, test, **kw) -> None:
    """`test(host)` on a started host (every partition, map version 0) in its own loop."""
    async def main():
        host = ShardHost("s0", N_PARTITIONS, 0, lambda: store, "fsync",
                         **{"tick_s": 3600.0, **kw})
        await host.start(compiled, {p: 0 for p in range(N_PARTITIONS)}, [])
        try:
            await test(host)
        finally:
            host.stop()
    asyncio.run(asyncio.wait_for(main(), 30))


def app_open(customer: str, t: float = T0):
    return event(customer, "app_open", t)


def test_each_senders_batches_go_in_its_order_and_senders_do_not_wait_for_each_other(compiled):
    async def test(host):
        later = asyncio.ensure_future(host.handle("a", 1, [app_open("ana", T0 + 1)], [0]))
        await asyncio.sleep(0.05)
        assert await host.handle("b", 0, [app_open("bob")], [0]) == [EventAck(sequence=1)]
        assert not later.done()  # "a" 1 waits for "a" 0
        assert await host.handle("a", 0, [app_open("ana")], [0]) == [EventAck(sequence=1)]
        assert await later == [EventAck(sequence=2)]
    run(compiled, MemoryStore(), test, session_start_s=2.0)


def test_a_sender_new_to_this_incarnation_starts_at_its_lowest_batch_within_the_window(
        compiled):
    """After a restart, a sender's next batches are numbered from where the previous
    incarnation left off: they go once the window passes, lowest first."""
    async def test(host):
        six = asyncio.ensure_future(host.handle("a", 6, [app_open("ana", T0 + 6)], [0]))
        await asyncio.sleep(0)
        five = asyncio.ensure_future(host.handle("a", 5, [app_open("ana", T0 + 5)], [0]))
        await asyncio.sleep(0.05)
        assert not five.done() and not six.done()
        assert await asyncio.wait_for(five, 5) == [EventAck(sequence=1)]
        assert await six == [EventAck(sequence=2)]
        assert await host.handle("a", 7, [app_open("ana", T0 + 7)], [0]) == \
            [EventAck(sequence=3)]
    run(compiled, MemoryStore(), test, session_start_s=0.2)


def test_a_batch_past_the_queue_limit_answers_busy_and_applies_nothing(compiled):
    async def test(host):
        admitted, refused = await asyncio.gather(
            host.handle("a", 0, [app_open("ana"), app_open("bob")], [0, 0]),
            host.handle("b", 0, [app_open("cy"), app_open("di")], [0, 0]))
        assert admitted == [EventAck(sequence=1)] * 2 and refused == [Busy(), Busy()]
        assert await host.handle("d", 0, [app_open(c) for c in "wxyz"], [0] * 4) == [Busy()] * 4
        assert host.rejected == 6 and host.queued == 0
        missing, = await host.handle("c", 0, [profile("cy")], [0])
        assert missing.status == "missing"
    run(compiled, MemoryStore(), test, queue_limit=3)


def test_a_sessions_batches_after_one_refused_busy_are_refused_even_once_there_is_room(
        compiled):
    """Sent before its sender heard of the refusal, a later batch applied would put the
    customer's later event before the refused one (which its caller then sends again)."""
    async def test(host):
        admitted, refused = await asyncio.gather(
            host.handle("a", 0, [app_open("ana"), app_open("bob")], [0, 0]),
            host.handle("b", 0, [app_open("cy", T0), app_open("di")], [0, 0]))
        assert admitted == [EventAck(sequence=1)] * 2 and refused == [Busy()] * 2
        assert host.queued == 0
        assert await host.handle("b", 1, [app_open("cy", T0 + 1)], [0]) == [OVERTAKING]
        missing, = await host.handle("c", 0, [profile("cy")], [0])
        assert missing.status == "missing"  # nothing of cy's was applied
        assert await host.handle("b2", 0, [app_open("cy", T0)], [0]) == [EventAck(sequence=1)]
    run(compiled, MemoryStore(), test, queue_limit=3)


def test_a_sessions_batches_after_one_refused_while_recovering_are_refused_once_it_serves(
        compiled):
    async def test(host):
        serving, host.shard = host.shard, None
        unavailable, = await host.handle("a", 0, [app_open("ana", T0)], [0])
        assert isinstance(unavailable, Unavailable)
        host.shard = serving
        assert await host.handle("a", 1, [app_open("ana", T0 + 1)], [0]) == [OVERTAKING]
        missing, = await host.handle("c", 0, [profile("ana")], [0])
        assert missing.status == "missing"
    run(compiled, MemoryStore(), test)


def test_a_round_combines_the_batches_that_queued_up_to_the_round_limit(compiled):
    async def test(host):
        rounds = []
        process = host.shard.process
        host.shard.process = lambda requests, *rest: rounds.append(len(requests)) or \
            process(requests, *rest)
        replies = await asyncio.gather(
            host.handle("a", 0, [app_open("ana"), app_open("ana", T0 + 1)], [0, 0]),
            host.handle("b", 0, [app_open("bob")], [0]),
            host.handle("c", 0, [app_open("cy"), app_open("cy", T0 + 1)], [0, 0]))
        assert rounds == [3, 2]
        assert replies == [[EventAck(sequence=1), EventAck(sequence=2)], [EventAck(sequence=1)],
                           [EventAck(sequence=1), EventAck(sequence=2)]]
    run(compiled, MemoryStore(), test, round_limit=3)


def test_requests_arrive_as_arrays_and_an_unknown_kind_fails_alone(compiled):
    async def test(host):
        replies = await host.handle("a", 0, [list(app_open("ana")), ["shout", 1, "ana"],
                                             ["resolve", p_of("k:1"), "k:1"]], [0, 0, 0])
        assert replies == [EventAck(sequence=1),
                           Invalid(field="kind", reason="unknown request kind 'shout'"),
                           Ok(value="~k:1")]
    run(compiled, MemoryStore(), test)


def test_a_round_is_answered_only_after_a_sync_that_follows_its_write(compiled, tmp_path):
    async def test(host):
        journal, gate = host.shard.journal, threading.Event()
        sync = journal.sync
        journal.sync = lambda: gate.wait(5) and sync()
        first = asyncio.ensure_future(host.handle("a", 0, [app_open("ana")], [0]))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(host.handle("b", 0, [app_open("bob")], [0]))
        await asyncio.sleep(0.05)
        # both rounds are applied and written, neither is durable, so neither is answered
        assert host.queued == 0 and journal.last_lsn == 2 and journal.unsynced
        assert not first.done() and not second.done()
        gate.set()
        assert await first == [EventAck(sequence=1)]
        gate.set()
        assert await second == [EventAck(sequence=1)]
        assert not journal.unsynced
    run(compiled, DirectoryStore(tmp_path), test)


def test_a_failed_sync_answers_unavailable_and_the_host_rebuilds_from_the_store(
        compiled, tmp_path, monkeypatch):
    async def test(host):
        assert await host.handle("a", 0, [app_open("ana")], [0]) == [EventAck(sequence=1)]
        failed = host.shard
        fsync_fails_once(monkeypatch)
        unavailable, = await host.handle("a", 1, [app_open("ana", T0 + 1)], [0])
        assert unavailable.status == "unavailable" and "I/O error" in unavailable.reason
        tries = 0
        while host.shard is None:  # answering UNAVAILABLE meanwhile
            # a sender goes on in a fresh session after each refusal
            assert await host.handle(f"b{tries}", 0, [profile("ana")], [0]) == \
                [Unavailable(reason="s0 is recovering from the store")]
            tries += 1
            await asyncio.sleep(0.01)
        assert host.shard is not failed
        # the event that was never acknowledged was not kept
        ana, = await host.handle("a2", 0, [profile("ana")], [0])
        assert ana.value["events_applied"] == 1
        # "a"'s later batches may not overtake the one its sync failed: its sender goes on
        # in a fresh session
        assert await host.handle("a", 2, [app_open("ana", T0 + 2)], [0]) == [OVERTAKING]
        assert await host.handle("a2", 1, [app_open("ana", T0 + 2)], [0]) == \
            [EventAck(sequence=2)]
    run(compiled, DirectoryStore(tmp_path), test)


def test_shard_methods_run_in_turn_and_fail_while_there_is_no_shard(compiled):
    delivered = []

    async def test(host):
        await host.run(Shard.watch_channel, "sink-1", "web", "hero")
        assert (await host.run(Shard.stats))["resident"] == 0
        await host.handle("a", 0, [app_open("ana"), app_open("bob")], [0, 0])
        assert delivered == [("sink-1", 2)]  # one call per sink
        host.shard = None
        with pytest.raises(StoreUnavailable, match="recovering"):
            await host.run(Shard.stats)
    run(compiled, MemoryStore(), test,
        deliver=lambda sink, decisions: delivered.append((sink, len(decisions))))


def test_syncs_group_and_each_covers_what_was_written_before_it_was_asked_for():
    """One fsync at a time; whoever asks during one waits for the next."""
    class SlowJournal:
        def __init__(self):
            self.gate = threading.Event()
            self.syncs = 0

        def sync(self):
            self.gate.wait(5)
            self.gate.clear()
            self.syncs += 1

    async def main():
        journal, syncs = SlowJournal(), Syncs("s0")
        first = syncs.after_writes(journal)
        second, third = syncs.after_writes(journal), syncs.after_writes(journal)
        await asyncio.sleep(0.05)
        assert not first.done()
        journal.gate.set()
        await asyncio.wait_for(first, 5)
        assert journal.syncs == 1 and not second.done() and not third.done()
        journal.gate.set()
        await asyncio.wait_for(asyncio.gather(second, third), 5)
        assert journal.syncs == 2  # grouped behind the running sync: one more for both

    asyncio.run(main())


def test_model_sync_resends_what_the_learner_missed_and_adopts_only_newer_versions(compiled):
    s = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS)
    s.process([app_open("ana")])
    s.engine.record_outcomes([("ana", "service_menu", "web", "accept", T0, None)])
    models = ModelSync("s0")
    version, delta, known = models.take(s.engine)
    assert version == compiled.version and known == 0 and delta.positives.sum() == 1
    models.unsent(version, delta)  # the learner was unreachable, or its answer did not come
    s.engine.record_outcomes([("ana", "service_menu", "web", "accept", T0 + 1, None)])
    _, again, _ = models.take(s.engine)
    assert again is delta  # as itself: the learner knows it by its origin if it merged it
    _, newer, _ = models.take(s.engine)
    assert newer.positives.sum() == 1 and newer.origin == delta.origin._replace(
        sequence=delta.origin.sequence + 1)
    assert models.take(s.engine)[1] is None  # nothing new
    table = s.engine.models

    def published(catalog_version, version):
        return SimpleNamespace(catalog_version=catalog_version, version=version,
                               mean=table.mean, precision=table.precision,
                               positives=table.positives + 5, negatives=table.negatives,
                               value_count=table.value_count, value_sum=table.value_sum,
                               inputs=table.inputs)
    models.adopt(s.engine, published("another-catalog", 3))
    assert s.engine.models.version == 0
    models.adopt(s.engine, published(compiled.version, 3))
    assert s.engine.models.version == 3
    models.adopt(s.engine, published(compiled.version, 2))
    assert s.engine.models.version == 3
    assert [v for v, _ in models.adoptions] == [3]  # only what was adopted, with its time


async def served_again(host, failed) -> None:
    """Until the host serves a Shard other than `failed` (it rebuilds from the store)."""
    deadline = asyncio.get_running_loop().time() + 10
    while host.shard is None or host.shard is failed:
        assert asyncio.get_running_loop().time() < deadline, "the host never served again"
        await asyncio.sleep(0.01)


def journaled_events(journal) -> list[tuple[str, float]]:
    return [(record[2], record[4]) for _, record in journal.replay() if record[0] == "event"]


def test_a_round_that_fails_half_way_leaves_no_trace_and_the_shard_serves_again(
        compiled, tmp_path, caplog):
    """The event handler raises on its third request of a round, after the round's earlier
    requests changed the Shard: the round answers UNAVAILABLE, nothing of it is ever
    journaled, and the Shard served afterwards equals a twin that never saw the round."""
    acknowledged = [app_open("ana"), app_open("bob")]
    failing = [app_open("ana", T0 + 1), profile("ana"), app_open("bob", T0 + 1),
               app_open("cy", T0 + 1)]
    later = [app_open("cy", T0 + 2)]
    twin = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS)
    twin.process(acknowledged + later)

    async def test(host):
        assert await host.handle("a", 0, acknowledged, [0, 0]) == [EventAck(sequence=1)] * 2
        failed = host.shard
        events, applied = failed.customers.events, []

        def fails_on_the_third(requests, touched):
            good = requests[:2 - len(applied)]
            applied.extend(good)
            replies = events(good, touched)
            if len(good) < len(requests):
                raise KeyError(requests[len(good)].customer_id)  # a message quoting an id
            return replies
        failed.dispatch.handlers["event"] = fails_on_the_third
        replies = await host.handle("a", 1, failing, [0] * 4)
        assert applied == [failing[0], failing[2]]  # two events changed the Shard first
        assert {r.status for r in replies} == {"unavailable"}
        # every caller of the round is told, and the log names where it failed, but none
        # sees the id the failure's message quoted
        assert "KeyError" in replies[0].reason and host.queued == 0
        assert "fails_on_the_third" in caplog.text
        assert "'bob'" not in caplog.text and all("bob" not in r.reason for r in replies)
        await served_again(host, failed)
        assert await host.handle("a", 2, later, [0]) == [OVERTAKING]  # "a" goes on afresh
        assert await host.handle("a2", 0, later, [0]) == [EventAck(sequence=1)]
        assert journaled_events(host.shard.journal) == [("ana", T0), ("bob", T0),
                                                        ("cy", T0 + 2)]
        reads = [profile(c) for c in ("ana", "bob", "cy")]
        assert await host.handle("a2", 1, reads, [0] * 3) == twin.process(reads)[0]
    run(compiled, DirectoryStore(tmp_path), test)


def test_a_shard_method_that_fails_after_changing_the_shard_leaves_no_trace(compiled, tmp_path):
    def half_done(shard):
        shard.customers.events([app_open("dan")], {})  # recorded, not yet journaled
        raise RuntimeError("a bug")

    async def test(host):
        failed = host.shard
        with pytest.raises(RuntimeError, match="a bug"):
            await host.run(half_done)
        await served_again(host, failed)
        assert await host.handle("a", 0, [app_open("ana")], [0]) == [EventAck(sequence=1)]
        assert journaled_events(host.shard.journal) == [("ana", T0)]
        dan, = await host.handle("a", 1, [profile("dan")], [0])
        assert dan.status == "missing"
    run(compiled, DirectoryStore(tmp_path), test)


def test_rounds_are_budgeted_in_bytes_and_a_batch_past_the_budget_is_split_in_order(compiled):
    # an event's bytes, and its Fire record's for the catalog's one timer (rounds.py)
    one = len(msgpack.packb(app_open("ana"))) + len("ana") + len("cart_abandoned") + \
        FIRE_OVERHEAD

    async def test(host):
        rounds = []
        process = host.shard.process
        host.shard.process = lambda requests, *rest: rounds.append(len(requests)) or \
            process(requests, *rest)
        replies = await asyncio.gather(
            host.handle("a", 0, [app_open("ana", T0 + i) for i in range(5)], [0] * 5),
            host.handle("b", 0, [app_open("bob")], [0]),
            host.handle("c", 0, [app_open("cy")], [0]))
        # a's batch alone is over the budget: its first three, its last two with bob's, cy's
        assert rounds == [3, 3, 1]
        assert replies == [[EventAck(sequence=i) for i in range(1, 6)],
                           [EventAck(sequence=1)], [EventAck(sequence=1)]]
    run(compiled, MemoryStore(), test, round_bytes=3 * one + 2)


def test_a_request_alone_past_the_round_budget_is_invalid_and_the_rest_are_served(compiled):
    async def test(host):
        shard = host.shard
        huge = event("ana", "page_view", T0 + 1, category="x" * 2048)
        replies = await host.handle("a", 0, [app_open("ana"), huge, app_open("bob")], [0] * 3)
        assert replies[0] == replies[2] == EventAck(sequence=1)
        assert replies[1].status == "invalid" and replies[1].field == "request"
        assert "over a round's 1024-byte budget (SHARD_ROUND_BYTES)" in replies[1].reason
        assert host.shard is shard  # bad input: no rebuild
        ana, = await host.handle("a", 1, [profile("ana")], [0])
        assert ana.value["events_applied"] == 1
    run(compiled, MemoryStore(), test, round_bytes=1024)


def test_rounds_within_the_byte_budget_journal_under_the_frame_limit(compiled, tmp_path,
                                                                     monkeypatch):
    """Three senders' batches that, as one round, would pack past the journal's frame limit
    (which answers the round UNAVAILABLE and rebuilds the shard) are journaled in rounds
    that fit, with the budget a quarter of the limit as SHARD_ROUND_BYTES is."""
    from kairos.cluster.storage import frames
    monkeypatch.setattr(frames, "MAX_FRAME", 4096)

    async def test(host):
        shard = host.shard
        batches = [[event(c, "page_view", T0 + i, category="home") for i in range(40)]
                   for c in ("ana", "bob", "cy")]
        replies = await asyncio.gather(*(host.handle(c, 0, batch, [0] * 40)
                                         for c, batch in zip("abc", batches)))
        assert replies == [[EventAck(sequence=i) for i in range(1, 41)]] * 3
        assert host.shard is shard and len(journaled_events(shard.journal)) == 120
    run(compiled, DirectoryStore(tmp_path), test, round_bytes=1024)


def test_the_store_is_counted_on_a_thread_while_requests_are_served(compiled):
    """Counting a directory store lists its folders, seconds for millions of customers:
    the host counts on a thread, so requests are answered while a count is under way."""
    class SlowCount(MemoryStore):
        def __init__(self):
            super().__init__()
            self.counting, self.release = threading.Event(), threading.Event()

        def count(self, partitions):
            self.counting.set()
            assert self.release.wait(10)
            return 5

    store = SlowCount()

    async def test(host):
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, store.counting.wait, 10)
        assert await host.handle("a", 0, [app_open("ana")], [0]) == [EventAck(sequence=1)]
        store.release.set()
        for _ in range(500):
            if (await host.run(Shard.stats))["passivated"]:
                break
            await asyncio.sleep(0.01)
        assert (await host.run(Shard.stats))["passivated"] == 5  # ana, resident, has no home
    run(compiled, store, test)


@pytest.mark.parametrize("store_kind", ["directory", "memory"])
@pytest.mark.parametrize("outcome", ["thaw", "release"])
def test_a_rebuild_during_a_move_keeps_the_partitions_on_their_way_out(
        compiled, tmp_path, monkeypatch, store_kind, outcome):
    """The store failed under the source while a partition was frozen for a move (the same
    outage can fail the target's adopt): the rebuilt source still holds the partition, still
    answering MOVED, so the controller can undo the move (thaw) or finish it (release)."""
    ana, bob = "ana", next(c for c in (f"c{k}" for k in range(100)) if p_of(c) != p_of("ana"))
    p = p_of(ana)

    async def test(host):
        for t in range(3):
            await host.handle("a", t, [app_open(ana, T0 + t)], [0])
        await host.run(Shard.freeze, [p], 1)
        failed = host.shard
        host._fail(StoreUnavailable("the store went away"))
        await until(lambda: host.shard not in (None, failed), 10, "the host to rebuild")
        moved, = await host.handle("a", 3, [profile(ana)], [0])
        assert isinstance(moved, Moved) and moved.map_version == 1
        assert p in host.shard.owned and p in host.shard.leaving
        if outcome == "thaw":
            await host.run(Shard.thaw, [p], 1)
            ana_now, = await host.handle("a", 4, [profile(ana)], [1])
            assert ana_now.value["events_applied"] == 3
        else:
            await host.run(Shard.release, [p], 1)
            assert p not in host.shard.owned
            assert (await host.handle("a", 4, [app_open(bob)], [1]))[0] == EventAck(sequence=1)
    run(compiled, DirectoryStore(tmp_path) if store_kind == "directory" else MemoryStore(),
        test)



def test_a_source_rebuilt_after_the_target_adopted_leaves_the_targets_snapshot(compiled,
                                                                               tmp_path):
    """The target's snapshot of the partition names its journal: the source's recovery must
    not snapshot the partition over it, or the target, restarted, recovers from the source's
    journal and loses what it acknowledged since."""
    p = p_of("ana")
    store = DirectoryStore(tmp_path)

    async def test(host):
        await host.handle("a", 0, [app_open("ana")], [0])
        target = Shard("t", compiled, [], N_PARTITIONS, store=DirectoryStore(tmp_path))
        target.adopt(await host.run(Shard.freeze, [p], 1), 1)
        failed = host.shard
        host._fail(StoreUnavailable("the store went away"))
        await until(lambda: host.shard not in (None, failed), 10, "the host to rebuild")
        await host.run(Shard.release, [p], 1)
        for t in range(1, 4):
            target.process([app_open("ana", T0 + t)])
        target.close()
        again = Shard("t", compiled, [p], N_PARTITIONS, store=DirectoryStore(tmp_path))
        again.recover()
        assert again.process([profile("ana")])[0][0].value["events_applied"] == 4
    run(compiled, store, test)


def test_a_start_over_a_start_still_recovering_leaves_one_shard_serving(compiled, tmp_path,
                                                                         monkeypatch):
    """A controller that gave up on a start (its deadline, a resume cancelled) starts the
    shard again: the first build, ending first, served and acknowledged writes, then the
    second, recovered before them, replaced it, and the journal held two writers' LSNs."""
    owned = {p: 0 for p in range(N_PARTITIONS)}
    builds = []
    recovered = ShardHost._recovered
    second_built, written = threading.Event(), threading.Event()

    def held_second(self, *args):
        built = recovered(self, *args)
        builds.append(built)
        if len(builds) == 3:  # the second start's build recovered; it ends after the write
            second_built.set()
            written.wait(5)
        return built
    monkeypatch.setattr(ShardHost, "_recovered", held_second)

    def host() -> ShardHost:
        return ShardHost("s0", N_PARTITIONS, 0, lambda: DirectoryStore(tmp_path), "fsync",
                         tick_s=3600.0)

    async def main():
        seeded = host()
        await seeded.start(compiled, owned, [])
        await seeded.handle("a", 0, [app_open("ana")], [0])
        seeded.stop()
        seeded.shard.close()
        again = host()
        first = asyncio.ensure_future(again.start(compiled, owned, []))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(again.start(compiled, owned, []))
        await until(second_built.is_set, 5, "the second start's build")
        wrote = again.shard is not None  # a write while the first start's build serves
        if wrote:
            assert await again.handle("b", 0, [app_open("ana", T0 + 1)], [0]) == \
                [EventAck(sequence=2)]
        written.set()
        await first
        await second
        acked = (await again.handle("c", 0, [profile("ana")], [0]))[0].value["events_applied"]
        assert acked == 1 + wrote  # what was acknowledged is there
        await again.handle("d", 0, [app_open("ana", T0 + 2)], [0])
        again.stop()
        again.shard.close()
        restarted = host()
        await restarted.start(compiled, owned, [])
        assert restarted.shard is not None, restarted.recovery
        ana, = await restarted.handle("e", 0, [profile("ana")], [0])
        assert ana.value["events_applied"] == acked + 1
        restarted.stop()
    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_partition_leaving_a_rebuilt_shard_holds_back_no_truncation_of_its_journal(
        compiled, tmp_path):
    """Recovered from the new owner's journal (its snapshot names it), the partition was
    dirty at that journal's LSNs: checkpoints then truncated this shard's journal as far."""
    p = p_of("ana")

    async def test(host):
        await host.handle("a", 0, [app_open("ana")], [0])
        target = Shard("t", compiled, [], N_PARTITIONS, store=DirectoryStore(tmp_path))
        target.adopt(await host.run(Shard.freeze, [p], 1), 1)
        for t in range(1, 50):
            target.process([app_open("ana", T0 + t)])
        failed = host.shard
        host._fail(StoreUnavailable("the store went away"))
        await until(lambda: host.shard not in (None, failed), 10, "the host to rebuild")
        assert p not in host.shard.journaling.dirty
        target.close()
    run(compiled, DirectoryStore(tmp_path), test)


def test_a_shard_reads_its_log_two_at_a_time_and_a_read_nobody_waits_for_stops(
        compiled, monkeypatch):
    """A client retrying an export whose reads time out: each try's read went on in the
    background, unbounded by the actor's concurrency group, for the whole of a long log."""
    from kairos.cluster.evidence.records import DecisionPage
    from kairos.cluster.shard import decisionlog
    from kairos.cluster.shard.actor import ShardActor
    from kairos.cluster.transport.backend import Unavailable
    read_log = ShardActor.__ray_metadata__.modified_class.read_log
    lock, running, peak = threading.Lock(), [0], [0]

    def long_read(store, names, query, deadline=float("inf")):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            for _ in range(100):  # a long log's page: a second
                decisionlog._in_time(deadline)
                time.sleep(0.01)
            return [], False
        finally:
            with lock:
                running[0] -= 1
    monkeypatch.setattr(decisionlog, "read", long_read)

    async def test(host):
        actor = SimpleNamespace(name="s0", host=host)
        group = asyncio.Semaphore(2)  # Ray's "log" concurrency group

        async def call() -> str:
            async with group:
                with pytest.raises(Unavailable) as failed:
                    await read_log(actor, DecisionPage(0, 1e10, None, None, 10), ["s0"], 0.05)
                return str(failed.value)
        answers = await asyncio.gather(*(call() for _ in range(12)))
        assert all("took over 0.05 s" in a for a in answers)
        await until(lambda: running[0] == 0, 0.5, "the reads to stop")  # not read to the end
        assert peak[0] == 2
    run(compiled, MemoryStore(), test)
