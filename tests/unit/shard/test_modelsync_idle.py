"""An idle shard's model sync (issue 17: idle CPU): with nothing learnt and a watch waiting on
the learner, its loop sleeps until the watch ends or the host is stirred, not every
MODEL_SYNC_S (twice a second before); what a request teaches still goes at the next interval,
also when the journal's sync makes it durable only later, or the request comes as the loop
steps; a version published meanwhile still arrives through the watch, one after another, and
a Shard rebuilt from the store still catches up at once."""
from __future__ import annotations

import asyncio
import time

from kairos.cluster.shard.host import ShardHost
from kairos.cluster.shard.modelsync import ModelSync
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.store import StoreUnavailable

from tests.support.waiting import until

from .test_learning_durable import accept
from .test_modelsync import setting, shard_that_learned
from .test_shard import N_PARTITIONS, T0
from .test_shard_host import app_open

INTERVAL_S = 0.01


def run_syncing(compiled, test, open_store=MemoryStore) -> None:
    """`test(host, learner, counted, sync)` on a started host (every partition) whose model
    sync runs as the shard actor runs it, every INTERVAL_S, once a watch waits."""
    learner, counted, sync = setting(compiled)

    async def main():
        async def sync_models():
            await sync.run(lambda: host.shard and host.shard.engine, lambda: counted,
                           host.stirred, interval_s=INTERVAL_S)
        host = ShardHost("s0", N_PARTITIONS, 0, open_store, "fsync", tick_s=3600.0,
                         jobs=(sync_models,))
        await host.start(compiled, {p: 0 for p in range(N_PARTITIONS)}, [])
        try:
            await until(lambda: counted.calls == ["watch", "watch"], 5.0, "a watch waiting")
            await test(host, learner, counted, sync)
        finally:
            host.stop()
    asyncio.run(asyncio.wait_for(main(), 30))


def steps_of(sync: ModelSync) -> list[None]:
    """The sync's steps from now on, each noted as it starts."""
    steps: list[None] = []
    step = sync.step

    async def counted_step(*args, **kwargs):
        steps.append(None)
        return await step(*args, **kwargs)
    sync.step = counted_step
    return steps


def test_an_idle_shards_sync_loop_waits_on_its_watch_not_every_interval(compiled):
    async def test(host, learner, counted, sync):
        steps = steps_of(sync)
        await asyncio.sleep(50 * INTERVAL_S)
        assert steps == []  # 50 before: one an interval
        assert counted.calls == ["watch", "watch"]

    run_syncing(compiled, test)


def test_what_a_request_teaches_goes_at_the_next_interval(compiled):
    async def test(host, learner, counted, sync):
        await host.handle("a", 0, [app_open("ana"), accept(T0 + 1)], [0, 0])
        # not after the waiting watch's long poll (5 s here)
        await until(lambda: learner.models.positives.sum() == 1, 1.0, "the outcome learnt")
        assert "sync" in counted.calls

    run_syncing(compiled, test)


def test_what_a_request_teaches_goes_once_a_slow_journal_sync_made_it_durable(compiled,
                                                                              tmp_path):
    """A journal whose sync takes ten intervals (a slow or busy disk): the request's stir
    wakes the loop, whose steps find nothing a sync covered yet; the sync's end wakes it
    again (the in-memory journal of the tests above never waits for a sync)."""
    async def test(host, learner, counted, sync):
        journal = host.shard.journal
        synced = journal.sync

        def slow_sync():
            time.sleep(10 * INTERVAL_S)
            synced()
        journal.sync = slow_sync
        await host.handle("a", 0, [app_open("ana"), accept(T0 + 1)], [0, 0])
        # not after the waiting watch's long poll (5 s here)
        await until(lambda: learner.models.positives.sum() == 1, 1.0, "the outcome learnt")

    run_syncing(compiled, test, lambda: DirectoryStore(tmp_path))


def test_what_a_request_teaches_goes_when_it_comes_as_the_loop_steps(compiled):
    """A request whose stir comes after the loop's step took, before it waits again (a client
    whose requests are about an interval apart lands there)."""
    async def test(host, learner, counted, sync):
        step, requested = sync.step, []

        async def step_then_request(*args, **kwargs):
            await step(*args, **kwargs)
            if not requested:
                requested.append(asyncio.get_running_loop().create_task(
                    host.handle("a", 0, [app_open("ana"), accept(T0 + 1)], [0, 0])))
        sync.step = step_then_request
        sync._watch[0].cancel()  # the loop steps at the next interval
        await until(lambda: requested, 1.0, "the step")
        await until(lambda: learner.models.positives.sum() == 1, 1.0, "the outcome learnt")
        await requested[0]

    run_syncing(compiled, test)


