"""Open-loop load generator processes speaking kairos.v1 over gRPC (grpc.aio).

Each process follows its own schedule of intended send times (Poisson arrivals at
rate / processes, seeded) and never waits for an answer before the next send, so a slow
server cannot slow the load down. Latency is measured from the *intended* send time, so the
queueing a stalled server causes is counted (no coordinated omission); the time from the
actual send ("service") and how late each send left ("lag") are recorded too, so a generator
that fell behind its schedule shows as such instead of passing for server latency. Everything
goes into HdrHistograms, which the parent merges across processes (encode/decode).

Operations (`Step.op`):
  decide, ingest, journey  unary calls: decisions, events (each asking for the re-evaluated
                           decision), or whole sessions (events, decisions and outcomes)
  stream                   events on STREAMS_PER_PROCESS IngestStreams per process; an ack's
                           latency is taken from its event's intended send time
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
import multiprocessing
import os
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, NamedTuple

import grpc
import psutil
from hdrh.histogram import HdrHistogram

from kairos.cluster.gateway import wire
from kairos.cluster.shard.outcomes import RATE_REFUSAL
from kairos.core.catalog import Catalog, load_default_catalog
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from .journeys import DECIDE, EVENT, RESPOND, Journeys, Request, customer_id
from .lifetime import exit_with_parent

DEADLINE_S = 1.0  # every call's deadline; Kairos answers a late Decide with its fallback
LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS = 1, 60_000_000, 3  # histogram range and precision
# A send leaving this much after its intended time: the generator is behind (asyncio's timers
# alone make sends up to ~1-2 ms late; half the p99 target is where it would distort results).
LATE_SEND_MS = 5.0
CUSTOMER_RATE = "RESOURCE_EXHAUSTED (customer's outcome rate)"  # an error label of its own
BEHIND_SHARE = 0.01  # above this share of late sends a step is flagged "generator behind"
START_DELAY_S = 0.5  # between submitting a step and its first intended send
CONNECT_TIMEOUT_S = 10.0
# IngestStreams each process keeps open: a high-volume channel spreads its events over a few
# streams, and one stream's acks are written one after another.
STREAMS_PER_PROCESS = 4
# A relay's batches (op "batch"): sent every BATCH_WINDOW_S of arrivals, or at BATCH_EVENTS.
BATCH_WINDOW_S, BATCH_EVENTS = 0.005, 1000
PUSH_CHANNEL, PUSH_PLACEMENT = "call_center", "agent_screen"  # where pushes are watched
PROBE_CHANNEL, PROBE_PLACEMENT = "web", "hero"  # where push probes' events come from
# Before each step: sequential Decide probes until SETTLE_PROBES in a row answer within
# SETTLE_MS, so queues an overloaded step left behind do not count against the next one.
SETTLE_MS, SETTLE_PROBES, SETTLE_TIMEOUT_S = 20.0, 3, 120.0

PERCENTILES = (("50", 50.0), ("90", 90.0), ("99", 99.0), ("99_9", 99.9))  # (key, percent)
OPS = {"decide": frozenset({DECIDE}), "ingest": frozenset({EVENT}),
       "journey": frozenset({DECIDE, EVENT, RESPOND}), "stream": frozenset({EVENT}), "batch": frozenset({EVENT})}


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


class Send(NamedTuple):
    intended: float  # perf_counter time the schedule meant it to leave
    sent: float  # when it left
    measured: bool  # after the warm-up


def _histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def _record(histogram: HdrHistogram, seconds: float) -> None:
    histogram.record_value(min(max(int(seconds * 1e6), LOWEST_US), HIGHEST_US))


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

    def answered(self, send: Send, code: str | None = None, fallback: bool = False) -> None:
        if not send.measured:
            return
        now = time.perf_counter()
        _record(self.latency, now - send.intended)
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
                "ok": self.ok, "fallbacks": self.fallbacks, "errors": dict(self.errors)}

    def add(self, encoded: dict[str, Any]) -> None:
        for name in ("latency", "service", "admitted", "refused"):
            getattr(self, name).add(HdrHistogram.decode(encoded[name]))
        self.ok += encoded["ok"]
        self.fallbacks += encoded["fallbacks"]
        self.errors.update(encoded["errors"])


@dataclass
class Recorder:
    """What one process saw in one step (or, in the parent, all processes merged)."""

    kinds: dict[str, KindStats] = field(default_factory=dict)
    lag: HdrHistogram = field(default_factory=_histogram)
    sent: int = 0
    late: int = 0
    seconds: float = 0.0  # the measured window (longest over processes)

    def kind(self, name: str) -> KindStats:
        return self.kinds.setdefault(name, KindStats())

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
                "seconds": self.seconds}

    def add(self, encoded: dict[str, Any]) -> None:
        for name, stats in encoded["kinds"].items():
            self.kind(name).add(stats)
        self.lag.add(HdrHistogram.decode(encoded["lag"]))
        self.sent += encoded["sent"]
        self.late += encoded["late"]
        self.seconds = max(self.seconds, encoded["seconds"])

    def summary(self) -> dict[str, Any]:
        """Milliseconds and rates, per kind; the generator's own lateness."""
        seconds = max(self.seconds, 1e-9)
        kinds = {}
        for name, s in sorted(self.kinds.items()):
            answered = s.latency.get_total_count()
            kinds[name] = {
                "count": answered, "ok": s.ok, "rate": round(s.ok / seconds, 1),
                **{f"p{label}_ms": _ms(s.latency.get_value_at_percentile(p))
                   for label, p in PERCENTILES},
                "max_ms": _ms(s.latency.get_max_value()),
                "service_p50_ms": _ms(s.service.get_value_at_percentile(50)),
                "service_p99_ms": _ms(s.service.get_value_at_percentile(99)),
                "admitted_p99_ms": _ms(s.admitted.get_value_at_percentile(99)),
                "refused_p99_ms": _ms(s.refused.get_value_at_percentile(99)),
                "refused_max_ms": _ms(s.refused.get_max_value()),
                "errors": dict(s.errors), "fallbacks": s.fallbacks}
        late_share = self.late / self.sent if self.sent else 0.0
        return {"sent": self.sent, "offered_rate": round(self.sent / seconds, 1), "kinds": kinds,
                "generator": {"lag_p50_ms": _ms(self.lag.get_value_at_percentile(50)),
                              "lag_p99_ms": _ms(self.lag.get_value_at_percentile(99)),
                              "lag_max_ms": _ms(self.lag.get_max_value()),
                              "late_share": round(late_share, 4),
                              "behind": late_share > BEHIND_SHARE}}


