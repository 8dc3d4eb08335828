"""Open-loop load generator processes speaking kairos.v1 over gRPC (grpc.aio).

Each process follows its own schedule of intended send times (Poisson arrivals at
rate / processes, seeded) and never waits for an answer before the next send, so a slow
server cannot slow the load down. Latency is measured from the *intended* send time, so the
queueing a stalled server causes is counted (no coordinated omission); the time from the
actual send ("service") and how late each send left ("lag") are recorded too, so a generator
that fell behind its schedule shows as such instead of passing for server latency. Everything
goes into HdrHistograms, which the parent merges across processes (encode/decode).

A step (`GeneratorPool.run`) has a schedule of its own, and every request that depends on no
answer is built before it starts (outside its measured window, and not between the send a
schedule stamps and the call); continuous traffic (`GeneratorPool.traffic`, unary operations)
is one schedule cut into steps, so that the load does not pause between them, each request
built as it leaves.

Operations (`Step.op`):
  decide, ingest, journey  unary calls: decisions, events (each asking for the re-evaluated
                           decision), or whole sessions (events, decisions and outcomes)
  stream                   events on STREAMS_PER_PROCESS IngestStreams per process; an ack's
                           latency is taken from its event's intended send time; a stream
                           that ends before its schedule does fails the events it did not
                           ack, and its lane opens another (the ends are counted), the
                           sends due meanwhile held for it (failed if the window ends first)
  batch                    events arrive on schedule at a relay, which sends what it holds
                           as one IngestBatch every BATCH_WINDOW_S (or at BATCH_EVENTS); an
                           event's latency runs from its intended arrival to its batch's ack,
                           so the relay's wait counts
  push                     a channel-wide WatchDecisions stream on the call center; events
                           for fresh customers on the web; latency = push received − intended
                           send time of the event that caused it
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import math
import multiprocessing
import os
import queue
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, NamedTuple, TypeVar

import grpc
import psutil
from hdrh.histogram import HdrHistogram

from kairos.cluster.control.partitions import partition_of
from kairos.cluster.gateway import wire
from kairos.cluster.shard.outcomes import RATE_REFUSAL
from kairos.core.catalog import Catalog, load_default_catalog
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from .cpu import CpuWindow, generator_cpu, server_cpu
from .journeys import DECIDE, EVENT, RESPOND, Journeys, Request, customer_id
from .lifetime import exit_with_parent

T = TypeVar("T")

DEADLINE_S = 1.0  # every call's deadline; Kairos answers a late Decide with its fallback
ANSWER_GRACE_S = 1.0  # past a call's deadline, how long its answer is still waited for
LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS = 1, 60_000_000, 3  # histogram range and precision
# A send leaving this much after its intended time: the generator is behind (asyncio's timers
# alone make sends up to ~1-2 ms late; half the p99 target is where it would distort results).
LATE_SEND_MS = 5.0
CUSTOMER_RATE = "RESOURCE_EXHAUSTED (customer's outcome rate)"  # an error label of its own
BEHIND_SHARE = 0.01  # above this share of late sends a step is flagged "generator behind"
# between submitting continuous traffic, or every process having built a step's requests,
# and the first intended send
START_DELAY_S = 0.5
# Building a step's requests before it starts: a process's share at the top rates (240,000
# at ~10 µs) takes seconds; the parent waits this long for every process's, a process as long
# for the start, polling every START_POLL_S
BUILD_TIMEOUT_S, START_POLL_S = 300.0, 0.001
CONNECT_TIMEOUT_S = 10.0
# IngestStreams each process keeps open: a high-volume channel spreads its events over a few
# streams, and one stream's acks are written one after another.
STREAMS_PER_PROCESS = 4
# A relay's batches (op "batch"): sent every BATCH_WINDOW_S of arrivals, or at BATCH_EVENTS.
BATCH_WINDOW_S, BATCH_EVENTS = 0.005, 1000
PUSH_CHANNEL, PUSH_PLACEMENT = "call_center", "agent_screen"  # where pushes are watched
PROBE_CHANNEL, PROBE_PLACEMENT = "web", "hero"  # where push probes' events come from
# Before each step (continuous traffic: before its first): sequential Decide probes until
# SETTLE_PROBES in a row answer within SETTLE_MS, so queues an overloaded step left behind do
# not count against the next one; once a probe was refused, until none has been for
# SETTLE_QUIET_S too (a slow answer restarts the run, not the quiet time). A gateway that shed
# goes on refusing a share of new calls for a second or more once it is on time again (PIE's
# share decays; it refuses none while the share is under 20 % and the loop on time): three
# probes in a row got through a share of 30-40 % (0.7³: a third of the time), and the next
# step's IngestStreams, opened at once, were refused as they opened. At a share of 20 %, 20
# probes get through with 1 % odds; a second without a refusal, with none.
SETTLE_MS, SETTLE_PROBES, SETTLE_QUIET_S, SETTLE_TIMEOUT_S = 20.0, 20, 1.0, 120.0
# Continuous traffic that runs until stopped ends with the step under way this long after
# stop(): every process reads which step is the last before its schedule reaches that end.
STOP_NOTICE_S = 0.1
OPEN_ENDED = 2**62  # the last step of continuous traffic not stopped yet
UNARY_OPS = frozenset({"decide", "ingest", "journey"})  # one call per request
# a push step's kind that is no request sent: each probe's push, recorded beside its event (the
# request), so a step's CPU per request leaves it out
PUSH = "push"
# the error label of the events of an IngestStream that ended OK before its schedule did
STREAM_ENDED = "STREAM_ENDED"
# ... and of one whose end a write raced: grpc.aio's write, failing after the trailers came
# and before the call saw them, puts its own INTERNAL status on the call, so the server's
# (a refusal, mostly) is lost; called INTERNAL, thousands of refused sends read as a fault
STATUS_LOST = "STREAM_ENDED (status lost: a write raced the end)"
_RACED_DETAILS = "Internal error from Core"  # grpc.aio's details for that status
# A stream lane reopens its stream this long after it ended, as an IngestStream client
# would (a gateway refusing at open is not hammered), until its schedule is done.
REOPEN_BACKOFF_S = 0.05
# ... and the label of the sends it still held, waiting for another, when the window ended
NOT_SENT = "STREAM_ENDED (not sent before the window ended)"

PERCENTILES = (("50", 50.0), ("90", 90.0), ("99", 99.0), ("99_9", 99.9))  # (key, percent)
OPS = {"decide": frozenset({DECIDE}), "ingest": frozenset({EVENT}),
       "journey": frozenset({DECIDE, EVENT, RESPOND}), "stream": frozenset({EVENT}),
       "batch": frozenset({EVENT})}


@dataclass(frozen=True)
class Step:
    """One load step, split evenly over the generator processes."""

    target: str  # host:port of a kairos.v1 DecisionService
    op: str
    rate_per_s: float  # intended sends per second, all processes together
    warmup_s: float  # sent but not recorded: connections, caches and JITs settle
    measure_s: float
    customers: int  # the Zipf population
    seed: int = 0
    # A target per partition (the map's owners): unary calls go to their customer's owner, as
    # a client that routes sends them (decide, ingest, journey only). Empty: all to `target`.
    routes: tuple[str, ...] = ()


class Send(NamedTuple):
    intended: float  # perf_counter time the schedule meant it to leave
    sent: float  # when it left
    measured: bool  # after the warm-up


def _histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def _record(histogram: HdrHistogram, seconds: float) -> None:
    histogram.record_value(min(max(int(seconds * 1e6), LOWEST_US), HIGHEST_US))


@dataclass
class Window:
    """The span a step's server CPU is counted over (perf_counter time; none until the step
    starts). Its CPU per request divides by the answers that came inside it, whenever their
    request was sent: an overloaded step answers much of what it was sent after the window
    has closed, CPU the window does not hold, and its warm-up's backlog inside it."""

    start: float = math.inf
    end: float = math.inf

    def __contains__(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass
class KindStats:
    """One kind of request (decide, event, respond, push) in one process or merged."""

    latency: HdrHistogram = field(default_factory=_histogram)  # from the intended send time
    service: HdrHistogram = field(default_factory=_histogram)  # from the actual send
    # latency split by outcome: served (OK, not a fallback), and refused or fallen back
    # (an overloaded system should serve what it admits fast and refuse the rest fast)
    admitted: HdrHistogram = field(default_factory=_histogram)
    refused: HdrHistogram = field(default_factory=_histogram)
    ok: int = 0
    fallbacks: int = 0  # Decide answered with the catalog's fallback (shard too slow)
    errors: Counter = field(default_factory=Counter)  # gRPC status code name -> count
    window: Window = field(default_factory=Window)  # its recorder's
    in_window: int = 0  # answers that came inside the window (the warm-up's too)
    served_in_window: int = 0  # of those, answered without an error or a fallback

    def answered(self, send: Send, code: str | None = None, fallback: bool = False,
                 written: bool = True) -> None:
        """`written`: it left; one that never did (NOT_SENT) has no service time."""
        now = time.perf_counter()
        if now in self.window:
            self.in_window += 1
            self.served_in_window += code is None and not fallback
        if not send.measured:
            return
        _record(self.latency, now - send.intended)
        if written:
            _record(self.service, now - send.sent)
        _record(self.refused if code is not None or fallback else self.admitted,
                now - send.intended)
        if code is not None:
            self.errors[code] += 1
        else:
            self.ok += 1
            self.fallbacks += fallback

    def encode(self) -> dict[str, Any]:
        return {"latency": self.latency.encode(), "service": self.service.encode(),
                "admitted": self.admitted.encode(), "refused": self.refused.encode(),
                "ok": self.ok, "fallbacks": self.fallbacks, "errors": dict(self.errors),
                "in_window": self.in_window, "served_in_window": self.served_in_window}

    def add(self, encoded: dict[str, Any]) -> None:
        for name in ("latency", "service", "admitted", "refused"):
            getattr(self, name).add(HdrHistogram.decode(encoded[name]))
        self.ok += encoded["ok"]
        self.fallbacks += encoded["fallbacks"]
        self.errors.update(encoded["errors"])
        self.in_window += encoded["in_window"]
        self.served_in_window += encoded["served_in_window"]


@dataclass
class Recorder:
    """What one process saw in one step (or, in the parent, all processes merged)."""

    kinds: dict[str, KindStats] = field(default_factory=dict)
    lag: HdrHistogram = field(default_factory=_histogram)
    sent: int = 0
    late: int = 0
    seconds: float = 0.0  # the measured window (longest over processes)
    # continuous traffic: the longest a process's loop spent handing the step before back
    # (to the parent) while this one's requests were due, the harness's own pause
    handback: float | None = None
    streams_ended: int | None = None  # IngestStreams that ended before their schedule did
    window: Window = field(default_factory=Window)  # the server CPU's (not merged: the parent's)

    def kind(self, name: str) -> KindStats:
        stats = self.kinds.get(name)
        if stats is None:  # not setdefault: a KindStats builds four histograms
            stats = self.kinds[name] = KindStats(window=self.window)
        return stats

    def sending(self, intended: float, measured: bool) -> Send:
        now = time.perf_counter()
        if measured:
            self.sent += 1
            _record(self.lag, now - intended)
            self.late += (now - intended) * 1e3 > LATE_SEND_MS
        return Send(intended, now, measured)

    def encode(self) -> dict[str, Any]:
        return {"kinds": {k: s.encode() for k, s in self.kinds.items()},
                "lag": self.lag.encode(), "sent": self.sent, "late": self.late,
                "seconds": self.seconds, "handback": self.handback,
                "streams_ended": self.streams_ended}

    def add(self, encoded: dict[str, Any]) -> None:
        for name, stats in encoded["kinds"].items():
            self.kind(name).add(stats)
        self.lag.add(HdrHistogram.decode(encoded["lag"]))
        self.sent += encoded["sent"]
        self.late += encoded["late"]
        self.seconds = max(self.seconds, encoded["seconds"])
        if encoded["handback"] is not None:
            self.handback = max(self.handback or 0.0, encoded["handback"])
        if encoded["streams_ended"] is not None:
            self.streams_ended = (self.streams_ended or 0) + encoded["streams_ended"]

    def summary(self) -> dict[str, Any]:
        """Milliseconds and rates, per kind; the generator's own lateness."""
        seconds = max(self.seconds, 1e-9)
        kinds = {}
        for name, s in sorted(self.kinds.items()):
            answered = s.latency.get_total_count()
            # "rate": answered OK, fallbacks included; "served_rate": without them
            kinds[name] = {
                "count": answered, "ok": s.ok, "rate": round(s.ok / seconds, 1),
                "served_rate": round((s.ok - s.fallbacks) / seconds, 1),
                "in_window": s.in_window, "served_in_window": s.served_in_window,
                **{f"p{label}_ms": _ms(s.latency.get_value_at_percentile(p))
                   for label, p in PERCENTILES},
                "max_ms": _ms(s.latency.get_max_value()),
                **{f"service_p{label}_ms": _ms(s.service.get_value_at_percentile(p))
                   for label, p in PERCENTILES},
                "admitted_p99_ms": _ms(s.admitted.get_value_at_percentile(99)),
                "refused_p99_ms": _ms(s.refused.get_value_at_percentile(99)),
                "refused_max_ms": _ms(s.refused.get_max_value()),
                "errors": dict(s.errors), "fallbacks": s.fallbacks}
        late_share = self.late / self.sent if self.sent else 0.0
        generator = {"lag_p50_ms": _ms(self.lag.get_value_at_percentile(50)),
                     "lag_p99_ms": _ms(self.lag.get_value_at_percentile(99)),
                     "lag_max_ms": _ms(self.lag.get_max_value()),
                     "late_share": round(late_share, 4), "behind": late_share > BEHIND_SHARE}
        if self.handback is not None:  # apart from `behind`, which counts every late send
            generator["handback_ms"] = round(self.handback * 1e3, 3)
        streams = {} if self.streams_ended is None else {"streams_ended": self.streams_ended}
        return {"sent": self.sent, "offered_rate": round(self.sent / seconds, 1), "kinds": kinds,
                **streams, "generator": generator}


def _ms(us: int) -> float:
    return round(us / 1000.0, 3)


# -- the parent's side ---------------------------------------------------------------------------


class GeneratorPool:
    """Generator processes (spawned: no inherited Ray or gRPC state), reused across steps."""

    def __init__(self, processes: int):
        self.processes = processes
        context = multiprocessing.get_context("spawn")
        # continuous traffic's steps come back on this queue as the processes hand them back,
        # and the processes read the index of its last step here
        self._handed = context.Queue()
        self._last_step = context.RawValue("q", 0)
        # a step's start: [its tag, the processes that built their requests, its start time
        # (epoch seconds; 0 until every process has built)]
        self._start = context.Array("d", 3)
        self._steps = 0
        self._pool = concurrent.futures.ProcessPoolExecutor(
            processes, mp_context=context, initializer=_init,
            initargs=(os.getpid(), self._handed, self._last_step, self._start))
        # spawn and import in every process now, not inside the first step
        for future in [self._pool.submit(_ready) for _ in range(processes)]:
            future.result()

    def run(self, step: Step) -> dict:
        """Let the system settle, have every process build its share of a step's requests,
        and run the step START_DELAY_S after the last has; the merged summary, with the CPU
        the system under test and the generators spent in the measured window, and when its
        schedule started and ended (epoch seconds). Continuous traffic, whose load must not
        pause between steps, is `traffic`'s."""
        settled_s = settle(step.target)
        self._steps += 1
        with self._start.get_lock():
            self._start[:] = [self._steps, 0, 0]
        futures = [self._pool.submit(_run_step, step, i, self.processes, self._steps)
                   for i in range(self.processes)]
        try:
            self._built(futures)
        except BaseException:
            self._start[0] = 0  # the processes waiting for this step's start give it up
            raise
        start_at = time.time() + START_DELAY_S
        generators = self.pids()
        server = server_cpu(generators, start_at + step.warmup_s, step.measure_s)
        own = generator_cpu(generators, start_at + step.warmup_s, step.measure_s)
        self._start[2] = start_at
        merged = Recorder()
        for future in futures:
            merged.add(future.result())
        return _result(step, self.processes, merged, server.window(), own.window(),
                       settled_s=settled_s, chained=False, started_at=start_at,
                       ended_at=start_at + step.warmup_s + step.measure_s)

    def _built(self, futures: list[concurrent.futures.Future]) -> None:
        """Wait until every process has built its share of the step's requests (one that
        failed raises its error)."""
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while self._start[1] < self.processes:
            for future in futures:
                if future.done():
                    future.result()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the step's requests not built in {BUILD_TIMEOUT_S:g} s")
            time.sleep(START_POLL_S)

    def traffic(self, step: Step, steps: int | None = None) -> Traffic:
        """Continuous traffic of `step` in `steps` steps of step.measure_s (None: until its
        `stop()`); see Traffic."""
        return Traffic(self, step, steps)

    def idle(self, target: str, seconds: float, quiet_s: float) -> dict[str, float]:
        """The system's CPU with no load, ms per second by process name, once it has settled
        and then had no request for quiet_s: what it spends whatever the rate (Ray's daemons,
        timers, metrics), which a step's CPU per request carries spread over its requests.
        The wait leaves out what the settle probes set going: the gateway's shedder updating
        fast for about a second, a model-sync wake, and a shard's listing of its store at the
        next check of the store count (`KAIROS_STORE_COUNT_S` later at most)."""
        settle(target)
        server = server_cpu(self.pids(), time.time() + max(quiet_s, START_DELAY_S), seconds)
        return server.window().by_process(1, 1e3 / seconds)

    def pids(self) -> set[int]:
        """The generator processes (and whatever they started)."""
        found = set()
        for pid in self._pool._processes:  # the executor's own record of its workers
            with contextlib.suppress(psutil.Error):
                found |= {pid} | {c.pid for c in psutil.Process(pid).children(recursive=True)}
        return found

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class Traffic:
    """Continuous traffic (bench.drain, bench.soak): one open-loop schedule on every generator
    process, cut into steps of step.measure_s, the first after step.warmup_s. A request
    belongs to the step its intended send time falls in; a process hands a step back once its
    schedule has passed the step's end and its last answers are in (or their deadline has
    passed) while it goes on sending the next step's, so the load never pauses between
    steps however slow the system gets, and a step's latency, lag and CPU are its own. The
    system settles once, before the first step. Unary operations only (decide, ingest,
    journey); each request is built as it leaves. A context manager: leaving it stops the
    traffic."""

    def __init__(self, pool: GeneratorPool, step: Step, steps: int | None):
        if step.op not in UNARY_OPS:
            raise ValueError(f"continuous traffic sends unary calls only, not {step.op!r}")
        self.step, self._pool = step, pool
        self._settled_s = settle(step.target)
        self.started_at = time.time() + START_DELAY_S
        self.measured_at = self.started_at + step.warmup_s
        self._last = None if steps is None else steps - 1
        pool._last_step.value = OPEN_ENDED if steps is None else steps - 1
        generators = pool.pids()
        with contextlib.ExitStack() as samplers:  # no traffic: they would sample on for good
            self._server = server_cpu(generators, self.measured_at, step.measure_s, steps)
            samplers.callback(self._server.stop)
            self._own = generator_cpu(generators, self.measured_at, step.measure_s, steps)
            samplers.callback(self._own.stop)
            self._futures = [pool._pool.submit(_run_traffic, step, i, pool.processes,
                                               self.started_at) for i in range(pool.processes)]
            samplers.pop_all()
        self._results: list[dict] | None = None

    def __enter__(self) -> Traffic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[dict]:
        """End the traffic with the step under way STOP_NOTICE_S from now (every process
        learns of it before that step's end); every step's result, the last once its
        answers are in."""
        if self._last is None:
            under_way = (time.time() + STOP_NOTICE_S - self.measured_at) // self.step.measure_s
            self._last = max(int(under_way), 0)
            self._pool._last_step.value = self._last
            self._server.last(self._last)
            self._own.last(self._last)
        return self.results()

    def results(self) -> list[dict]:
        """Every step's result, once the last step's answers are in."""
        if self._last is None:
            raise RuntimeError("open-ended traffic ends with stop()")
        if self._results is None:
            self._results = self._collect()
        return self._results

    def _collect(self) -> list[dict]:
        merged = [Recorder() for _ in range(self._last + 1)]
        expected = len(merged) * self._pool.processes
        while expected:
            try:
                tag, k, encoded = self._pool._handed.get(timeout=1.0)
            except queue.Empty:  # a process that failed hands nothing back: its error
                for future in self._futures:
                    if future.done() and future.exception() is not None:
                        raise future.exception()
                continue
            if tag == self.started_at:  # not what an earlier traffic left, had it failed
                merged[k].add(encoded)
                expected -= 1
        for future in self._futures:
            future.result()
        return [self._step(k, recorder) for k, recorder in enumerate(merged)]

    def _step(self, k: int, merged: Recorder) -> dict:
        started_at = self.measured_at + k * self.step.measure_s
        return _result(self.step, self._pool.processes, merged, self._server.window(k),
                       self._own.window(k), settled_s=self._settled_s if k == 0 else None,
                       chained=k > 0, started_at=self.started_at if k == 0 else started_at,
                       ended_at=started_at + self.step.measure_s)


def _result(step: Step, processes: int, merged: Recorder, server: CpuWindow, own: CpuWindow,
            **when: Any) -> dict:
    """A step's result: the merged summary and the CPU the system under test and the
    generators spent in its measured window, per request answered in that window."""
    summary = merged.summary()
    answered = sum(stats["in_window"] for kind, stats in summary["kinds"].items()
                   if kind != PUSH)
    server_s, server_us = server.per_request(answered)
    own_s, own_us = own.per_request(answered)
    return {"op": step.op, "rate_target": step.rate_per_s, "processes": processes, **when,
            **summary, "server_cpu_s": server_s, "cpu_us_per_request": server_us,
            "cpu_us_per_request_by_process": server.by_process(answered),
            "server_cpu_lower_bound": server.partial, "generator_cpu_s": own_s,
            "generator_cpu_us_per_request": own_us}


def settle(target: str) -> float | None:
    """Wait until the system answers Decide fast again (and, once it refused one, has refused
    none for SETTLE_QUIET_S); the seconds it took, or None if it did not within
    SETTLE_TIMEOUT_S (the step then runs anyway, and its report says so)."""
    started = time.perf_counter()
    probe = pb.DecideRequest(customer_id=customer_id(0), channel=PROBE_CHANNEL)
    with grpc.insecure_channel(target) as channel:
        decide = decision_pb2_grpc.DecisionServiceStub(channel).Decide
        fast = 0  # fast answers in a row
        # a slow answer (a GC pause, a housekeeping tick) restarts the run of fast ones, not
        # the quiet time: a steady system pauses more often than once a second
        refused_at = -math.inf
        while fast < SETTLE_PROBES or time.perf_counter() - refused_at < SETTLE_QUIET_S:
            if time.perf_counter() - started > SETTLE_TIMEOUT_S:
                return None
            sent = time.perf_counter()
            try:
                decide(probe, timeout=CONNECT_TIMEOUT_S)
            except grpc.RpcError:  # busy, or still starting: probe again shortly
                fast, refused_at = 0, time.perf_counter()
                time.sleep(0.1)
                continue
            fast = fast + 1 if (time.perf_counter() - sent) * 1e3 <= SETTLE_MS else 0
    return round(time.perf_counter() - started, 2)


# -- the generator process's side ----------------------------------------------------------------

_CATALOG: Catalog | None = None
_HANDED: Any = None  # the pool's queue of continuous traffic's steps
_LAST_STEP: Any = None  # the index of continuous traffic's last step (shared memory)
_START: Any = None  # a step's start (GeneratorPool._start, shared memory)


def _init(parent_pid: int, handed: Any, last_step: Any, start: Any) -> None:
    global _CATALOG, _HANDED, _LAST_STEP, _START
    exit_with_parent(parent_pid)
    _CATALOG = load_default_catalog()
    _HANDED, _LAST_STEP, _START = handed, last_step, start


def _ready() -> bool:
    return True


@contextlib.asynccontextmanager
async def _connected(step: Step) -> AsyncIterator[tuple[_Calls, Callable[[str], _Calls]]]:
    """Channels to the step's target and routes, ready: the target's calls, and which calls
    a customer's unary requests go to."""
    if step.routes and step.op not in UNARY_OPS:
        raise ValueError(f"a routed step sends unary calls only, not {step.op!r}")
    channels = {target: grpc.aio.insecure_channel(
        target, options=[("grpc.use_local_subchannel_pool", 1)])
        for target in {step.target, *step.routes}}
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels.values())),
                               CONNECT_TIMEOUT_S)
        calls = _Calls(channels[step.target])
        routed = {target: _Calls(channel) for target, channel in channels.items()}
        owners = [routed[target] for target in step.routes]

        def route(customer: str) -> _Calls:
            return owners[partition_of(customer, len(owners))] if owners else calls
        yield calls, route
    finally:
        await asyncio.gather(*(c.close() for c in channels.values()))


