"""Model sync sends the learner only learning the journal made durable: a round is applied (and
learnt from) before the sync that lets it be answered finishes, and one whose sync fails is
answered UNAVAILABLE and sent again, so its learning must not reach the learner first."""
from __future__ import annotations

import asyncio
import threading
import time

from kairos.cluster.control.learner import Learner
from kairos.cluster.protocol import Outcome
from kairos.cluster.shard.modelsync import ModelSync
from kairos.cluster.storage.directory_store import DirectoryStore

from .test_shard import T0, p_of
from .test_shard_host import app_open, run


class InProcess:
    """The learner, called in process."""

    def __init__(self, learner: Learner):
        self.learner = learner

    async def sync(self, *args):
        return self.learner.sync(*args)

    async def watch(self, catalog_version: str, known: int, **rows):
        return await self.learner.watch(catalog_version, known, 0.05, **rows)


def accept(t: float, customer: str = "ana") -> Outcome:
    return Outcome(partition=p_of(customer), customer_id=customer, action_id="service_menu",
                   channel="web", outcome="accept", when=t, decision_id=None)


def test_a_round_whose_sync_fails_reaches_the_learner_only_once_it_is_sent_again(compiled,
                                                                               tmp_path):
    learner = Learner(compiled)
    models = ModelSync("s0")

    async def test(host):
        engine = lambda: host.shard and host.shard.engine  # noqa: E731
        await host.handle("a", 0, [app_open("ana")], [0])
        journal, gate = host.shard.journal, threading.Event()

        def failing_sync():
            gate.wait(5)
            raise OSError(5, "I/O error")
        journal.sync = failing_sync
        first = asyncio.ensure_future(host.handle("a", 1, [accept(T0 + 1)], [0]))
        await asyncio.sleep(0.05)
        assert not first.done()  # applied, learnt from, not acknowledged
        await models.step(engine, lambda: InProcess(learner), wait_s=0.05)
        assert learner.models.positives.sum() == 0
        gate.set()
        assert (await first)[0].status == "unavailable"
        while host.shard is None:  # rebuilt from the store
            await asyncio.sleep(0.01)
        # sent again, in a fresh session as a client does after a refusal
        assert (await host.handle("a2", 0, [accept(T0 + 1)], [0]))[0].status == "ok"
        for _ in range(3):
            await models.step(engine, lambda: InProcess(learner), wait_s=1.0)
        assert learner.models.positives.sum() == 1  # acknowledged once, learnt once
    run(compiled, DirectoryStore(tmp_path), test)


def test_under_continuous_load_each_interval_sends_what_a_journal_sync_covered(compiled,
                                                                              tmp_path):
    """No starvation: with three senders a round is nearly always applied and unsynced, yet
    each interval sends the learning of the rounds a sync covered."""
    learner = Learner(compiled)
    models = ModelSync("s0")
    customers = ("ana", "bo", "cy")

    async def load(host, customer):
        for k in range(10_000):
            reply, = await host.handle(customer, k + 1, [accept(T0 + 1 + k, customer)], [0])
            assert reply.status == "ok"

    async def test(host):
        engine = lambda: host.shard and host.shard.engine  # noqa: E731
        for customer in customers:
            await host.handle(customer, 0, [app_open(customer)], [0])
        journal = host.shard.journal
        sync = journal.sync
        journal.sync = lambda: time.sleep(0.005) or sync()  # a disk that takes its time
        loading = [asyncio.ensure_future(load(host, c)) for c in customers]
        try:
            sent, busy = [], 0
            for _ in range(5):
                under_load = False
                for _ in range(4):  # looked at 4 times in the interval, not once at its end
                    await asyncio.sleep(0.005)
                    under_load |= bool(host.shard.journal.unsynced or host.queued)
                busy += under_load
                await models.step(engine, lambda: InProcess(learner), wait_s=1.0)
                sent.append(learner.models.positives.sum())
            # most intervals came under load (on a loaded machine the three senders can
            # all be between rounds at one look, as CI once saw at 2 of 5 with one look an
            # interval; the claim is that loaded ones still send)
            assert busy >= 3
            assert all(b > a for a, b in zip([0, *sent], sent))  # and sent some
        finally:
            for task in loading:
                task.cancel()
    run(compiled, DirectoryStore(tmp_path), test)