def test_versions_published_while_idle_arrive_one_after_another(compiled):
    async def test(host, learner, counted, sync):
        engine = host.shard.engine
        for k in range(3):  # each answers the waiting watch, and the next watch waits
            other = shard_that_learned(compiled, f"o{k}")
            learner.sync(compiled.version, other.engine.models.take_delta(), learner.version)
            await until(lambda: engine.models.version == learner.version, 1.0,
                        f"publish {k} adopted")
        assert engine.models.positives.sum() == 3

    run_syncing(compiled, test)


def test_a_shard_rebuilt_while_idle_catches_up_at_once(compiled):
    async def test(host, learner, counted, sync):
        other = shard_that_learned(compiled, "bo")
        learner.sync(compiled.version, other.engine.models.take_delta(), learner.version)
        await until(lambda: host.shard.engine.models.version == learner.version, 1.0,
                    "the publish adopted")
        await until(lambda: len(counted.calls) == 3, 1.0, "the next watch waiting")
        failed = host.shard
        host._fail(StoreUnavailable("the store went away"))
        await until(lambda: host.shard not in (None, failed), 5.0, "the host to rebuild")
        # from the priors: the watch waiting past the old Shard's version is replaced at once
        await until(lambda: host.shard.engine.models.version == learner.version, 1.0,
                    "the rebuilt shard caught up")

    run_syncing(compiled, test)


def test_a_round_applied_after_an_empty_step_still_wakes_the_loop(compiled):
    """A journal that needs no sync (memory here; Redis in production), and a round applied
    only after a later step found nothing (its stir came one step earlier: an overloaded
    shard whose queue takes longer than an interval to drain): the round's answer wakes the
    loop (review rev-idlefix L1)."""
    async def test(host, learner, counted, sync):
        run, held = host._run, []
        host._run = held.append  # rounds wait, as behind a long queue
        step, steps = sync.step, []

        async def stepping(*args, **kwargs):
            await step(*args, **kwargs)
            steps.append(None)
            if len(steps) == 1:  # its stir comes as this step returns
                asyncio.get_running_loop().create_task(
                    host.handle("a", 0, [app_open("ana"), accept(T0 + 1)], [0, 0]))
            elif len(steps) == 2:  # the queue drained only after the next step took nothing
                host._run = run
                for round_ in held:
                    run(round_)
        sync.step = stepping
        sync._watch[0].cancel()
        await until(lambda: len(steps) >= 2, 1.0, "two steps")
        await until(lambda: learner.models.positives.sum() == 1, 1.0, "the outcome learnt")

    run_syncing(compiled, test)


def test_a_stir_during_the_sleep_whose_round_comes_after_the_take_is_kept(compiled):
    """The loop asks for the wake-up event before its interval's sleep: a stir during the
    sleep whose round is applied only after the step took (a store whose sync does not
    yield) still ends the next wait (review rev-idlefix L2)."""
    async def test(host, learner, counted, sync):
        run, held, hold = host._run, [], [True]

        def held_run(round_):
            if hold[0]:
                held.append(round_)
            else:
                run(round_)
        host._run = held_run
        step, stepped = sync.step, []

        async def step_then_release(*args, **kwargs):
            await step(*args, **kwargs)
            stepped.append(None)
            hold[0] = False
            for round_ in held:
                run(round_)
            held.clear()
        sync.step = step_then_release
        sync._watch[0].cancel()  # the loop ends its wait, asks, sleeps an interval
        for _ in range(5):
            await asyncio.sleep(0)
        assert not stepped  # still in its sleep
        handling = asyncio.get_running_loop().create_task(
            host.handle("a", 0, [app_open("ana"), accept(T0 + 1)], [0, 0]))
        await until(lambda: stepped, 1.0, "the step")
        await handling
        await until(lambda: learner.models.positives.sum() == 1, 1.0, "the outcome learnt")

    run_syncing(compiled, test)