def _run_step(step: Step, index: int, processes: int, tag: int) -> dict:
    return asyncio.run(_step(step, index, processes, tag))


async def _step(step: Step, index: int, processes: int, tag: int) -> dict:
    async with _connected(step) as (calls, route):
        recorder = Recorder(seconds=step.measure_s)
        seed = step.seed * 1_000 + index
        # this process's share of the step's arrivals, split over its lanes
        lanes = STREAMS_PER_PROCESS if step.op == "stream" else 1
        schedules = [_Schedule(step.rate_per_s / processes / lanes, step.warmup_s,
                               step.measure_s, random.Random(seed * 100 + lane), recorder)
                     for lane in range(lanes)]
        start = _Start(lambda: _started(tag), schedules)
        if step.op == "push":
            await _push(calls, schedules[0], seed, recorder, start)
        elif step.op == "stream":
            await asyncio.gather(*(
                _stream(calls, schedule, Journeys(_CATALOG, step.customers, seed * 100 + k),
                        recorder, start)
                for k, schedule in enumerate(schedules)))
        elif step.op == "batch":
            await _batches(calls, schedules[0], Journeys(_CATALOG, step.customers, seed),
                           recorder, start)
        else:
            await _unary(route, schedules[0], Journeys(_CATALOG, step.customers, seed),
                         OPS[step.op], recorder, start)
        return recorder.encode()