def _ms(us: int) -> float:
    return round(us / 1000.0, 3)


# -- the parent's side ---------------------------------------------------------------------------


class GeneratorPool:
    """Generator processes (spawned: no inherited Ray or gRPC state), reused across steps."""

    def __init__(self, processes: int):
        self.processes = processes
        self._pool = concurrent.futures.ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context("spawn"), initializer=_init,
            initargs=(os.getpid(),))
        # spawn and import in every process now, not inside the first step
        for future in [self._pool.submit(_ready) for _ in range(processes)]:
            future.result()

    def run(self, step: Step) -> dict:
        """Settle the system, run a step on every process; the merged summary, with the CPU
        the system under test spent in the measured window (ServerCpu)."""
        settled_s = settle(step.target)
        start_at = time.time() + START_DELAY_S
        cpu = ServerCpu(self.pids(), start_at + step.warmup_s,
                        start_at + step.warmup_s + step.measure_s)
        futures = [self._pool.submit(_run_step, step, i, self.processes, start_at)
                   for i in range(self.processes)]
        merged = Recorder()
        for future in futures:
            merged.add(future.result())
        summary = merged.summary()
        answered = sum(kind["count"] for kind in summary["kinds"].values())
        return {"op": step.op, "rate_target": step.rate_per_s, "processes": self.processes,
                "settled_s": settled_s, **summary, **cpu.result(answered)}

    def pids(self) -> set[int]:
        """The generator processes (and whatever they started)."""
        found = set()
        for pid in self._pool._processes:  # the executor's own record of its workers
            with contextlib.suppress(psutil.Error):
                found |= {pid} | {c.pid for c in psutil.Process(pid).children(recursive=True)}
        return found

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class ServerCpu:
    """CPU seconds (user + system) of the system under test over a step's measured window:
    every process this bench started, directly or not (servers, redis-server, Ray's daemons
    and actors), but the load generators. Only one system runs at a time, so that is the
    system's own processes, the server side only. Sampled by a thread at the window's start
    and end (wall-clock times); a process that ends inside the window loses its share."""

    def __init__(self, generators: set[int], start: float, end: float):
        self.generators = generators
        self.samples: list[float] = []
        self._thread = threading.Thread(target=self._sample, args=(start, end), daemon=True)
        self._thread.start()

    def _sample(self, start: float, end: float) -> None:
        for when in (start, end):
            time.sleep(max(0.0, when - time.time()))
            self.samples.append(self._cpu_s())

    def _cpu_s(self) -> float:
        total = 0.0
        for proc in psutil.Process().children(recursive=True):
            if proc.pid not in self.generators:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
        return total

    def result(self, answered: int) -> dict[str, Any]:
        """{server_cpu_s, cpu_us_per_request}: per request answered in the window."""
        self._thread.join()
        spent = max(self.samples[1] - self.samples[0], 0.0)
        return {"server_cpu_s": round(spent, 3),
                "cpu_us_per_request": round(spent / answered * 1e6, 1) if answered else None}


