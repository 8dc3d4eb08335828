"""Load test: Kairos against its peers, open loop, on the same workload and machine, one run.

    python -m bench.load                  # the full run (1,000,000 customers, one and three
                                          # Ray nodes, every peer; 15 to 30 minutes)
    python -m bench.load --smoke          # about a minute; the test suite runs it (its
                                          # steps are short: CPU figures are coarse)
    python -m bench.load --judge bench/results/load-<time>.json  # a saved run's report
                                          # under this version's targets, printed
    python -m bench.load --modes 1 --systems floor-grpc,kairos-1node --decide-only \
        --customers 20000 --rates 250,500 # server CPU per Decide: Kairos against the floor
    python -m bench.load --modes 1 --systems kairos-1node,redis --decide-only \
        --customers 100000 --rates 250,500 # Kairos against both Redis peers (`redis` is a
                                          # name prefix), Decide alone, at two rates

Systems, each behind the same kairos.v1 gRPC contract and driven by the same generators:
  floor-grpc         an empty Decide, and events acknowledged with nothing applied: the gRPC
                     round trip (or stream message) alone
  floor-ray-<mode>   an empty Decide that awaits an empty Ray actor call (the transport Kairos
                     cannot avoid: gateway actor → shard actor; across nodes in 3node mode)
  redis              a stateless gRPC service with profiles in a real redis-server, NumPy scoring
  redis-core         the same decision work as Kairos: a stateless gRPC service running Kairos's
                     own core (catalog, compiled kernel) on each customer's block, read from a
                     real redis-server (no persistence) on every request and written back where
                     the request changed it (an event; nothing for a Decide, for which Kairos
                     writes a decision-log record carrying that block, a write the peer skips).
                     Not the same durability: it has no journal (Kairos fsyncs one per batch), no
                     decision log and no sealed decision ids
  kairos-<mode>      Kairos: runtime + one gateway (1node, or 3node with the shards spread)
  actors             the literal card: one Ray actor per customer, a bounded number of them

Every system gets the same Decide sweep (the highest rate with p99 ≤ 10 ms, and the curve).
floor-grpc and Kairos also get IngestStream and IngestBatch sweeps (Kairos re-evaluates each
event). Kairos, in each mode, also gets: a bulk load of every customer, sessions across
channels (decide, ingest and respond mixed) and push latency (an event on the web to the call
center's WatchDecisions stream). After each of its steps that writes (ingest, sessions, push)
every shard is snapshotted, outside the measured windows: what the step dirtied would be
snapshotted a minute later, inside a later step; the report gives that snapshot's cost apart,
and judges the CPU per event targets on the step's window and that snapshot together.

Writes bench/results/load-<time>.json, .md and .png (latency percentiles against rate, one line
per system), and prints as its last stdout line a JSON summary: per system p50_ms, p99_ms,
rate and errors at the highest rate where p99 ≤ 10 ms held. Exits 1 when a phase failed (the
report says which; the other phases' figures are kept).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from . import report
from .journeys import EVENT, RESPOND
from .lifetime import exit_on_sigterm
from .loadgen import GeneratorPool, Step
from .peers import actor_per_customer, floor, redis_core, redis_peer
from .peers.serving import in_process, in_ray_actor
from kairos.cluster.settings import STORE_COUNT_S
from kairos.cluster.storage.redis_server import RedisServer
from .sweep import holds, served, sweep
from .systems import kairos, populate_and_snapshot, ray_nodes, settle_snapshots

RESULTS = Path(__file__).parent / "results"
PUSH_WARMUP_S = 1.5  # the watch must be registered before measured probes go out


@dataclass(frozen=True)
class Plan:
    customers: int
    modes: tuple[int, ...]  # Ray nodes: 1 and/or 3
    generators: int  # load generator processes
    warmup_s: float
    measure_s: float
    decide_rates: tuple[float, ...]  # per second, the sweep's ladder
    stream_rates: tuple[float, ...]  # events per second on IngestStream
    batch_rates: tuple[float, ...]  # events per second in IngestBatch messages
    journey_rate: float  # requests per second (of sessions mixing decide, ingest, respond),
    # at most (see Bench.kairos)
    push_rate: float  # push probes per second
    actors: int  # the literal card's customer actors
    shards: int  # one per core: fewer, fuller batches beat more processes on a small machine
    seed: int = 1
    systems: tuple[str, ...] = ()  # run only the phases named with these prefixes (all if empty)
    # each system's CPU with no load is measured this long first: several periods of the
    # timers it holds (the control loop's 8 s once backed off, Ray's 10 s metrics export and
    # long polls), so that where they fall in the window moves the figure little
    idle_s: float = 30.0
    # after this long with no request (GeneratorPool.idle): past the store count's next check
    idle_quiet_s: float = STORE_COUNT_S + 5.0
    decide_only: bool = False  # Decide sweeps alone (a CPU-per-Decide comparison)


FULL = Plan(customers=1_000_000, modes=(1, 3), generators=2, warmup_s=2.0, measure_s=10.0,
            decide_rates=(250, 500, 1000, 1500, 2000, 3000, 4000, 6000, 8000),
            stream_rates=(1000, 2500, 5000, 10_000, 20_000, 40_000),
            batch_rates=(5000, 10_000, 20_000, 30_000, 40_000),
            journey_rate=1000, push_rate=100, actors=64, shards=os.cpu_count() or 2)
SMOKE = Plan(customers=500, modes=(1,), generators=2, warmup_s=0.2, measure_s=0.6,
             decide_rates=(200,), stream_rates=(1000,), batch_rates=(2000,), journey_rate=200,
             push_rate=20, actors=4, shards=2, idle_s=0.5, idle_quiet_s=0.3)


class Bench:
    """Runs the plan's phases in order and gathers what each measured."""

    def __init__(self, pool: GeneratorPool, plan: Plan):
        self.pool = pool
        self.plan = plan
        self.results: dict[str, Any] = {"systems": {}, "ingest": {}, "batch": {}, "populate": {},
                                        "journey": {}, "push": {}, "ray_call": {},
                                        "idle_cpu": {}, "layout": {}, "redis": {},
                                        "failures": []}

    def step(self, target: str, op: str, rate: float, customers: int | None = None,
             warmup_s: float | None = None, routes: tuple[str, ...] = ()) -> Step:
        return Step(target, op, rate, self.plan.warmup_s if warmup_s is None else warmup_s,
                    self.plan.measure_s, customers or self.plan.customers, self.plan.seed,
                    routes)

    def decide_sweep(self, system: str, target: str, customers: int | None = None,
                     routes: tuple[str, ...] = ()) -> None:
        self.results["idle_cpu"][system] = self.pool.idle(target, self.plan.idle_s,
                                                          self.plan.idle_quiet_s)
        self.results["systems"][system] = sweep(
            self.pool, system,
            lambda rate: self.step(target, "decide", rate, customers, routes=routes),
            self.plan.decide_rates)

    def ingest_sweeps(self, system: str, target: str,
                      after: Callable[[dict[str, Any]], None] | None = None) -> None:
        """IngestStream's ladder, then IngestBatch's; `after` each step (sweep's)."""
        for section, op, rates in (("ingest", "stream", self.plan.stream_rates),
                                   ("batch", "batch", self.plan.batch_rates)):
            self.results[section][system] = sweep(
                self.pool, system, lambda rate, op=op: self.step(target, op, rate), rates,
                after)

    def settle_deferred(self, step: dict[str, Any]) -> None:
        """After a Kairos step that wrote, outside its window: the snapshots of the partitions
        it dirtied, taken now (systems.settle_snapshots), so that they land in no later
        step's window; their cost goes beside the step's (`deferred`), per write served."""
        deferred = settle_snapshots(self.pool.pids())
        writes = sum(served(step, kind) for kind in (EVENT, RESPOND))
        deferred["cpu_us_per_write"] = (round(deferred["server_cpu_s"] / writes * 1e6, 1)
                                        if writes else None)
        step["deferred"] = deferred

    def run(self) -> dict[str, Any]:
        self.phase("floor-grpc", self.grpc_floor)
        self.phase("redis", self.redis, "redis", redis_peer.populate, redis_peer.RedisDecisions)
        self.phase("redis-core", self.redis, "redis-core", redis_core.populate,
                   redis_core.CoreDecisions)
        for mode in self.plan.modes:
            with ray_nodes(mode) as nodes:
                self.phase(f"floor-ray-{mode}node", self.ray_floor, mode, nodes)
                self.phase(f"kairos-{mode}node", self.kairos, mode)
                self.phase(f"kairos-direct-{mode}node", self.kairos_direct, mode)
                if mode == 1:
                    self.phase("actors", self.actors, nodes[0])
        return self.results

    def phase(self, name: str, work: Callable[..., None], *args: Any) -> None:
        """Run one phase; a failure is reported (and fails the run) but does not cost the
        other phases' measurements."""
        if self.plan.systems and not name.startswith(self.plan.systems):
            return
        try:
            work(*args)
        except Exception as exc:  # noqa: BLE001  (reported below, and in the report)
            traceback.print_exc()
            self.results["failures"].append({"phase": name, "error": repr(exc)})

    def grpc_floor(self) -> None:
        with in_process(floor.EmptyDecisions) as target:
            self.decide_sweep("floor-grpc", target)
            if not self.plan.decide_only:
                self.ingest_sweeps("floor-grpc", target)

    def redis(self, name: str, populate_redis: Callable[[int, int, Callable[[int], None]], None],
              service: Callable[[int], Any]) -> None:
        """A Redis peer: its own redis-server (no persistence), every customer loaded, then its
        service in a process of its own."""
        folder = tempfile.mkdtemp(prefix=f"kairos-bench-{name}-")
        server = RedisServer(Path(folder), durable=False).start()
        try:
            with tqdm(total=self.plan.customers, desc=f"{name} populate", unit="customer",
                      leave=False) as bar:
                started = time.perf_counter()
                populate_redis(server.port, self.plan.customers, bar.update)
                seconds = time.perf_counter() - started
            self.results["redis"][name] = {
                "used_mib": round(server.used_memory_bytes() / 2**20, 1),
                "populate_s": round(seconds, 1),
                "populate_rate": round(self.plan.customers / seconds, 1)}
            with in_process(service, server.port) as target:
                self.decide_sweep(name, target)
        finally:
            server.stop()
            shutil.rmtree(folder, ignore_errors=True)

    def ray_floor(self, mode: int, nodes: list[str]) -> None:
        """gRPC front on the last node, the empty actor on the first (another node when
        there are several, as Kairos's shards are for most requests)."""
        empty = floor.EmptyActor.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[0], soft=False)).remote()
        try:
            self.results["ray_call"][f"{mode}node"] = floor.actor_call_reference(empty)
            with in_ray_actor(nodes[-1], floor.RayHopDecisions, empty) as target:
                self.decide_sweep(f"floor-ray-{mode}node", target)
        finally:
            ray.kill(empty)

    def kairos(self, mode: int) -> None:
        name = f"kairos-{mode}node"
        with kairos(self.plan.shards, self.plan.customers) as system:
            self.results["layout"][name] = asdict(system)
            with tqdm(total=self.plan.customers, desc=f"{name} populate", unit="customer",
                      leave=False) as bar:
                self.results["populate"][name] = populate_and_snapshot(self.plan.customers,
                                                                       bar.update)
            self.decide_sweep(name, system.target)
            if self.plan.decide_only:
                return
            # a Decide changes no profile (no record_impression; what it writes is a
            # decision-log record): only the steps below dirty partitions
            self.ingest_sweeps(name, system.target, after=self.settle_deferred)
            # sessions at the highest Decide rate that held (at most the plan's rate): what
            # each kind of call costs when the system is busy but not past its limit
            held = self.results["systems"][name]["max_rate_held"]
            journey = self.pool.run(self.step(
                system.target, "journey",
                min(held or self.plan.decide_rates[0], self.plan.journey_rate)))
            self.settle_deferred(journey)
            self.results["journey"][name] = journey
            push = self.pool.run(self.step(system.target, "push", self.plan.push_rate,
                                           warmup_s=max(self.plan.warmup_s, PUSH_WARMUP_S)))
            push["holds"] = holds(push, "push", report.PUSH_P99_TARGET_MS)
            self.settle_deferred(push)
            self.results["push"][name] = push

    def kairos_direct(self, mode: int) -> None:
        """Kairos called as a client that routes calls it: each Decide to its customer's
        owner's own endpoint (shard/api.py), one hop fewer than through the gateway."""
        name = f"kairos-direct-{mode}node"
        with kairos(self.plan.shards, self.plan.customers, direct=True) as system:
            self.results["layout"][name] = asdict(system)
            with tqdm(total=self.plan.customers, desc=f"{name} populate", unit="customer",
                      leave=False) as bar:
                self.results["populate"][name] = populate_and_snapshot(self.plan.customers,
                                                                       bar.update)
            self.decide_sweep(name, system.target, routes=system.routes)

    def actors(self, node: str) -> None:
        n = self.plan.actors
        with tqdm(total=n, desc="actors create", unit="actor", leave=False) as bar:
            created = actor_per_customer.create(n, bar.update)
        try:
            self.results["actor_per_customer"] = {k: v for k, v in created.items()
                                                  if k != "actors"}
            with in_ray_actor(node, actor_per_customer.ActorDecisions, n) as target:
                self.decide_sweep("actors", target, customers=n)
        finally:
            for actor in created["actors"]:
                ray.kill(actor)