async def _started(tag: int) -> float:
    """Report this process's requests for step `tag` built; the step's start (epoch seconds)
    once the parent has set it, after every process has built its own."""
    with _START.get_lock():
        if _START[0] == tag:
            _START[1] += 1
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    while True:
        with _START.get_lock():
            if _START[0] != tag:
                raise RuntimeError("the step was given up before it started")
            if _START[2]:
                return _START[2]
        if time.monotonic() > deadline:
            raise TimeoutError(f"the step did not start in {BUILD_TIMEOUT_S:g} s")
        await asyncio.sleep(START_POLL_S)


def _run_traffic(step: Step, index: int, processes: int, start_at: float) -> None:
    asyncio.run(_traffic(step, index, processes, start_at))


async def _traffic(step: Step, index: int, processes: int, start_at: float) -> None:
    """This process's share of continuous traffic: Poisson arrivals from start_at until the
    schedule passes the last step's end, each request built as it leaves; the steps are
    handed back as they complete."""
    async with _connected(step) as (_, route):
        seed = step.seed * 1_000 + index
        rng, kinds = random.Random(seed * 100), OPS[step.op]
        journeys = Journeys(_CATALOG, step.customers, seed)
        t = time.perf_counter() + (start_at - time.time())  # this process's clock
        steps = _Steps(start_at, t + step.warmup_s, step.measure_s)
        while True:
            t += rng.expovariate(step.rate_per_s / processes)
            await asyncio.sleep(max(t - time.perf_counter(), 0.0))
            k = steps.index(t)
            if k > _LAST_STEP.value:
                break
            recorder = steps.reach(k)
            request = journeys.next(kinds)
            send = recorder.sending(t, t >= steps.measured_at)
            steps.start(k, _call(route(request.customer_id), request.kind, _serialised(request),
                                 send, recorder,
                                 _showing(journeys, request) if RESPOND in kinds else None))
        await steps.finish(_LAST_STEP.value)


