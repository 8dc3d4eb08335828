"""ShardHost: what runs a Shard inside an actor, without Ray.

Request batches are admitted in each sender's order (sequencer.py: a session and a sequence
number per sender, since Ray does not promise order for async actors; past a refused batch,
none of its session, and past a refused request, none for its customer: refusals.py), counted
against a bounded queue (past `queue_limit` a batch answers BUSY) and run by one worker in
rounds of up to `round_limit` requests and `round_bytes` bytes (as msgpack, an event's with the
Fire records of the timers it may fire, a Decide's that records its impression with an Outcome
record per action it may show: rounds.py), so many senders' batches share a kernel call
and a round's journal frame stays under the journal's frame limit (a batch over the byte budget
is split across rounds, in order; a request over it alone answers Invalid, as nothing could
journal it). All work on the Shard happens on the event loop's
thread, between awaits, so the Shard needs no locks: a round of the data path is tens of
microseconds to a few milliseconds, and handing each one to a worker thread cost more than that
in thread wake-ups (a fifth of a shard's CPU at 1,000 decisions/s). Two things run on threads:
recovery, which builds a new Shard nobody else sees yet (recovering.py; requests answer
UNAVAILABLE meanwhile), and the journal's fsync (syncs.py): a round is written to the journal
as it is applied and answered once a sync that started after it has finished, so the next
rounds are applied while the disk works (at 6,000 events/s the shards spent half their time
waiting in fsync); the models hear of each sync, so model sync sends the learner only what a
finished one covered (syncs.py). A background loop fires timers, passivates and snapshots
every `tick_s` while requests or shard methods come, and, once a tick passed without them,
sleeps until the next timer or snapshot is due (ticks.py), woken by the next that comes.

Durability: `start` recovers the shard's partitions from the store (snapshots + journal)
before it takes traffic; until then, and whenever the store fails (disk full, Redis down),
requests answer UNAVAILABLE (the gateway serves fallback decisions) while the host rebuilds
its Shard from the store, retrying until the store is back (a first recovery that fails, a
corrupt journal say, does the same: `recovery` says why). A Shard whose journal write or sync
failed is never used again, so nothing unacknowledged is ever served; nor is one that raised
half-way through a round (a bug): the requests before it changed the Shard and recorded those
changes for the next commit, and nothing cheaper than a rebuild can take them back. Rebuilding
costs nothing on the data path; keeping each request's changes apart to undo them would.

ShardActor (actor.py) wraps a ShardHost in a Ray actor and gives it what needs Ray: the data
plane's server, the learner (modelsync.py keeps the books), the watch sinks, the metrics.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Iterable, Sequence, TypeVar

import msgpack

from kairos.core.compiler import CompiledCatalog

from kairos.cluster.evidence.records import DecisionPage, PageOutcomes
from kairos.cluster.protocol import Busy, Reply, Unavailable
from kairos.cluster.settings import (SESSION_START_S, SHARD_QUEUE_LIMIT, SHARD_ROUND_BYTES,
                                     SHARD_ROUND_LIMIT, TICK_S)
from kairos.cluster.shard import decisionlog, recovering, storecount, ticks
from kairos.cluster.shard.failures import close_dropped, close_unused, where_failed
from kairos.cluster.shard.handoff import Moving
from kairos.cluster.shard.refusals import EVERYTHING, Refusals
from kairos.cluster.shard.rounds import Batch, RoundCost, cut, makes_of, next_round, senders_of
from kairos.cluster.shard.sequencer import Sequencer
from kairos.cluster.shard.shard import Shard
from kairos.cluster.shard.syncs import Syncs
from kairos.cluster.shard.watches import Push
from kairos.cluster.storage.ownership import check_claimed
from kairos.cluster.storage.store import StoreUnavailable

log = logging.getLogger("kairos.shard")
# a shard's decision log reads at once (threads: each reads a page of a long log)
LOG_READS = 2
REBUILD_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)  # waits between attempts to rebuild from the store
# A request of a session the shard refused an earlier batch of, or an earlier request for its
# customer: applied, it would overtake that one (nothing of it was applied).
OVERTAKING = Busy(reason="the shard refused an earlier request of its sender's, and this one "
                         "may not overtake it")
DISOWNED = recovering.DISOWNED  # health's text of a journal disowned, as the tests import it
T = TypeVar("T")
Job = Callable[[], Awaitable[None]]


class ShardHost:
    def __init__(self, name: str, n_partitions: int, seed: int,
                 open_store: recovering.StoreAt, journal_policy: str = "fsync", *,
                 deliver: Callable[[str, list], None] = lambda sink, decisions: None,
                 observe: Callable[[Iterable[str], float], None] = lambda kinds, ms: None,
                 settle: Callable[[], None] = lambda: None, jobs: Sequence[Job] = (),
                 queue_limit: int = SHARD_QUEUE_LIMIT, round_limit: int = SHARD_ROUND_LIMIT,
                 round_bytes: int = SHARD_ROUND_BYTES, session_start_s: float = SESSION_START_S,
                 tick_s: float = TICK_S, incarnation: str | None = None,
                 owner: str | None = None):
        """`open_store` opens the store each (re)built Shard uses, and reads the claim on it
        (without an owner, any callable that returns a Store will do); `deliver(sink, decisions)`
        sends pushes; `observe(kinds, latency_ms)` is told each answered batch's request
        kinds and time in the shard; `settle` runs after a Shard is (re)built (the actor
        tidies the heap: pauses.py); `jobs` run in the background, with the host's own, once
        it has started, each restarted after a failure. `incarnation`: this process's, which
        owns the shard's journal from each start on (store.py, "Owners"). `owner`: the token
        of the cluster whose controller created it (each start may name the one that starts
        it, or `owner` set since: ShardActor.set_owner), whose claim the store must hold at
        each start and rebuild, read before the store is built (ownership.py
        `check_claimed`); None checks nothing (a host with no controller: tests)."""
        self.name = name
        self.incarnation = incarnation or uuid.uuid4().hex
        self.n_partitions = n_partitions
        self.seed = seed
        self.shard: Shard | None = None
        self.recovery: dict[str, Any] = {}  # what the last recovery did
        self.queued = 0  # requests admitted, not yet processed
        # requests answered BUSY: the queue full, CROWDED, an outcome past its rate, OVERTAKING
        self.rejected = 0
        self._open_store = open_store
        self.owner = owner
        self._failures = recovering.Failures(name)
        self._journal_policy = journal_policy
        self._deliver = deliver
        self._observe = observe
        self._settle = settle
        self._jobs = (self._work, self._tick, self._count_stored, *jobs)
        self._queue_limit = queue_limit
        self._round_limit = round_limit
        self._round_bytes = round_bytes
        self._tick_s = tick_s
        self._sequencer = Sequencer(session_start_s)
        self._refusals = Refusals(abandoned=self._sequencer.abandon)
        self._syncs = Syncs(name)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._log_reads = asyncio.Semaphore(LOG_READS)
        self._queue: deque[Batch] = deque()
        self._round_cost = RoundCost()  # of the serving catalog
        self._wake = asyncio.Event()
        # set by each request and shard method: what it changed may be due at the next tick
        self._stirred = asyncio.Event()
        self.stirs = 0  # request batches, shard methods and Shards served so far (`_stir`)
        self._woken: asyncio.Event | None = None  # `stirred`'s, while one waits
        self._served = asyncio.Event()  # set as a (re)built Shard starts serving
        self._loops: list[asyncio.Task] = []
        self._recovering: asyncio.Task | None = None  # retrying to build a Shard from the store
        self._starts = 0  # starts so far: a build a later start superseded is not installed
        self._claimed = 0  # the start that claimed the journal: its later builds only check

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, compiled: CompiledCatalog, owned: dict[int, int],
                    channel_watches: Sequence[tuple[str, str, str | None]],
                    sources: dict[int, str] | None = None, owner: str | None = None) -> None:
        """Recover the `owned` partitions (partition -> granting map version) from the store
        and serve them on this catalog (`sources`: the journal of a dead shard whose
        partitions these were; `owner`: the token of the controller that starts it, checked
        from now on, else the one it had); start the background loops the first time. A
        recovery that fails (the store is down, a journal is corrupt) returns all the same and
        is retried as after a failure, answering UNAVAILABLE meanwhile, with `recovery` saying
        why: raising would fail the controller's start, and so `kairos up`, over what an
        operator fixes while the rest of the cluster serves."""
        if not self._loops:
            loop = asyncio.get_running_loop()
            self._loops = [loop.create_task(self._forever(job)) for job in self._jobs]
        self._stop_recovering()
        self.owner = owner or self.owner
        self._starts += 1  # a build of an earlier start still running is dropped when done
        replaced, self.shard = self.shard, None
        if replaced is not None:  # its journal is not left open beside the new one's
            await asyncio.get_running_loop().run_in_executor(self._pool, close_dropped, replaced)
        if not await self._recover(compiled, owned, channel_watches, sources):
            self._recovering = asyncio.get_running_loop().create_task(
                self._serve_again(compiled, owned, channel_watches, sources, tried=1))

    def stop(self) -> None:
        """Cancel the background loops and any recovery (the Shard stays as it is)."""
        for task in self._loops:
            task.cancel()
        self._loops = []
        self._stop_recovering()

    def _stop_recovering(self) -> None:
        if self._recovering is not None:
            self._recovering.cancel()
            self._recovering = None

    def _recovered(self, compiled: CompiledCatalog, owned: dict[int, int],
                   channel_watches: Sequence[tuple[str, str, str | None]],
                   sources: dict[int, str] | None, moving: Moving | None = None,
                   start: int = 0) -> tuple[Shard, dict[str, Any]]:
        """A Shard rebuilt from the store, and what its recovery did (on the worker thread).
        A start's first build claims the journal; a rebuild finds it its own or stays down."""
        if self.owner is not None:  # before anything is written: store.py, "Ownership"
            check_claimed(self._open_store, self.owner)  # a StoreAt: read, not built
        store = self._open_store()
        store.own_journal(self.name, self.incarnation, claim=start != self._claimed)
        self._claimed = start
        return recovering.built(self.name, self.n_partitions, self.seed, store,
                                self._journal_policy, compiled, owned, channel_watches, sources,
                                moving)

    async def _recover(self, compiled: CompiledCatalog, owned: dict[int, int],
                       channel_watches: Sequence[tuple[str, str, str | None]],
                       sources: dict[int, str] | None, moving: Moving | None = None) -> bool:
        """One attempt to build the Shard from the store; whether it serves now (if not,
        `recovery` says why, and health shows it), or a later start took over."""
        start = self._starts
        built = asyncio.get_running_loop().run_in_executor(
            self._pool, self._recovered, compiled, owned, channel_watches, sources, moving,
            start)
        try:
            shard, recovery = await asyncio.shield(built)
        except asyncio.CancelledError:  # a new start took over: close what this one builds
            built.add_done_callback(close_unused)
            raise
        except Exception as exc:  # a store that is down, or data this version cannot read
            self.recovery = self._failures.said(exc)
            return False
        if start != self._starts:  # a later start builds its own: two would both serve
            await asyncio.get_running_loop().run_in_executor(self._pool, close_dropped, shard)
            return True
        self.shard, self.recovery = shard, recovery
        self._failures.passed()
        self._stir()  # its timers and snapshots are not those the tick loop waits for
        self._served.set()
        self._settle()  # and a failed Shard is freed
        return True

    async def _serve_again(self, compiled: CompiledCatalog, owned: dict[int, int],
                           channel_watches: Sequence[tuple[str, str, str | None]],
                           sources: dict[int, str] | None, moving: Moving | None = None,
                           tried: int = 0) -> None:
        """Recover until a Shard serves, waiting longer after each failed attempt."""
        for attempt in itertools.count(tried):
            if attempt:
                await asyncio.sleep(REBUILD_BACKOFF_S[min(attempt, len(REBUILD_BACKOFF_S)) - 1])
            if await self._recover(compiled, owned, channel_watches, sources, moving):
                return

    def _fail(self, exc: Exception) -> None:
        """The store failed under the shard, or a round failed half-way: rebuild from the store."""
        failed, self.shard = self.shard, None
        if failed is None:
            return
        log.error("%s: %s; answering UNAVAILABLE while it rebuilds from the store", self.name,
                  exc)
        self._recovering = asyncio.get_running_loop().create_task(self._rebuild(failed))

    async def _rebuild(self, failed: Shard) -> None:
        held = recovering.held_by(failed)
        await asyncio.get_running_loop().run_in_executor(self._pool, close_dropped, failed)
        await self._serve_again(held.compiled, held.owned, held.channel_watches, None,
                                held.moving)

    async def _forever(self, job: Job) -> None:
        """Run a background job; log and go on after any failure (the loop must survive)."""
        while True:
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("%s: %s failed; restarting it: %s", self.name, job.__name__,
                          where_failed(exc))
                await asyncio.sleep(0.5)

    # -- the data path -------------------------------------------------------------------------

    async def handle(self, session: str, seq: int, requests: list, routed: list[int]
                     ) -> list[Reply]:
        """Admit a sender's batch in its order; the replies, in request order. `routed`:
        the map version each request was routed under. Requests may be protocol types or
        the arrays they travel as (Shard.process)."""
        await self._sequencer.turn(session, seq)
        if self._refusals.of(session) is EVERYTHING:
            self.rejected += len(requests)
            return [OVERTAKING] * len(requests)
        if self.shard is None:
            self._refusals.refuse(session, seq)
            return [Unavailable(reason=f"{self.name} is recovering from the store")] * \
                len(requests)
        if self.queued + len(requests) > self._queue_limit:
            self._refusals.refuse(session, seq)
            self.rejected += len(requests)
            return [Busy()] * len(requests)
        size = len(msgpack.packb(requests))  # one call for the batch: a few % of its round
        batch = Batch(session, seq, requests, routed,
                      asyncio.get_running_loop().create_future(), time.perf_counter(), size,
                      makes_of(requests))
        cost = self._cost()
        parts = [batch] if cost.of_batch(batch) <= self._round_bytes else \
            cut(batch, self._round_bytes, cost)
        self._queue.extend(parts)
        self.queued += sum(len(part.requests) for part in parts)
        self._wake.set()
        self._stir()
        return await batch.future

    def _cost(self) -> RoundCost:
        """What a batch costs a round by the serving catalog (rounds.py)."""
        return self._round_cost.of(None if self.shard is None else self.shard.compiled)

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await asyncio.sleep(0)  # admit what arrived meanwhile into this round
                round_ = self._next_round()
                if round_:
                    self._run(round_)

    def _next_round(self) -> list[Batch]:
        cost = self._cost()
        while self._queue and cost.of_batch(self._queue[0]) > self._round_bytes:
            # queued before a catalog switch that made its requests cost more: cut again
            head = self._queue.popleft()
            parts = cut(head, self._round_bytes, cost)
            self._queue.extendleft(reversed(parts))
            self.queued -= len(head.requests) - sum(len(part.requests) for part in parts)
        return next_round(self._queue, self._round_limit, self._round_bytes, cost) \
            if self._queue else []

    def _run(self, round_: list[Batch]) -> None:
        # a burst admitted before a tick is applied after it: what it arms or dirties is due
        # at the next tick, not the idle loop's
        self._stirred.set()
        requests = [r for batch in round_ for r in batch.requests]
        routed = [v for batch in round_ for v in batch.routed]
        batches = [(batch.session, batch.seq, batch.requests) for batch in round_]
        held = self._refusals.held(batches)  # answered OVERTAKING
        shard = self.shard
        try:
            if shard is None:
                raise StoreUnavailable(f"{self.name} is recovering from the store")
            refused = shard.refused
            if held:
                replies, pushes = shard.process(
                    [r for k, r in enumerate(requests) if k not in held],
                    [v for k, v in enumerate(routed) if k not in held], senders_of(round_, held))
                served = iter(replies)
                replies = [OVERTAKING if k in held else next(served) for k in range(len(requests))]
            else:
                replies, pushes = shard.process(requests, routed, senders_of(round_, held))
            if held or shard.refused != refused:  # their later requests for those customers too
                self.rejected += self._refusals.refuse_busy(batches, replies)
        except Exception as exc:  # nothing of the round was acknowledged
            if not isinstance(exc, StoreUnavailable):  # a bug, not bad input
                log.error("%s: processing a round failed: %s", self.name, where_failed(exc))
                exc = StoreUnavailable(f"{self.name}: processing a round failed "
                                       f"({type(exc).__name__})")
            self._fail(exc)
            self._refuse(round_)
            # answered at once: no sync of the dropped Shard's journal covers anything of it
            shard, replies, pushes = None, [Unavailable(reason=str(exc))] * len(requests), []
        self.queued -= len(requests)
        if shard is not None and shard.journal.unsynced:
            # answered once durable; the next round is applied meanwhile
            self._syncs.after_writes(shard.journal, shard.engine.models).add_done_callback(
                functools.partial(self._answer_synced, shard, round_, replies, pushes))
        else:
            self._answer(round_, replies, pushes)

    def _answer_synced(self, shard: Shard, round_: list[Batch], replies: list[Reply],
                       pushes: list[Push], synced: asyncio.Future) -> None:
        if synced.exception() is not None:  # none of it was acknowledged
            exc = StoreUnavailable(f"{self.name}: journal: {synced.exception()}")
            if self.shard is shard:
                self._fail(exc)
            self._refuse(round_)
            replies, pushes = [Unavailable(reason=str(exc))] * len(replies), []
        self._answer(round_, replies, pushes)

    def _refuse(self, round_: list[Batch]) -> None:
        """Refuse the later batches of a failed round's senders (refusals.py)."""
        for batch in round_:
            self._refusals.refuse(batch.session, batch.seq)

    def _answer(self, round_: list[Batch], replies: list[Reply], pushes: list[Push]) -> None:
        self._rouse()  # what the round taught is durable: the model sync may take it now
        done = time.perf_counter()
        start = 0
        for batch in round_:
            n = len(batch.requests)
            if not batch.future.done():
                batch.future.set_result(replies[start:start + n])
            start += n
            # a request's kind is its first field, typed or still an array
            self._observe((r[0] for r in batch.requests), (done - batch.arrived) * 1e3)
        self._push(pushes)

    def _push(self, pushes: list[Push]) -> None:
        """Send pushes, one call per sink."""
        by_sink: dict[str, list] = {}
        for push in pushes:
            by_sink.setdefault(push.sink, []).append(push.decision)
        for sink, decisions in by_sink.items():
            self._deliver(sink, decisions)

    async def run(self, method: Callable[..., T], *args: Any) -> T:
        """Run a Shard method (`Shard.freeze`, ...) in turn with the data path; its value once
        what it journaled is durable. StoreUnavailable while the Shard is being rebuilt, or
        when the store fails under it (which starts a rebuild). A method that raises with
        changes recorded and not journaled (a bug half-way) also starts a rebuild, so the
        next round does not journal them; one that raises having changed nothing (bad
        input) leaves the Shard as it is."""
        self._stir()
        return await self._apply(method, *args)

    def _stir(self) -> None:
        """A request batch, shard method or Shard new to serving: what it changes may be due
        at the next tick (ticks.py), write or delete homes (storecount.py), teach the models
        or move their catalog or version (modelsync.py)."""
        self.stirs += 1
        self._stirred.set()
        self._rouse()

    def _rouse(self) -> None:  # the model sync's wake alone: no new work to tick or count
        if self._woken is not None:
            self._woken.set()
            self._woken = None

    def stirred(self) -> asyncio.Event:
        """An event the next stir or round's answer sets (model sync: before a step)."""
        if self._woken is None:
            self._woken = asyncio.Event()
        return self._woken

    async def _apply(self, method: Callable[..., T], *args: Any) -> T:
        """`run`, without waking the tick loop (the tick's own)."""
        shard = self.shard
        if shard is None:
            raise StoreUnavailable(f"{self.name} is recovering from the store")
        try:
            value = method(shard, *args)
            if shard.journal.unsynced:
                try:
                    await self._syncs.after_writes(shard.journal, shard.engine.models)
                except OSError as exc:
                    raise StoreUnavailable(f"{self.name}: journal: {exc}") from exc
            return value
        except StoreUnavailable as exc:
            if self.shard is shard:
                self._fail(exc)
            raise
        except Exception as exc:
            if shard.journaling.pending and self.shard is shard:
                log.error("%s: %s failed half-way: %s", self.name,
                          getattr(method, "__name__", method), where_failed(exc))
                self._fail(StoreUnavailable(f"{self.name}: {type(exc).__name__}"))
            raise

    async def settled(self) -> None:
        """Once the rounds applied so far are answered and their pushes sent (`run` waits for
        a sync only while the journal is `unsynced`, which a sync's thread ends before its
        rounds are answered)."""
        await self._syncs.settled()

    async def read_log(self, query: DecisionPage | PageOutcomes, live: list[str],
                       timeout_s: float = math.inf) -> tuple[list, bool | int]:
        """Read the decision log (decisionlog.py `read`) on a thread, once what the shard
        logged before is written: reading a store takes its time, and the log's writer works
        beside it. At most LOG_READS at once, counted until their threads end: a caller that
        stops waiting (and retries) does not stop its read, which ends, with TimeoutError,
        only once past `timeout_s`."""
        shard = self.shard
        if shard is None:
            raise StoreUnavailable(f"{self.name} is recovering from the store")
        names = decisionlog.to_read(shard.store, self.name, live)
        deadline = time.monotonic() + timeout_s

        def read() -> tuple[list, bool | int]:
            shard.decision_log.writer.written()
            return decisionlog.read(shard.store, names, query, deadline)
        await self._log_reads.acquire()
        reading = asyncio.get_running_loop().run_in_executor(None, read)
        reading.add_done_callback(lambda _: self._log_reads.release())
        return await asyncio.shield(reading)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            shard = self.shard
            if shard is None:
                continue
            self._stirred.clear()
            self._push(await self._apply(Shard.tick))
            if not self._stirred.is_set():  # idle: sleep until due (less the tick's wait)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stirred.wait(),
                                           ticks.quiet_s(shard) - self._tick_s)

    async def _count_stored(self) -> None:
        await storecount.keep_counted(self.name, lambda: self.shard, self._served,
                                      lambda: self.stirs)
