"""ShardHost: what runs a Shard inside an actor, without Ray.

Request batches are admitted in each sender's order (sequencer.py: a session and a sequence
number per sender, since Ray does not promise order for async actors), counted against a
bounded queue (past `queue_limit` a batch answers BUSY at once) and run by one worker in
rounds of up to `round_limit` requests, so many senders' batches share a kernel call. All
work on the Shard happens on the event loop's thread, between awaits, so the Shard needs no
locks: a round of the data path is tens of microseconds to a few milliseconds, and handing
each one to a worker thread cost more than that in thread wake-ups (a fifth of a shard's CPU
at 1,000 decisions/s). Two things run on threads: recovery, which builds a new Shard nobody
else sees yet (requests answer UNAVAILABLE meanwhile), and the journal's fsync (syncs.py): a
round is written to the journal as it is applied and answered once a sync that started after
it has finished, so the next rounds are applied while the disk works (at 6,000 events/s the
shards spent half their time waiting in fsync). A background loop fires timers, passivates
and snapshots every `tick_s`.

Durability: `start` recovers the shard's partitions from the store (snapshots + journal)
before it takes traffic; until then, and whenever the store fails (disk full, Redis down),
requests answer UNAVAILABLE (the gateway serves fallback decisions) while the host rebuilds
its Shard from the store, retrying until the store is back. A Shard whose journal write or
sync failed is never used again, so nothing unacknowledged is ever served.

ShardActor (actor.py) wraps a ShardHost in a Ray actor and gives it what needs Ray: the data
plane's server, the learner (modelsync.py keeps the books), the watch sinks, the metrics.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Sequence, TypeVar

from kairos.core.compiler import CompiledCatalog

from kairos.cluster.protocol import Busy, Reply, Unavailable
from kairos.cluster.settings import (SESSION_START_S, SHARD_QUEUE_LIMIT, SHARD_ROUND_LIMIT,
                                     TICK_S)
from kairos.cluster.shard.sequencer import Sequencer
from kairos.cluster.shard.shard import Shard
from kairos.cluster.shard.syncs import Syncs
from kairos.cluster.shard.watches import Push
from kairos.cluster.storage.store import Store, StoreUnavailable

log = logging.getLogger("kairos.shard")
REBUILD_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)  # waits between attempts to rebuild from the store
T = TypeVar("T")
Job = Callable[[], Awaitable[None]]


@dataclass
class _Batch:
    requests: list
    routed: list[int]
    future: asyncio.Future
    arrived: float  # perf_counter


class ShardHost:
    def __init__(self, name: str, n_partitions: int, seed: int,
                 open_store: Callable[[], Store], journal_policy: str = "fsync", *,
                 deliver: Callable[[str, list], None] = lambda sink, decisions: None,
                 observe: Callable[[Iterable[str], float], None] = lambda kinds, ms: None,
                 settle: Callable[[], None] = lambda: None, jobs: Sequence[Job] = (),
                 queue_limit: int = SHARD_QUEUE_LIMIT, round_limit: int = SHARD_ROUND_LIMIT,
                 session_start_s: float = SESSION_START_S, tick_s: float = TICK_S):
        """`open_store` opens the store each (re)built Shard uses; `deliver(sink, decisions)`
        sends pushes; `observe(kinds, latency_ms)` is told each answered batch's request
        kinds and time in the shard; `settle` runs after a Shard is (re)built (the actor
        tidies the heap: pauses.py); `jobs` run in the background, with the host's own, once
        it has started, each restarted after a failure."""
        self.name = name
        self.n_partitions = n_partitions
        self.seed = seed
        self.shard: Shard | None = None
        self.recovery: dict[str, Any] = {}  # what the last recovery did
        self.queued = 0  # requests admitted, not yet processed
        self.rejected = 0  # requests answered BUSY
        self._open_store = open_store
        self._journal_policy = journal_policy
        self._deliver = deliver
        self._observe = observe
        self._settle = settle
        self._jobs = (self._work, self._tick, *jobs)
        self._queue_limit = queue_limit
        self._round_limit = round_limit
        self._tick_s = tick_s
        self._sequencer = Sequencer(session_start_s)
        self._syncs = Syncs(name)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._queue: deque[_Batch] = deque()
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task] = []

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, compiled: CompiledCatalog, owned: dict[int, int],
                    channel_watches: Sequence[tuple[str, str, str | None]],
                    sources: dict[int, str] | None = None) -> None:
        """Recover the `owned` partitions (partition -> granting map version) from the store
        and serve them on this catalog (`sources`: the journal of a dead shard whose
        partitions these were); start the background loops the first time."""
        if not self._loops:
            loop = asyncio.get_running_loop()
            self._loops = [loop.create_task(self._forever(job)) for job in self._jobs]
        self.shard = None
        self.shard = await asyncio.get_running_loop().run_in_executor(
            self._pool, self._recovered, compiled, owned, channel_watches, sources)
        self._settle()

    def stop(self) -> None:
        """Cancel the background loops (the Shard stays as it is)."""
        for task in self._loops:
            task.cancel()
        self._loops = []

    def _recovered(self, compiled: CompiledCatalog, owned: dict[int, int],
                   channel_watches: Sequence[tuple[str, str, str | None]],
                   sources: dict[int, str] | None) -> Shard:
        """A Shard rebuilt from the store (on the worker thread)."""
        shard = Shard(self.name, compiled, owned, self.n_partitions, seed=self.seed,
                      store=self._open_store(), journal_policy=self._journal_policy)
        shard.sync_commits = False  # Syncs makes each round durable before it is answered
        for sink, channel, placement in channel_watches:
            shard.watch_channel(sink, channel, placement)
        self.recovery = shard.recover(sources)
        log.info("%s recovered %d partitions, %d customers in memory, %d journal records "
                 "replayed in %.2f s", self.name, len(owned), self.recovery["resident"],
                 self.recovery["replayed"], self.recovery["seconds"])
        for name in {n for n in (sources or {}).values() if n != self.name}:
            shard.store.drop_journal(name)  # its partitions are snapshotted here now
        return shard

    def _fail(self, exc: Exception) -> None:
        """The store failed under the shard: stop serving and rebuild from the store."""
        failed, self.shard = self.shard, None
        if failed is None:
            return
        log.error("%s: %s; answering UNAVAILABLE while it rebuilds from the store", self.name,
                  exc)
        asyncio.get_running_loop().create_task(self._rebuild(failed))

    async def _rebuild(self, failed: Shard) -> None:
        owned = {p: v for p, v in failed.owned.items() if p not in failed.leaving}
        watches = [(w.sink, w.channel, w.placement) for w in failed.watches.channel]
        try:
            failed.close()
        except OSError:
            pass
        attempt = 0
        while True:
            try:
                self.shard = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._recovered, failed.compiled, owned, watches, None)
                self._settle()  # and the failed Shard is freed
                return
            except Exception as exc:  # a store that is down, or data this version cannot read
                wait = REBUILD_BACKOFF_S[min(attempt, len(REBUILD_BACKOFF_S) - 1)]
                unexpected = not isinstance(exc, (StoreUnavailable, OSError))
                self.recovery = {"failed": f"{type(exc).__name__}: {exc}"}  # health() shows it
                log.log(logging.ERROR if unexpected else logging.WARNING,
                        "%s: rebuilding from the store failed (%s: %s); again in %.1f s",
                        self.name, type(exc).__name__, exc, wait, exc_info=unexpected)
                attempt += 1
                await asyncio.sleep(wait)

    async def _forever(self, job: Job) -> None:
        """Run a background job; log and go on after any failure (the loop must survive)."""
        while True:
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: %s failed; restarting it", self.name, job.__name__)
                await asyncio.sleep(0.5)

    # -- the data path -------------------------------------------------------------------------

    async def handle(self, session: str, seq: int, requests: list, routed: list[int]
                     ) -> list[Reply]:
        """Admit a sender's batch in its order; the replies, in request order. `routed`:
        the map version each request was routed under. Requests may be protocol types or
        the arrays they travel as (Shard.process)."""
        await self._sequencer.turn(session, seq)
        if self.shard is None:
            return [Unavailable(reason=f"{self.name} is recovering from the store")] * \
                len(requests)
        if self.queued + len(requests) > self._queue_limit:
            self.rejected += len(requests)
            return [Busy()] * len(requests)
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Batch(requests, routed, future, time.perf_counter()))
        self.queued += len(requests)
        self._wake.set()
        return await future

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await asyncio.sleep(0)  # admit what arrived meanwhile into this round
                self._run(self._next_round())

    def _next_round(self) -> list[_Batch]:
        """Queued batches, oldest first, up to `round_limit` requests (at least one batch)."""
        round_ = [self._queue.popleft()]
        size = len(round_[0].requests)
        while self._queue and size + len(self._queue[0].requests) <= self._round_limit:
            round_.append(self._queue.popleft())
            size += len(round_[-1].requests)
        return round_

    def _run(self, round_: list[_Batch]) -> None:
        requests = [r for batch in round_ for r in batch.requests]
        routed = [v for batch in round_ for v in batch.routed]
        shard = self.shard
        try:
            if shard is None:
                raise StoreUnavailable(f"{self.name} is recovering from the store")
            replies, pushes = shard.process(requests, routed)
        except StoreUnavailable as exc:  # nothing of the round was acknowledged
            self._fail(exc)
            replies, pushes = [Unavailable(reason=str(exc))] * len(requests), []
        except Exception as exc:  # a bug, not bad input: fail this round's callers
            log.exception("%s: processing a round failed", self.name)
            for batch in round_:
                if not batch.future.done():
                    batch.future.set_exception(exc)
            self.queued -= len(requests)
            return
        self.queued -= len(requests)
        if shard is not None and shard.journal.unsynced:
            # answered once durable; the next round is applied meanwhile
            self._syncs.after_writes(shard.journal).add_done_callback(
                functools.partial(self._answer_synced, shard, round_, replies, pushes))
        else:
            self._answer(round_, replies, pushes)

    def _answer_synced(self, shard: Shard, round_: list[_Batch], replies: list[Reply],
                       pushes: list[Push], synced: asyncio.Future) -> None:
        if synced.exception() is not None:  # none of it was acknowledged
            exc = StoreUnavailable(f"{self.name}: journal: {synced.exception()}")
            if self.shard is shard:
                self._fail(exc)
            replies, pushes = [Unavailable(reason=str(exc))] * len(replies), []
        self._answer(round_, replies, pushes)

    def _answer(self, round_: list[_Batch], replies: list[Reply], pushes: list[Push]) -> None:
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
        when the store fails under it (which starts a rebuild)."""
        shard = self.shard
        if shard is None:
            raise StoreUnavailable(f"{self.name} is recovering from the store")
        try:
            value = method(shard, *args)
            if shard.journal.unsynced:
                try:
                    await self._syncs.after_writes(shard.journal)
                except OSError as exc:
                    raise StoreUnavailable(f"{self.name}: journal: {exc}") from exc
            return value
        except StoreUnavailable as exc:
            if self.shard is shard:
                self._fail(exc)
            raise

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            if self.shard is not None:
                self._push(await self.run(Shard.tick))
