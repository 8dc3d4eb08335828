"""ShardHost without Ray: each sender's order (and a restarted shard's first batches), the
bounded queue, rounds, answers only after the sync that follows the write, rebuilding from
the store after a failed sync, a bug failing only its own round; and model sync's books."""
from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from kairos.cluster.protocol import Busy, EventAck, Invalid, Ok, Unavailable
from kairos.cluster.shard.host import ShardHost
from kairos.cluster.shard.modelsync import ModelSync
from kairos.cluster.shard.syncs import Syncs
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage import journal as journal_module
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.store import StoreUnavailable

from .test_shard import N_PARTITIONS, T0, event, p_of, profile


def test_the_host_imports_no_ray():
    code = "import sys, kairos.cluster.shard.host; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def run(compiled, store, test, **kw) -> None:
    """`test(host)` on a started host (every partition, map version 0) in its own loop."""
    async def main():
        host = ShardHost("s0", N_PARTITIONS, 0, lambda: store, "fsync", tick_s=3600.0, **kw)
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
        assert await host.handle("b", 1, [app_open(c) for c in "wxyz"], [0] * 4) == [Busy()] * 4
        assert host.rejected == 6 and host.queued == 0
        missing, = await host.handle("c", 0, [profile("cy")], [0])
        assert missing.status == "missing"
    run(compiled, MemoryStore(), test, queue_limit=3)


def test_a_round_combines_the_batches_that_queued_up_to_the_round_limit(compiled):
    async def test(host):
        rounds = []
        process = host.shard.process
        host.shard.process = lambda requests, routed: rounds.append(len(requests)) or \
            process(requests, routed)
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
        fsync, failures = os.fsync, []

        def fails_once(fd):
            if not failures:
                failures.append(fd)
                raise OSError(errno.EIO, "I/O error")
            fsync(fd)
        monkeypatch.setattr(journal_module.os, "fsync", fails_once)
        unavailable, = await host.handle("a", 1, [app_open("ana", T0 + 1)], [0])
        assert unavailable.status == "unavailable" and "I/O error" in unavailable.reason
        seq = 0
        while host.shard is None:  # answering UNAVAILABLE meanwhile
            assert await host.handle("b", seq, [profile("ana")], [0]) == \
                [Unavailable(reason="s0 is recovering from the store")]
            seq += 1  # a sender numbers its batches (a repeated number waits for its turn)
            await asyncio.sleep(0.01)
        assert host.shard is not failed
        # the event that was never acknowledged was not kept
        ana, = await host.handle("a", 2, [profile("ana")], [0])
        assert ana.value["events_applied"] == 1
        assert await host.handle("a", 3, [app_open("ana", T0 + 2)], [0]) == \
            [EventAck(sequence=2)]
    run(compiled, DirectoryStore(tmp_path), test)


def test_a_bug_fails_only_its_own_round(compiled):
    async def test(host):
        shard, process = host.shard, host.shard.process

        def bug(requests, routed):
            shard.process = process
            raise RuntimeError("a bug")
        shard.process = bug
        with pytest.raises(RuntimeError, match="a bug"):
            await host.handle("a", 0, [app_open("ana")], [0])
        assert await host.handle("a", 1, [app_open("ana")], [0]) == [EventAck(sequence=1)]
        assert host.shard is shard and host.queued == 0
    run(compiled, MemoryStore(), test)


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
        assert second is third and second is not first  # grouped behind the running sync
        await asyncio.sleep(0.05)
        assert not first.done()
        journal.gate.set()
        await asyncio.wait_for(first, 5)
        assert journal.syncs == 1 and not second.done()
        journal.gate.set()
        await asyncio.wait_for(second, 5)
        assert journal.syncs == 2

    asyncio.run(main())


def test_model_sync_resends_what_the_learner_missed_and_adopts_only_newer_versions(compiled):
    s = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS)
    s.process([app_open("ana")])
    s.engine.record_outcomes([("ana", "service_menu", "web", "accept", T0, None)])
    models = ModelSync("s0")
    version, delta, known = models.take(s.engine)
    assert version == compiled.version and known == 0 and delta.positives.sum() == 1
    models.unsent(version, delta)  # the learner was unreachable
    s.engine.record_outcomes([("ana", "service_menu", "web", "accept", T0 + 1, None)])
    _, again, _ = models.take(s.engine)
    assert again.positives.sum() == 2  # this sync's and the one that did not go
    assert models.take(s.engine)[1] is None  # nothing new
    table = s.engine.models

    def published(catalog_version, version):
        return SimpleNamespace(catalog_version=catalog_version, version=version,
                               mean=table.mean, precision=table.precision,
                               positives=table.positives + 5, negatives=table.negatives)
    models.adopt(s.engine, published("another-catalog", 3))
    assert s.engine.models.version == 0
    models.adopt(s.engine, published(compiled.version, 3))
    assert s.engine.models.version == 3
    models.adopt(s.engine, published(compiled.version, 2))
    assert s.engine.models.version == 3