def parse(argv: list[str] | None) -> tuple[Plan, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="a short run, about a minute (tests)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="report folder")
    parser.add_argument("--customers", type=int, help="resident customers")
    parser.add_argument("--modes", help="Ray node counts to run, e.g. 1,3")
    parser.add_argument("--generators", type=int, help="load generator processes")
    parser.add_argument("--measure-s", type=float, help="measured seconds per step")
    parser.add_argument("--rates", help="the Decide ladder, e.g. 500,1000,2000")
    parser.add_argument("--stream-rates", help="the IngestStream ladder (events/s)")
    parser.add_argument("--batch-rates", help="the IngestBatch ladder (events/s)")
    parser.add_argument("--actors", type=int, help="customer actors of the literal card")
    parser.add_argument("--shards", type=int, help="Kairos shards")
    parser.add_argument("--systems", help="only these systems (name prefixes), e.g. "
                                          "kairos,floor-ray")
    parser.add_argument("--judge", type=Path, metavar="FILE.json",
                        help="print a saved run's report under this version's targets (the "
                             "file is left as it was)")
    parser.add_argument("--decide-only", action="store_true",
                        help="Decide sweeps alone (no ingest, batch, session or push "
                             "phases)")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    overrides = {
        "customers": args.customers, "generators": args.generators,
        "measure_s": args.measure_s, "actors": args.actors, "shards": args.shards,
        "modes": _numbers(args.modes, int), "decide_rates": _numbers(args.rates, float),
        "stream_rates": _numbers(args.stream_rates, float),
        "batch_rates": _numbers(args.batch_rates, float),
        "systems": _numbers(args.systems, str), "decide_only": args.decide_only or None}
    return replace(plan, **{k: v for k, v in overrides.items() if v is not None}), args


def _numbers(text: str | None, cast: type) -> tuple | None:
    return tuple(cast(x) for x in text.split(",")) if text else None


def main(argv: list[str] | None = None) -> int:
    plan, args = parse(argv)
    if args.judge:
        saved = json.loads(args.judge.read_text())
        print(report.markdown({**saved, "targets": report.targets(saved)}))
        return 0
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    command = " ".join(["python -m bench.load"] + (sys.argv[1:] if argv is None else argv))
    exit_on_sigterm()
    started = time.perf_counter()
    pool = GeneratorPool(plan.generators)
    try:
        results = Bench(pool, plan).run()
    finally:
        pool.close()
    results.update({
        "run": f"load-{stamp}{'-smoke' if args.smoke else ''}", "command": command,
        "seconds": round(time.perf_counter() - started, 1), "plan": asdict(plan),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "ray": ray.__version__}})
    summary = report.write(results, args.out)
    print(json.dumps(summary))
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