def settle(target: str) -> float | None:
    """Wait until the system answers Decide fast again; the seconds it took, or None if it
    did not within SETTLE_TIMEOUT_S (the step then runs anyway, and its report says so)."""
    started = time.perf_counter()
    probe = pb.DecideRequest(customer_id=customer_id(0), channel=PROBE_CHANNEL)
    with grpc.insecure_channel(target) as channel:
        decide = decision_pb2_grpc.DecisionServiceStub(channel).Decide
        fast = 0
        while fast < SETTLE_PROBES:
            if time.perf_counter() - started > SETTLE_TIMEOUT_S:
                return None
            sent = time.perf_counter()
            try:
                decide(probe, timeout=CONNECT_TIMEOUT_S)
            except grpc.RpcError:  # busy, or still starting: probe again shortly
                fast = 0
                time.sleep(0.1)
                continue
            fast = fast + 1 if (time.perf_counter() - sent) * 1e3 <= SETTLE_MS else 0
    return round(time.perf_counter() - started, 2)


# -- the generator process's side ----------------------------------------------------------------

_CATALOG: Catalog | None = None


def _init(parent_pid: int) -> None:
    global _CATALOG
    exit_with_parent(parent_pid)
    _CATALOG = load_default_catalog()


def _ready() -> bool:
    return True


def _run_step(step: Step, index: int, processes: int, start_at: float) -> dict:
    return asyncio.run(_step(step, index, processes, start_at))


async def _step(step: Step, index: int, processes: int, start_at: float) -> dict:
    channel = grpc.aio.insecure_channel(step.target,
                                        options=[("grpc.use_local_subchannel_pool", 1)])
    try:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_S)
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        recorder = Recorder(seconds=step.measure_s)
        seed = step.seed * 1_000 + index
        # the process's clock for the shared start time
        t0 = time.perf_counter() + (start_at - time.time())

        def schedule(lane: int = 0, lanes: int = 1) -> _Schedule:
            """This process's share of the step's arrivals, split over `lanes`."""
            return _Schedule(step.rate_per_s / processes / lanes, t0, step.warmup_s,
                             step.measure_s, random.Random(seed * 100 + lane), recorder)

        if step.op == "push":
            await _push(stub, schedule(), seed, recorder)
        elif step.op == "stream":
            await asyncio.gather(*(
                _stream(stub, schedule(k, STREAMS_PER_PROCESS),
                        Journeys(_CATALOG, step.customers, seed * 100 + k), recorder)
                for k in range(STREAMS_PER_PROCESS)))
        elif step.op == "batch":
            await _batches(stub, schedule(), Journeys(_CATALOG, step.customers, seed), recorder)
        else:
            await _unary(stub, schedule(), Journeys(_CATALOG, step.customers, seed),
                         OPS[step.op], recorder)
        return recorder.encode()
    finally:
        await channel.close()


