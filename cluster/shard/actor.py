"""ShardActor: the Ray actor around a Shard.

An async actor. Request batches are admitted in each sender's order (a session and sequence
number per sender: Ray does not promise order for async actors), counted against a bounded
queue (past SHARD_QUEUE_LIMIT a batch answers BUSY at once) and run by one worker. All work on
the Shard happens on the event loop's thread, between awaits, so the Shard needs no locks: a
round of the data path is tens of microseconds to a few milliseconds, and handing each one to
a worker thread cost more than that in thread wake-ups (a fifth of a shard's CPU at 1,000
decisions/s). Two things run on threads: recovery, which builds a new Shard nobody else sees
yet (the actor answers UNAVAILABLE meanwhile), and the journal's fsync (`_Syncs`): a round is
written to the journal as it is applied and answered once a sync that started after it has
finished, so the next rounds are applied while the disk works (at 6,000 events/s the shards
spent half their time waiting in fsync). Admin and health methods run in their own
concurrency group. Background loops fire timers, passivate and snapshot (every TICK_S), sync
models with the learner (every MODEL_SYNC_S) and flush metrics.

Durability: `start` recovers the shard's partitions from the store (snapshots + journal)
before it takes traffic; until then, and whenever the store fails (disk full, Redis down),
requests answer UNAVAILABLE (the gateway serves fallback decisions) while the actor rebuilds
its Shard from the store, retrying until the store is back. A Shard whose journal write
failed is never used again, so nothing unacknowledged is ever served.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from kairos.core.catalog import load_catalog
from kairos.core.compiler import compile_catalog
from kairos.core.models import ModelDelta

from kairos.cluster import pauses
from kairos.cluster.transport.dataplane import PlaneServer
from kairos.cluster.control.learner import Published
from kairos.cluster.metrics import ShardMetrics
from kairos.cluster.transport.ray_backend import RayBackend, Unavailable, sink_handle
from kairos.cluster.settings import (DATA_HOST, METRICS_FLUSH_S, MODEL_SYNC_S, SESSION_START_S,
                                     SHARD_QUEUE_LIMIT, SHARD_ROUND_LIMIT, TICK_S)
from kairos.cluster.shard.shard import BUSY, UNAVAILABLE, Push, Shard
from kairos.cluster.storage.store import StoreUnavailable, open_store

log = logging.getLogger("kairos.shard")
REBUILD_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)  # waits between attempts to rebuild from the store


class _Syncs:
    """Group commit off the event loop: one journal fsync at a time, on a thread of its own.
    Whoever asks waits for the first sync that starts after it asked, which covers everything
    written before; meanwhile the shard applies its next rounds."""

    def __init__(self, name: str):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-sync")
        self._running = False
        self._next: asyncio.Future | None = None  # waiting for the sync after the running one
        self._journal = None

    def after_writes(self, journal) -> asyncio.Future:
        self._journal = journal
        waiting = self._next
        if waiting is None:
            waiting = self._next = asyncio.get_running_loop().create_future()
            if not self._running:
                self._start()
        return waiting

    def _start(self) -> None:
        waiting, self._next = self._next, None
        self._running = True
        syncing = asyncio.get_running_loop().run_in_executor(self._pool, self._journal.sync)
        syncing.add_done_callback(functools.partial(self._finished, waiting))

    def _finished(self, waiting: asyncio.Future, syncing: asyncio.Future) -> None:
        self._running = False
        if syncing.exception() is None:
            waiting.set_result(None)
        else:
            waiting.set_exception(syncing.exception())
        if self._next is not None:
            self._start()


@ray.remote(num_cpus=0, concurrency_groups={"admin": 2})
class ShardActor:
    def __init__(self, name: str, n_partitions: int, seed: int, store_url: str = "memory",
                 journal_policy: str = "fsync"):
        self.name = name
        self.n_partitions = n_partitions
        self.seed = seed
        self.store_url = store_url
        self.journal_policy = journal_policy
        self.recovery: dict[str, Any] = {}  # what the last recovery did
        self.incarnation = uuid.uuid4().hex  # changes when Ray restarts the actor
        self.shard: Shard | None = None
        self.backend = RayBackend()
        self.metrics = ShardMetrics(name)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._queue: deque = deque()
        self._queued = 0
        self._rejected = 0
        self._turns: dict[str, int] = {}  # sender session -> next sequence number
        self._waiting: dict[str, set[int]] = {}
        self._turn: asyncio.Condition | None = None
        self._wake: asyncio.Event | None = None
        self._outbox: tuple[str, ModelDelta] | None = None
        self._sinks: dict[str, Any] = {}
        self._snapshot: dict[str, Any] = {"shard": name, "started": False}
        self._loops: list[asyncio.Task] = []
        self._flushed: Shard | None = None  # the Shard whose tallies the metrics follow
        self._plane = PlaneServer(self.handle, self.incarnation)
        self._syncs = _Syncs(name)

    # -- lifecycle -----------------------------------------------------------------------------

    async def ready(self) -> str:
        return self.incarnation

    async def data_address(self) -> tuple[str, int, str]:
        """Where this incarnation serves request batches (dataplane.py): host, port and the
        incarnation a connection must name. (On the default group's event loop, the one
        `handle` and the worker use: each concurrency group has a loop of its own.)"""
        host, port = await self._plane.start(DATA_HOST or ray.util.get_node_ip_address())
        return host, port, self.incarnation

    async def start(self, catalog_text: str, partitions: list[int],
                    channel_watches: list[tuple], map_version: int,
                    sources: dict[int, str] | None = None) -> str:
        """Recover these partitions from the store (`sources`: the journal of a dead shard
        whose partitions these were), then serve them on this catalog."""
        compiled = compile_catalog(load_catalog(catalog_text))
        if self._turn is None:
            self._turn, self._wake = asyncio.Condition(), asyncio.Event()
        if not self._loops:
            self._loops = [asyncio.get_running_loop().create_task(self._forever(job))
                           for job in (self._work, self._tick, self._sync_models,
                                       self._flush_metrics)]
        self.shard = None
        self.shard = await asyncio.get_running_loop().run_in_executor(
            self._pool, self._recovered, compiled, {p: map_version for p in partitions},
            [tuple(w) for w in channel_watches], sources)
        pauses.settle()
        return self.incarnation

    def _recovered(self, compiled, owned: dict[int, int], channel_watches: list[tuple],
                   sources: dict[int, str] | None) -> Shard:
        """A Shard rebuilt from the store (on the worker thread)."""
        shard = Shard(self.name, compiled, [], self.n_partitions, seed=self.seed,
                      store=open_store(self.store_url), journal_policy=self.journal_policy)
        shard.sync_commits = False  # _Syncs makes each round durable before it is answered
        shard.owned = dict(owned)
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
        watches = [(w.sink, w.channel, w.placement) for w in failed.channel_watches]
        try:
            failed.close()
        except OSError:
            pass
        attempt = 0
        while True:
            try:
                self.shard = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._recovered, failed.compiled, owned, watches, None)
                pauses.settle()  # and the failed Shard is freed
                return
            except (StoreUnavailable, OSError) as exc:
                wait = REBUILD_BACKOFF_S[min(attempt, len(REBUILD_BACKOFF_S) - 1)]
                log.warning("%s: rebuilding from the store failed (%s); again in %.1f s",
                            self.name, exc, wait)
                attempt += 1
                await asyncio.sleep(wait)

    async def _forever(self, job) -> None:
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

    async def handle(self, session: str, seq: int, requests: list, routed: list[int]) -> list:
        """Admit a sender's batch in its order; the results, in request order. `routed`:
        the map version each request was routed under."""
        if self._turn is None:
            self._turn, self._wake = asyncio.Condition(), asyncio.Event()
        async with self._turn:
            await self._in_turn(session, seq)
            self._turns[session] = seq + 1
            self._turn.notify_all()
            if self.shard is None:
                return [(UNAVAILABLE, f"{self.name} is recovering from the store")] * \
                    len(requests)
            if self._queued + len(requests) > SHARD_QUEUE_LIMIT:
                self._rejected += len(requests)
                return [(BUSY,)] * len(requests)
            future = asyncio.get_running_loop().create_future()
            self._queue.append((requests, routed, future, time.perf_counter()))
            self._queued += len(requests)
            self._wake.set()
        return await future

    async def _in_turn(self, session: str, seq: int) -> None:
        """Wait for the sender's previous batch. A sender this incarnation has not seen yet
        (its earlier batches went to the previous one, before a restart) starts at the
        lowest sequence number that arrives within SESSION_START_S."""
        waiting = self._waiting.setdefault(session, set())
        waiting.add(seq)
        try:
            while self._turns.get(session, 0) != seq:
                try:
                    async with asyncio.timeout(SESSION_START_S):
                        await self._turn.wait()
                except asyncio.TimeoutError:
                    if session not in self._turns:
                        self._turns[session] = min(waiting)
                        self._turn.notify_all()
        finally:
            waiting.discard(seq)
            if not waiting:
                del self._waiting[session]

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await asyncio.sleep(0)  # admit what arrived meanwhile into this round
                round_ = [self._queue.popleft()]
                size = len(round_[0][0])
                while self._queue and size + len(self._queue[0][0]) <= SHARD_ROUND_LIMIT:
                    round_.append(self._queue.popleft())
                    size += len(round_[-1][0])
                combined = [r for requests, _, _, _ in round_ for r in requests]
                routed = [v for _, versions, _, _ in round_ for v in versions]
                shard = self.shard
                try:
                    if shard is None:
                        raise StoreUnavailable(f"{self.name} is recovering from the store")
                    results, pushes = shard.process(combined, routed)
                except StoreUnavailable as exc:  # nothing of the round was acknowledged
                    self._fail(exc)
                    results, pushes = [(UNAVAILABLE, str(exc))] * len(combined), []
                except Exception as exc:  # a bug, not bad input: fail this round's callers
                    log.exception("%s: processing a round failed", self.name)
                    for _, _, future, _ in round_:
                        future.set_exception(exc)
                    self._queued -= size
                    continue
                self._queued -= size
                if shard is not None and shard.journal.unsynced:
                    # answered once durable; the next round is applied meanwhile
                    self._syncs.after_writes(shard.journal).add_done_callback(
                        functools.partial(self._answer_synced, shard, round_, results, pushes))
                else:
                    self._answer(round_, results, pushes)

    def _answer_synced(self, shard: Shard, round_: list, results: list, pushes: list[Push],
                       synced: asyncio.Future) -> None:
        if synced.exception() is not None:  # none of it was acknowledged
            exc = StoreUnavailable(f"{self.name}: journal: {synced.exception()}")
            if self.shard is shard:
                self._fail(exc)
            results, pushes = [(UNAVAILABLE, str(exc))] * len(results), []
        self._answer(round_, results, pushes)

    def _answer(self, round_: list, results: list, pushes: list[Push]) -> None:
        done = time.perf_counter()
        start = 0
        for requests, _, future, arrived in round_:
            if not future.done():
                future.set_result(results[start:start + len(requests)])
            start += len(requests)
            self.metrics.observe_batch((r[0] for r in requests), (done - arrived) * 1e3)
        self._deliver(pushes)

    async def _on_shard(self, method: str, *args: Any) -> Any:
        """Run a Shard method, in turn with the data path; its value once what it journaled
        is durable."""
        shard = self.shard
        if shard is None:
            raise StoreUnavailable(f"{self.name} is recovering from the store")
        try:
            value = getattr(shard, method)(*args)
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

    # -- push ----------------------------------------------------------------------------------

    def _deliver(self, pushes: list[Push]) -> None:
        by_sink: dict[str, list] = {}
        for push in pushes:
            by_sink.setdefault(push.sink, []).append(push.decision)
        for sink, decisions in by_sink.items():
            asyncio.get_running_loop().create_task(self._send_push(sink, decisions))

    async def _send_push(self, sink: str, decisions: list) -> None:
        try:
            handle = self._sinks.get(sink)
            if handle is None:
                handle = self._sinks[sink] = sink_handle(sink)
            await handle.deliver.remote(decisions)
        except (ValueError, ray.exceptions.RayActorError):
            log.warning("%s: watch sink %s is gone; dropping its watches", self.name, sink)
            self._sinks.pop(sink, None)
            await self._on_shard("drop_sink", sink)

    # -- background ----------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if self.shard is not None:
                self._deliver(await self._on_shard("tick"))

    async def _sync_models(self) -> None:
        while True:
            await asyncio.sleep(MODEL_SYNC_S)
            if self.shard is None:
                continue
            catalog_version, delta, known = self._take_delta()
            try:
                published = await self.backend.learner_call("sync", catalog_version, delta,
                                                            known)
            except Unavailable:
                if delta is not None:
                    self._outbox = (catalog_version, delta)  # sent with the next sync
                continue
            if published is not None and self.shard is not None:
                self._adopt(published)

    def _take_delta(self) -> tuple[str, ModelDelta | None, int]:
        engine = self.shard.engine
        delta = engine.models.take_delta()
        version = engine.compiled.version
        if self._outbox is not None:
            unsent_version, unsent = self._outbox
            self._outbox = None
            if unsent_version == version:
                delta = delta + unsent
            else:
                log.warning("%s: model learning from before the switch to catalog %s could "
                            "not reach the learner and is kept only here", self.name, version)
        if not (delta.positives.any() or delta.negatives.any()):
            delta = None
        return version, delta, engine.models.version

    def _adopt(self, published: Published) -> None:
        engine = self.shard.engine
        if published.catalog_version == engine.compiled.version and \
                published.version > engine.models.version:
            engine.adopt_models(published.mean, published.precision, published.positives,
                                published.negatives, published.version)

    async def _flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_FLUSH_S)
            shard = self.shard
            if shard is None:
                continue
            pauses.keep_short()
            if shard is not self._flushed:
                self.metrics.restart_tallies()
                self._flushed = shard
            counts = shard.counts.copy()
            counts["rejected"] = self._rejected
            self.metrics.flush(counts, shard.by_channel.copy(), shard.by_group.copy(),
                               self._queued, len(shard.engine.table),
                               shard.engine.models.version, self.recovery.get("seconds", 0.0),
                               len(shard.dirty))
            self._snapshot = await self._on_shard("stats")

    # -- control (from the controller) --------------------------------------------------------

    async def freeze(self, partitions: list[int], version: int) -> bytes:
        return await self._on_shard("freeze", partitions, version)

    async def adopt(self, payload: bytes, version: int) -> int:
        return await self._on_shard("adopt", payload, version)

    async def release(self, partitions: list[int]) -> None:
        await self._on_shard("release", partitions)

    async def thaw(self, partitions: list[int], version: int) -> None:
        await self._on_shard("thaw", partitions, version)

    async def prepare(self, catalog_text: str) -> str:
        return await self._on_shard("prepare", catalog_text)

    async def commit(self, version: str) -> None:
        await self._on_shard("commit", version)
        pauses.settle()  # the old catalog's engine is freed

    async def retire(self) -> None:
        """Owning nothing any more: drop the journal, before the controller stops this actor."""
        await self._on_shard("retire")

    async def watch_channel(self, sink: str, channel: str, placement: str | None,
                            active: bool) -> None:
        await self._on_shard("watch_channel", sink, channel, placement, active)

    async def stats(self) -> dict[str, Any]:
        """Fresh statistics, taken in turn with the data path."""
        stats = await self._on_shard("stats")
        return {**stats, "queued": self._queued, "rejected": self._rejected,
                "incarnation": self.incarnation, "recovery": self.recovery}

    # -- admin (own concurrency group: answers while the data path is busy) --------------------

    @ray.method(concurrency_group="admin")
    async def health(self) -> dict[str, Any]:
        """Cheap liveness and the last statistics snapshot (at most a second old)."""
        return {**self._snapshot, "queued": self._queued, "started": self.shard is not None,
                "incarnation": self.incarnation, "node": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(), "recovery": self.recovery}
