"""ShardActor: the Ray actor around a Shard.

An async actor. Request batches are admitted in each sender's order (a session and sequence
number per sender: Ray does not promise order for async actors), counted against a bounded
queue (past SHARD_QUEUE_LIMIT a batch answers BUSY at once) and run by one worker. All work on
the Shard happens on one executor thread, so the Shard needs no locks, the Cython kernels run
with the GIL released and the event loop stays free to admit, answer and push. Admin and
health methods run in their own concurrency group. Background loops fire timers and
passivate (every TICK_S), sync models with the learner (every MODEL_SYNC_S) and flush metrics.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from kairos.core.catalog import load_catalog
from kairos.core.compiler import compile_catalog
from kairos.core.models import ModelDelta

from .learner import Published
from .metrics import ShardMetrics
from .ray_api import RayBackend, Unavailable, sink_handle
from .settings import MODEL_SYNC_S, SHARD_QUEUE_LIMIT, SHARD_ROUND_LIMIT, TICK_S
from .shard import BUSY, Push, Shard

log = logging.getLogger("kairos.shard")
METRICS_FLUSH_S = 1.0
SESSION_START_S = 2.0


@ray.remote(num_cpus=0, concurrency_groups={"admin": 2})
class ShardActor:
    def __init__(self, name: str, n_partitions: int, seed: int):
        self.name = name
        self.n_partitions = n_partitions
        self.seed = seed
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

    # -- lifecycle -----------------------------------------------------------------------------

    async def ready(self) -> str:
        return self.incarnation

    async def start(self, catalog_text: str, partitions: list[int],
                    channel_watches: list[tuple], map_version: int) -> str:
        """Serve these partitions on this catalog (after creation, or after a restart)."""
        compiled = compile_catalog(load_catalog(catalog_text))
        shard = Shard(self.name, compiled, partitions, self.n_partitions, granted=map_version,
                      seed=self.seed)
        for sink, channel, placement in channel_watches:
            shard.watch_channel(sink, channel, placement)
        if self._turn is None:
            self._turn, self._wake = asyncio.Condition(), asyncio.Event()
        if self.shard is None:
            loop = asyncio.get_running_loop()
            for job in (self._work, self._tick, self._sync_models, self._flush_metrics):
                loop.create_task(self._forever(job))
        self.shard = shard
        return self.incarnation

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
            if self.shard is None or self._queued + len(requests) > SHARD_QUEUE_LIMIT:
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
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                round_ = [self._queue.popleft()]
                size = len(round_[0][0])
                while self._queue and size + len(self._queue[0][0]) <= SHARD_ROUND_LIMIT:
                    round_.append(self._queue.popleft())
                    size += len(round_[-1][0])
                combined = [r for requests, _, _, _ in round_ for r in requests]
                routed = [v for _, versions, _, _ in round_ for v in versions]
                try:
                    results, pushes = await loop.run_in_executor(self._pool, self.shard.process,
                                                                 combined, routed)
                except Exception as exc:  # a bug, not bad input: fail this round's callers
                    log.exception("%s: processing a round failed", self.name)
                    for _, _, future, _ in round_:
                        future.set_exception(exc)
                    self._queued -= size
                    continue
                self._queued -= size
                done = time.perf_counter()
                start = 0
                for requests, _, future, arrived in round_:
                    future.set_result(results[start:start + len(requests)])
                    start += len(requests)
                    self.metrics.observe_batch((r[0] for r in requests),
                                               (done - arrived) * 1e3)
                self._deliver(pushes)

    async def _on_shard(self, method: str, *args: Any) -> Any:
        """Run a Shard method on the worker thread, in turn with the data path."""
        fn = getattr(self.shard, method)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

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
            self._deliver(await self._on_shard("tick"))

    async def _sync_models(self) -> None:
        while True:
            await asyncio.sleep(MODEL_SYNC_S)
            catalog_version, delta, known = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._take_delta)
            try:
                published = await self.backend.learner_call("sync", catalog_version, delta,
                                                            known)
            except Unavailable:
                if delta is not None:
                    self._outbox = (catalog_version, delta)  # sent with the next sync
                continue
            if published is not None:
                await asyncio.get_running_loop().run_in_executor(self._pool, self._adopt,
                                                                 published)

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
            counts = shard.counts.copy()
            counts["rejected"] = self._rejected
            self.metrics.flush(counts, shard.by_channel.copy(), shard.by_group.copy(),
                               self._queued, len(shard.engine.table),
                               shard.engine.models.version)
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

    async def watch_channel(self, sink: str, channel: str, placement: str | None,
                            active: bool) -> None:
        await self._on_shard("watch_channel", sink, channel, placement, active)

    async def stats(self) -> dict[str, Any]:
        """Fresh statistics, taken in turn with the data path."""
        stats = await self._on_shard("stats")
        return {**stats, "queued": self._queued, "rejected": self._rejected,
                "incarnation": self.incarnation}

    # -- admin (own concurrency group: answers while the data path is busy) --------------------

    @ray.method(concurrency_group="admin")
    async def health(self) -> dict[str, Any]:
        """Cheap liveness and the last statistics snapshot (at most a second old)."""
        return {**self._snapshot, "queued": self._queued, "started": self.shard is not None,
                "incarnation": self.incarnation, "node": ray.get_runtime_context().get_node_id()}