class _Schedule:
    """Intended send times: Poisson arrivals from t0; the first `warmup_s` are not measured.
    Iterating sleeps until each time comes (never waiting for answers) and yields a Send."""

    def __init__(self, rate_per_s: float, t0: float, warmup_s: float, measure_s: float,
                 rng: random.Random, recorder: Recorder):
        self.rate_per_s = rate_per_s
        self.t0 = t0
        self.warm_end = t0 + warmup_s
        self.end = self.warm_end + measure_s
        self.rng = rng
        self.recorder = recorder

    async def __aiter__(self) -> AsyncIterator[Send]:
        t = self.t0
        while True:
            t += self.rng.expovariate(self.rate_per_s)
            if t >= self.end:
                return
            delay = t - time.perf_counter()
            # behind schedule, still yield to the loop, or answers are never read
            await asyncio.sleep(max(delay, 0.0))
            yield self.recorder.sending(t, t >= self.warm_end)


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
            await asyncio.wait(self._tasks, timeout=DEADLINE_S + 1.0)


async def _answer(recorder: Recorder, kind: str, send: Send, call) -> Any:
    """Await a unary call and record it; the reply, or None after an error status."""
    try:
        reply = await call
    except grpc.aio.AioRpcError as exc:
        recorder.kind(kind).answered(send, _error_label(kind, exc))
        return None
    recorder.kind(kind).answered(send, fallback=kind == DECIDE and reply.fallback)
    return reply


def _error_label(kind: str, exc: grpc.aio.AioRpcError) -> str:
    """The status code's name; an outcome refused by its customer's outcome rate (the Zipf
    head reports outcomes faster than OUTCOMES_PER_CUSTOMER allows) is told from a shed."""
    code = exc.code().name
    if kind == RESPOND and code == "RESOURCE_EXHAUSTED" and \
            RATE_REFUSAL in (exc.details() or ""):
        return CUSTOMER_RATE
    return code


async def _unary(stub, schedule: _Schedule, journeys: Journeys, kinds: frozenset[str],
                 recorder: Recorder) -> None:
    calls = {DECIDE: _decide, EVENT: _ingest, RESPOND: _respond}
    inflight = _Inflight()
    async for send in schedule:
        request = journeys.next(kinds)
        inflight.start(calls[request.kind](stub, request, journeys, send, recorder))
    await inflight.drain()


async def _decide(stub, request: Request, journeys: Journeys, send: Send,
                  recorder: Recorder) -> None:
    message = pb.DecideRequest(customer_id=request.customer_id, channel=request.channel,
                               placement=request.placement)
    for name, value in request.context.items():
        message.context[name].CopyFrom(wire.value_out(value))
    decision = await _answer(recorder, DECIDE, send, stub.Decide(message, timeout=DEADLINE_S))
    if decision is not None:
        journeys.decided(request, decision.decision_id,
                         decision.actions[0].action_id if decision.actions else None)


def _event(request: Request) -> pb.Event:
    """The event, asking for the re-evaluated decision of its channel: every event gets a
    full re-evaluation, as a channel that reacts to what the customer just did needs."""
    message = pb.Event(customer_id=request.customer_id, type=request.event_type,
                       channel=request.channel, decide_placement=request.placement)
    for name, value in request.attributes.items():
        message.attributes[name].CopyFrom(wire.value_out(value))
    return message