class _Steps:
    """One process's continuous traffic, by step: each step's recorder and its calls not
    answered yet. A step is handed back to the parent (tagged with the traffic's start)
    once the schedule has passed its end and its last answers are in, or the deadline and
    ANSWER_GRACE_S of its last call actually sent have passed (a generator behind schedule
    sends past the step's end, and an answer written after the hand-back would be lost);
    the steps before it first."""

    def __init__(self, tag: float, measured_at: float, step_s: float):
        self.tag, self.measured_at, self.step_s = tag, measured_at, step_s
        self.recorders: list[Recorder] = []
        self._unanswered: list[int] = []
        self._last_sent: list[float] = []  # when each step's latest call was actually sent
        self._tasks: set[asyncio.Task] = set()
        self._handed = 0  # steps handed back

    def index(self, t: float) -> int:
        """The step whose part of the schedule `t` falls in (the warm-up is the first's)."""
        return max(int((t - self.measured_at) // self.step_s), 0)

    def reach(self, k: int) -> Recorder:
        """Step k's recorder: the schedule has reached it, so every step before it is closed,
        and handed back if it is done."""
        self._open(k)
        self._hand_back(k)
        return self.recorders[k]

    def _open(self, k: int) -> None:
        while len(self.recorders) <= k:
            # a step's window counts the answers to its own requests alone: its predecessor's
            # late answers, whose CPU it holds, count in neither (a figure over, never under)
            start = self.measured_at + len(self.recorders) * self.step_s
            self.recorders.append(Recorder(seconds=self.step_s,
                                           window=Window(start, start + self.step_s)))
            self._unanswered.append(0)
            self._last_sent.append(-math.inf)

    def start(self, k: int, call: Awaitable[None]) -> None:
        self._unanswered[k] += 1
        task = asyncio.ensure_future(self._sent(k, call))
        self._tasks.add(task)
        task.add_done_callback(lambda _: self._answered(k, task))

    async def _sent(self, k: int, call: Awaitable[None]) -> None:
        # the call's deadline runs from here, where it leaves, not from when it was started
        self._last_sent[k] = time.perf_counter()
        await call

    def _answered(self, k: int, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._unanswered[k] -= 1
        self._hand_back(len(self.recorders) - 1)

    def _hand_back(self, closed: int, overdue: bool = False) -> None:
        """Hand back the done steps among the first `closed` (all of them if `overdue`)."""
        while self._handed < closed:
            k = self._handed
            due = max(self.measured_at + (k + 1) * self.step_s, self._last_sent[k]) \
                + DEADLINE_S + ANSWER_GRACE_S
            if self._unanswered[k] and not overdue and time.perf_counter() < due:
                return
            started = time.perf_counter()
            _HANDED.put((self.tag, k, self.recorders[k].encode()))
            if not overdue:  # a pause while the newest step's sends are due
                newest = self.recorders[-1]
                newest.handback = max(newest.handback or 0.0, time.perf_counter() - started)
            self._handed += 1

    async def finish(self, last: int) -> None:
        """Wait for the last answers, then hand back every step up to `last`."""
        self._open(last)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=DEADLINE_S + ANSWER_GRACE_S)
        self._hand_back(last + 1, overdue=True)


class _Calls:
    """DecisionService's methods taking and returning bytes: a step's requests are serialised
    before it starts wherever nothing in them depends on an answer, and replies are parsed
    only where something is read from them, so the generators spend their CPU on calls."""

    def __init__(self, channel: grpc.aio.Channel):
        method = "/kairos.v1.DecisionService/"
        self.unary = {kind: channel.unary_unary(method + name) for kind, name in
                      ((DECIDE, "Decide"), (EVENT, "Ingest"), (RESPOND, "Respond"))}
        self.batch = channel.unary_unary(method + "IngestBatch")
        self.stream = channel.stream_stream(method + "IngestStream")
        self.watch = decision_pb2_grpc.DecisionServiceStub(channel).WatchDecisions


class _Schedule:
    """Intended send times: Poisson arrivals over warmup_s + measure_s, drawn up front (a
    step's requests are built for them before it starts), from the t0 that `start` gives; the
    first `warmup_s` are not measured. Iterating sleeps until each time comes (never waiting
    for answers) and yields a Send."""

    def __init__(self, rate_per_s: float, warmup_s: float, measure_s: float,
                 rng: random.Random, recorder: Recorder):
        self.warmup_s, self.span = warmup_s, warmup_s + measure_s
        self.recorder = recorder
        self._offsets: list[float] = []  # from t0
        t = rng.expovariate(rate_per_s)
        while t < self.span:
            self._offsets.append(t)
            t += rng.expovariate(rate_per_s)
        self.times: list[float] = []
        self.warm_end = self.end = math.inf

    def __len__(self) -> int:
        return len(self._offsets)

    def start(self, t0: float) -> None:
        """Send from t0 (perf_counter time) on."""
        self.times = [t0 + offset for offset in self._offsets]
        self.warm_end, self.end = t0 + self.warmup_s, t0 + self.span
        # the server CPU's window (GeneratorPool.run's), which the lanes of a process share
        self.recorder.window.start, self.recorder.window.end = self.warm_end, self.end

    async def __aiter__(self) -> AsyncIterator[Send]:
        for t in self.times:
            # behind schedule, still yield to the loop, or answers are never read
            await asyncio.sleep(max(t - time.perf_counter(), 0.0))
            yield self.recorder.sending(t, t >= self.warm_end)


class _Start:
    """A step's start in one process: its lanes build their requests, then wait here; once
    the last has, `ready` reports them built and answers the step's start (epoch seconds),
    which starts every lane's schedule."""

    def __init__(self, ready: Callable[[], Awaitable[float]], schedules: list[_Schedule]):
        self._ready, self._schedules = ready, schedules
        self._waiting = len(schedules)
        self._started = asyncio.Event()

    async def __call__(self) -> None:
        self._waiting -= 1
        if self._waiting:
            await self._started.wait()
            return
        start_at = await self._ready()
        t0 = time.perf_counter() + (start_at - time.time())  # this process's clock
        for schedule in self._schedules:
            schedule.start(t0)
        self._started.set()


class _Inflight:
    """Calls sent and not answered yet: the open loop never waits for them to send more."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def start(self, call) -> None:
        task = asyncio.ensure_future(call)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the answers still due (past their deadline they are errors anyway)."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=DEADLINE_S + ANSWER_GRACE_S)


async def _call(calls: _Calls, kind: str, payload: bytes, send: Send, recorder: Recorder,
                decided: Callable[[pb.Decision], None] | None = None) -> None:
    """Send one serialised unary request and record its answer; a Decide's reply is parsed
    (is it a fallback?) and handed to `decided`."""
    try:
        reply = await calls.unary[kind](payload, timeout=DEADLINE_S)
    except grpc.aio.AioRpcError as exc:
        recorder.kind(kind).answered(send, _error_label(kind, exc))
        return
    fallback = False
    if kind == DECIDE:
        decision = pb.Decision.FromString(reply)
        fallback = decision.fallback
        if decided is not None:
            decided(decision)
    recorder.kind(kind).answered(send, fallback=fallback)


def _error_label(kind: str, exc: grpc.aio.AioRpcError) -> str:
    """The status code's name; an outcome refused by its customer's outcome rate (the Zipf
    head reports outcomes faster than OUTCOMES_PER_CUSTOMER allows) is told from a shed."""
    code = exc.code().name
    if kind == RESPOND and code == "RESOURCE_EXHAUSTED" and \
            RATE_REFUSAL in (exc.details() or ""):
        return CUSTOMER_RATE
    return code


def _serialised(request: Request) -> bytes:
    if request.kind == DECIDE:
        message = pb.DecideRequest(customer_id=request.customer_id, channel=request.channel,
                                   placement=request.placement)
        for name, value in request.context.items():
            message.context[name].CopyFrom(wire.value_out(value))
    elif request.kind == EVENT:
        message = _event(request)
    else:
        message = pb.Outcome(decision_id=request.decision_id, customer_id=request.customer_id,
                             action_id=request.action_id, channel=request.channel,
                             outcome=pb.ACCEPT if request.accept else pb.IMPRESSION)
    return message.SerializeToString()


def _event(request: Request) -> pb.Event:
    """The event, asking for the re-evaluated decision of its channel: every event gets a
    full re-evaluation, as a channel that reacts to what the customer just did needs."""
    message = pb.Event(customer_id=request.customer_id, type=request.event_type,
                       channel=request.channel, decide_placement=request.placement)
    for name, value in request.attributes.items():
        message.attributes[name].CopyFrom(wire.value_out(value))
    return message


async def _unary(route: Callable[[str], _Calls], schedule: _Schedule, journeys: Journeys,
                 kinds: frozenset[str], recorder: Recorder, start: _Start) -> None:
    inflight = _Inflight()
    if RESPOND in kinds:  # an outcome names a decision still to come: built as it leaves
        await start()
        async for send in schedule:
            request = journeys.next(kinds)
            inflight.start(_call(route(request.customer_id), request.kind,
                                 _serialised(request), send, recorder,
                                 _showing(journeys, request)))
    else:
        def build() -> tuple[_Calls, str, bytes]:
            request = journeys.next(kinds)
            return route(request.customer_id), request.kind, _serialised(request)

        prepared = _built(build, len(schedule))
        await start()
        async for send in schedule:
            calls, kind, payload = next(prepared)
            inflight.start(_call(calls, kind, payload, send, recorder))
    await inflight.drain()


def _built(build: Callable[[], T], count: int) -> Iterator[T]:
    """`count` requests, built now, in order."""
    return iter([build() for _ in range(count)])


def _showing(journeys: Journeys, request: Request) -> Callable[[pb.Decision], None] | None:
    """What the session learns from its decision's answer: what it showed."""
    if request.kind != DECIDE:
        return None
    return lambda d: journeys.decided(request, d.decision_id,
                                      d.actions[0].action_id if d.actions else None)


async def _stream(calls: _Calls, schedule: _Schedule, journeys: Journeys,
                  recorder: Recorder, start: _Start) -> None:
    """One lane of IngestStreams: events leave on schedule; acks come back in order. A stream
    that ends before the schedule does fails the events it did not ack with its end's code
    (`_acked`), and the lane opens another, as a client would (`_StreamLane`): a refusal
    costs what was in flight, not the rest of the step; how many ended is counted."""
    prepared = _built(lambda: _event(journeys.next(OPS["stream"])).SerializeToString(),
                      len(schedule))
    await start()
    lane = _StreamLane(calls, schedule.end, recorder.kind(EVENT))
    async for send in schedule:
        await lane.send(send, next(prepared))
    ended = await lane.close()  # before the sum: the process's lanes end concurrently
    recorder.streams_ended = (recorder.streams_ended or 0) + ended


class _StreamLane:
    """A lane's stream, one open at a time. Sends are written in schedule order, and the
    schedule waits on every write, whether or not a stream ended before: a write blocked by
    flow control holds it back, which its lag shows. Once a stream has ended (its call done,
    or its acks), sends are held, the schedule not waiting, for REOPEN_BACKOFF_S; then
    another stream opens and the held sends are written to it first, the schedule's next
    sends waiting behind them (`_writing`). Their latency runs from their intended time.
    Sends still held when the window ends fail then (NOT_SENT), never written after it."""

    def __init__(self, calls: _Calls, end: float, stats: KindStats):
        self._calls, self._end, self._stats = calls, end, stats
        self._held: deque[tuple[Send, bytes]] = deque()
        self._writing = asyncio.Lock()  # one writer: a send, or the held sends after a reopen
        self._reopened: asyncio.Task | None = None  # the latest back-off and reopen (`_reopen`)
        self.ended = 0  # streams that ended other than by `close`
        self._open()

    def _open(self) -> None:
        # a generator behind its schedule sends past the window's end: 5 s for that, past the
        # last acks' deadline, so that the stream's own deadline is not what ends it
        self._call = self._calls.stream(
            timeout=self._end - time.perf_counter() + DEADLINE_S + 5.0)
        self._up = True
        self._inflight: deque[Send] = deque()
        self._acks = asyncio.ensure_future(_acked(self._call, self._inflight, self._stats))

    async def send(self, send: Send, payload: bytes) -> None:
        self._held.append((send, payload))
        if self._up:
            async with self._writing:
                await self._write_held()
        elif self._reopened.done():  # the window ended with no stream open
            self._fail_held()

    async def _write_held(self, until: float = math.inf) -> None:
        while self._held and self._up and time.perf_counter() < until:
            # ended once either shows it: `_acks` lags the call, and a write to a done call
            # raises at once, never sent. An event goes in flight only while `_acked` still
            # runs to answer it: nothing awaited between the check and the append
            if self._call.done() or self._acks.done():
                self._up = False
                self.ended += 1
                self._reopened = asyncio.ensure_future(self._reopen())
                return
            send, payload = self._held.popleft()
            self._inflight.append(send._replace(sent=time.perf_counter()))
            # a write fails once the call has ended, which `_acked` records
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._call.write(payload)

    async def _reopen(self) -> None:
        """After the back-off, another stream, and the held sends written to it until the window
        ends; those still held then fail (all of them if it ends within the back-off)."""
        backoff = min(REOPEN_BACKOFF_S, self._end - time.perf_counter())
        await asyncio.sleep(backoff)
        await asyncio.wait([self._acks])  # the ended stream's events answered before the next's
        if backoff < REOPEN_BACKOFF_S or time.perf_counter() >= self._end:
            self._fail_held()
            return
        self._open()
        async with self._writing:
            await self._write_held(until=self._end)
            if self._up:  # what the window's end left held, not written after it
                self._fail_held()

    def _fail_held(self) -> None:
        while self._held:
            self._stats.answered(self._held.popleft()[0], NOT_SENT, written=False)

    async def close(self) -> int:
        """The held sends written (or failed at the window's end); then the last stream
        half-closed, and its acks awaited. The streams that ended other than by this close:
        before it, or after it with an error or events unacked."""
        while self._reopened is not None and not self._reopened.done():
            await self._reopened  # which may have ended its stream too, and begun another
        if not self._up:  # the window ended in a back-off: that stream's end is counted
            await self._acks
            return self.ended
        early = self._call.done() or self._acks.done()
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._call.done_writing()
        clean = await self._acks
        self.ended += early or not clean
        return self.ended


async def _acked(call: grpc.aio.StreamStreamCall, inflight: deque[Send],
                 stats: KindStats) -> bool:
    """Record a stream's acks, each its oldest unacked event's, until the stream ends; then
    fail the events still unacked, with its status code's name (STATUS_LOST where a write
    raced it away), or STREAM_ENDED where it ended OK. Whether it ended clean: OK, with every
    event acked."""
    code = STREAM_ENDED
    try:
        async for _ in call:
            stats.answered(inflight.popleft())
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
        if exc.code() == grpc.StatusCode.INTERNAL and exc.details() == _RACED_DETAILS:
            code = STATUS_LOST
    clean = code == STREAM_ENDED and not inflight
    while inflight:
        stats.answered(inflight.popleft(), code)
    return clean


async def _batches(calls: _Calls, schedule: _Schedule, journeys: Journeys,
                   recorder: Recorder, start: _Start) -> None:
    """A relay: holds the events that arrive and sends them as one IngestBatch once the
    oldest has waited BATCH_WINDOW_S (checked as events arrive) or BATCH_EVENTS are held.
    Each event is serialised ahead as a batch of one: serialised messages concatenated
    are one message with their repeated fields joined (protobuf's merge), so a batch is the
    bytes of its events side by side."""
    stats = recorder.kind(EVENT)
    inflight = _Inflight()

    async def send(batch: list[Send], payload: bytes) -> None:
        try:
            await calls.batch(payload, timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            for arrival in batch:
                stats.answered(arrival, exc.code().name)
            return
        for arrival in batch:
            stats.answered(arrival)

    held: list[Send] = []
    prepared = _built(lambda: pb.EventBatch(events=[_event(journeys.next(OPS["batch"]))])
                      .SerializeToString(), len(schedule))
    await start()
    async for arrival in schedule:
        held.append(arrival)
        if len(held) >= BATCH_EVENTS or arrival.intended - held[0].intended >= BATCH_WINDOW_S:
            inflight.start(send(held, b"".join(itertools.islice(prepared, len(held)))))
            held = []
    if held:
        inflight.start(send(held, b"".join(itertools.islice(prepared, len(held)))))
    await inflight.drain()


async def _push(calls: _Calls, schedule: _Schedule, seed: int, recorder: Recorder,
                start: _Start) -> None:
    """Watch the call center's decisions for every customer; each probe is an event on the
    web for a customer never seen before, whose first decision is a change, so each probe
    causes exactly one push. The warm-up must cover the watch's registration (a second)."""
    watch = calls.watch(pb.WatchRequest(channel=PUSH_CHANNEL, placement=PUSH_PLACEMENT))
    waiting: dict[str, Send] = {}
    stats = recorder.kind(PUSH)

    async def follow() -> None:
        async for decision in watch:
            probe = waiting.pop(decision.customer_id, None)
            if probe is not None:
                stats.answered(probe)

    reader = asyncio.ensure_future(follow())
    journeys = Journeys(_CATALOG, 1, seed)
    probes = [f"probe-{seed}-{n}" for n in range(len(schedule))]
    prepared = iter([(probe, _serialised(journeys.event(probe, PROBE_CHANNEL, PROBE_PLACEMENT)))
                     for probe in probes])
    inflight = _Inflight()
    await start()
    async for send in schedule:
        probe, payload = next(prepared)
        waiting[probe] = send
        inflight.start(_call(calls, EVENT, payload, send, recorder))
    await inflight.drain()
    await asyncio.sleep(DEADLINE_S)  # pushes still on their way; later ones count as missing
    watch.cancel()
    reader.cancel()