async def _ingest(stub, request: Request, journeys: Journeys, send: Send,
                  recorder: Recorder) -> None:
    await _answer(recorder, EVENT, send, stub.Ingest(_event(request), timeout=DEADLINE_S))


async def _respond(stub, request: Request, journeys: Journeys, send: Send,
                   recorder: Recorder) -> None:
    outcome = pb.Outcome(decision_id=request.decision_id, customer_id=request.customer_id,
                         action_id=request.action_id, channel=request.channel,
                         outcome=pb.ACCEPT if request.accept else pb.IMPRESSION)
    await _answer(recorder, RESPOND, send, stub.Respond(outcome, timeout=DEADLINE_S))


async def _stream(stub, schedule: _Schedule, journeys: Journeys, recorder: Recorder) -> None:
    """One IngestStream: events leave on schedule; acks come back in order."""
    inflight: deque[Send] = deque()

    async def events() -> AsyncIterator[pb.Event]:
        async for send in schedule:
            inflight.append(send)
            yield _event(journeys.next(OPS["stream"]))

    stats = recorder.kind(EVENT)
    call = stub.IngestStream(events(), timeout=schedule.end - time.perf_counter()
                             + DEADLINE_S + 5.0)
    try:
        async for _ in call:
            stats.answered(inflight.popleft())
    except grpc.aio.AioRpcError as exc:  # the stream ended: every unacked event failed
        while inflight:
            stats.answered(inflight.popleft(), exc.code().name)


async def _batches(stub, schedule: _Schedule, journeys: Journeys, recorder: Recorder) -> None:
    """A relay: holds the events that arrive and sends them as one IngestBatch once the
    oldest has waited BATCH_WINDOW_S (checked as events arrive) or BATCH_EVENTS are held."""
    stats = recorder.kind(EVENT)
    inflight = _Inflight()

    async def send(batch: list[tuple[Send, pb.Event]]) -> None:
        try:
            await stub.IngestBatch(pb.EventBatch(events=[event for _, event in batch]),
                                   timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            for arrival, _ in batch:
                stats.answered(arrival, exc.code().name)
            return
        for arrival, _ in batch:
            stats.answered(arrival)

    held: list[tuple[Send, pb.Event]] = []
    async for arrival in schedule:
        held.append((arrival, _event(journeys.next(OPS["batch"]))))
        if len(held) >= BATCH_EVENTS or arrival.intended - held[0][0].intended >= BATCH_WINDOW_S:
            inflight.start(send(held))
            held = []
    if held:
        inflight.start(send(held))
    await inflight.drain()


async def _push(stub, schedule: _Schedule, seed: int, recorder: Recorder) -> None:
    """Watch the call center's decisions for every customer; each probe is an event on the
    web for a customer never seen before, whose first decision is a change, so each probe
    causes exactly one push. The warm-up must cover the watch's registration (a second)."""
    watch = stub.WatchDecisions(pb.WatchRequest(channel=PUSH_CHANNEL, placement=PUSH_PLACEMENT))
    waiting: dict[str, Send] = {}
    stats = recorder.kind("push")

    async def follow() -> None:
        async for decision in watch:
            probe = waiting.pop(decision.customer_id, None)
            if probe is not None:
                stats.answered(probe)

    reader = asyncio.ensure_future(follow())
    journeys = Journeys(_CATALOG, 1, seed)
    inflight = _Inflight()
    n = 0
    async for send in schedule:
        probe = f"probe-{seed}-{n}"
        n += 1
        waiting[probe] = send
        request = journeys.event(probe, PROBE_CHANNEL, PROBE_PLACEMENT)
        inflight.start(_ingest(stub, request, journeys, send, recorder))
    await inflight.drain()
    await asyncio.sleep(DEADLINE_S)  # pushes still on their way; later ones count as missing
    watch.cancel()
    reader.cancel()
