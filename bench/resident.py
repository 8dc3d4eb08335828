"""Resident customers: what a customer costs one node in memory, and whether Decide's tail
holds when the node holds ten times as many.

    python -m bench.resident                        # 1,000,000 then 10,000,000 customers
    python -m bench.resident --customers 4000000    # 400,000 then 4,000,000
    python -m bench.resident --smoke                # a short run (the test suite runs it)

One Ray node on this machine runs Kairos as `kairos up` does (bench/systems.py: a directory
store, the journal fsynced per batch, four shards), with the shards' resident limit raised so
that nobody is passivated. Customers are loaded through the runtime client's bulk path
(`systems.populate`, journaled by their shards, past the gateway) as served customers: a CRM
profile event each, then an offline impression of an action the catalog offers. A profile
event alone never writes a row's interaction ring (its channel, outcome and time entries: 192
of a row's 813 bytes on the default catalog), and the arrays are reserved ahead as pages
nothing wrote (core/state.py), so those pages were never resident: RSS undercounted what a
customer holds once shown anything. A window's profile events go before the same customers'
impressions, as a shard applies a batch's consecutive requests of one kind together. The
shards count their rows with a ring written
(`ShardActor.rings_written`), which must be every customer loaded. Served here means a row
and its ring: not the idempotency keys, outcome keys and taught labels a customer's keyed
outcomes add, nor the decision memo, a per-shard cost bounded at 100,000 decisions whatever
the population (RSS is taken before any Decide). The shards' outcome-rate window is cut to
OUTCOME_RATE_WINDOW_S for the run (recorded with it). First a tenth of the customers, then
the rest. At each of the two populations:

- memory: the summed RSS of the Kairos processes (the Ray actors: shards, controller,
  learner, gateway) minus the same sum before any customer was loaded, per customer; beside
  it, the bytes of a profile row's own arrays, which it must not be below;
- the load's rate, in customers per second;
- a snapshot of every partition, all shards at once (`ShardActor.snapshot`), in wall seconds
  (so that no background checkpoint runs in the steps that follow);
- a Decide step and an ingest step at the same rate through the gateway (bench/loadgen.py:
  open loop, latency from the intended send time, Zipf popularity over the whole
  population);
- the shards' collector pauses over the load and over the steps (cluster/pauses.py).

Targets, judged at the larger population: at most 1 KiB per customer (not judged unless
every customer's ring was written, so not for a saved run before served customers, nor when
below a row's own arrays: pages missed), and Decide p99 within 1.2x of the smaller
population's, in the same run at the same rate. The load stops (and the run fails, writing
nothing) when the machine's available memory falls below MEMORY_FLOOR_GIB.

Writes bench/results/resident-<time>.json and .md and prints a JSON summary as its last line.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil
import ray
from tqdm import tqdm

from kairos.cluster.control import runtime
from kairos.core.compiler import CompiledCatalog, default_compiled
from kairos.core.state import ProfileTable

from . import report
from .lifetime import exit_on_sigterm
from .loadgen import GeneratorPool, Step
from .systems import (kairos, kairos_processes, populate, ray_nodes, shard_actors,
                      snapshot_shards)

RESULTS = Path(__file__).parent / "results"
SMALL_SHARE = 10  # the smaller population is 1/SMALL_SHARE of the larger
BYTES_TARGET = 1024  # RSS per resident customer, at the larger population
P99_RATIO_TARGET = 1.2  # Decide p99 at the larger population over the smaller's
MEMORY_FLOOR_GIB = 4.0  # the machine's available memory the load leaves, at least
WARMUP_S = 5.0
RESIDENT_HEADROOM = 1.25  # a shard's resident limit over its even share of the customers
# The shards' outcome-rate window while loading: each keeps a count per customer with an
# outcome in the window (cluster/shard/outcomes.py), a minute of the load's impressions by
# default, which would be charged to the population as if every customer held it
OUTCOME_RATE_WINDOW_S = 1.0


class MemoryShort(RuntimeError):
    """The machine's available memory fell below MEMORY_FLOOR_GIB during the load."""


def kairos_rss() -> int:
    """Bytes resident in the Kairos processes, summed."""
    total = 0
    for proc in kairos_processes():
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def _guarded(bar: tqdm) -> Callable[[int], None]:
    """Progress that also stops the load before the machine runs short of memory."""
    def progress(n: int) -> None:
        bar.update(n)
        available = psutil.virtual_memory().available
        if available < MEMORY_FLOOR_GIB * 2**30:
            raise MemoryShort(f"{available / 2**30:.1f} GiB available after "
                              f"{bar.n:,} customers: the load stops here")
    return progress


def _gc(shards: list[Any]) -> tuple[float, list[dict[str, Any]]]:
    """Now (epoch seconds) and the shards' collections so far (cluster/pauses.py)."""
    return time.time(), [s["gc"] for s in ray.get([shard.stats.remote() for shard in shards])]


def _pauses(start: tuple[float, list[dict]], end: tuple[float, list[dict]]) -> dict[str, Any]:
    """The shards' collections between two `_gc` readings: how many of them were full passes,
    the seconds all of them took, and the pauses of 1 ms or more (how many, the longest)."""
    (since, before), (until, after) = start, end
    full = sum(a["collections"][2] - b["collections"][2] for a, b in zip(after, before))
    every = sum(sum(a["collections"]) - sum(b["collections"]) for a, b in zip(after, before))
    seconds = sum(sum(a["seconds"]) - sum(b["seconds"]) for a, b in zip(after, before))
    long_ms = [ms for a in after for when, _, ms in a["long"] if since <= when <= until]
    return {"collections": every, "full_collections": full, "collector_s": round(seconds, 3),
            "pauses_over_1ms": len(long_ms), "longest_ms": max(long_ms, default=0.0)}


def shown_action(compiled: CompiledCatalog) -> tuple[str, str]:
    """The catalog's first action and a channel that offers it: each customer's impression."""
    actions, channels = np.nonzero(compiled.offered)
    return compiled.action_ids[actions[0]], compiled.channel_names[channels[0]]


def row_bytes(compiled: CompiledCatalog) -> int:
    """A profile row's arrays (core/state.py), all of them written for a served customer."""
    return ProfileTable(compiled, 1).nbytes()


def phase(customers: int, first: int, baseline: int, pool: GeneratorPool, target: str,
          rate: float, warmup_s: float, measure_s: float, impression: tuple[str, str]
          ) -> dict[str, Any]:
    """Load customers `first`..`customers`-1 on top of what is resident, then measure."""
    shards = shard_actors()
    started = _gc(shards)
    with tqdm(total=customers - first, desc=f"load to {customers:,}", unit="customer",
              leave=False) as bar:
        loaded = populate(customers, _guarded(bar), first=first, impression=impression)
    rss = kairos_rss()
    stats = ray.get([shard.stats.remote() for shard in shards])
    rings = sum(ray.get([shard.rings_written.remote() for shard in shards]))
    loaded_gc = _gc(shards)
    # every partition written now, so that no background checkpoint runs in the steps
    began = time.perf_counter()
    written = snapshot_shards(shards)
    snapshot_s = time.perf_counter() - began
    measured = _gc(shards)
    steps = {op: pool.run(Step(target, op, rate, warmup_s, measure_s, customers, 1))
             for op in ("decide", "ingest")}
    pauses = {"load": _pauses(started, loaded_gc), "steps": _pauses(measured, _gc(shards))}
    tqdm.write(f"{customers:,} customers: {(rss - baseline) / customers:,.0f} bytes each, "
               f"loaded at {loaded['rate']:,.0f}/s, snapshot {snapshot_s:.1f} s, Decide p99 "
               f"{steps['decide']['kinds']['decide']['p99_ms']} ms", file=sys.stderr)
    return {"customers": customers, "load": loaded, "rss_mib": round(rss / 2**20, 1),
            "resident": sum(s["resident"] for s in stats), "rings_written": rings,
            "passivated": sum(s.get("passivations", 0) for s in stats),
            "bytes_per_customer": round((rss - baseline) / customers, 1),
            "snapshot": {"customers": written, "seconds": round(snapshot_s, 2)},
            "pauses": pauses, **steps}


def unserved(phase: dict[str, Any]) -> str | None:
    """Why a phase's customers were not all served (their rings written), or None."""
    if "impressions" not in phase["load"]:
        return "customers not served: the ring pages were never written"
    rings = phase.get("rings_written")
    if rings != phase["customers"]:
        return (f"customers not served: {rings or 0:,} of {phase['customers']:,} rows have "
                f"their ring written")
    return None


def targets(small: dict[str, Any], large: dict[str, Any],
            row: int | None = None) -> dict[str, Any]:
    """The two targets. The bytes per customer are judged only when every customer had its
    ring written (`unserved`), and not below `row`, a profile row's own arrays (None: a saved
    run that did not say). The p99 ratio is judged only when the generator kept its schedule
    in both Decide steps (a late generator measures itself, not the population)."""
    measured = large["bytes_per_customer"]
    why = unserved(large) or (f"below a profile row's own arrays, {row:,} bytes: pages of "
                              f"them were not resident" if row and measured < row else None)
    small_p99 = small["decide"]["kinds"]["decide"]["p99_ms"]
    large_p99 = large["decide"]["kinds"]["decide"]["p99_ms"]
    ratio = large_p99 / small_p99 if small_p99 else None
    judged = not any(p["decide"]["generator"]["behind"] for p in (small, large))
    return {"bytes_per_customer": {"measured": measured, "target": BYTES_TARGET,
                                   "row_bytes": row, "judged": why is None,
                                   "unjudged": why,
                                   "met": why is None and measured <= BYTES_TARGET},
            "decide_p99_ratio": {"measured": None if ratio is None else round(ratio, 3),
                                 "target": P99_RATIO_TARGET, "judged": judged,
                                 "met": judged and ratio is not None
                                 and ratio <= P99_RATIO_TARGET}}


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Resident customers {results['run']}", "", f"`{results['command']}` on "
             f"{results['machine']}", "",
             f"{results['shards']} shards on one Ray node, directory store, journal fsynced per "
             f"batch; loaded through {results['load_path']}; Decide and ingest steps at "
             f"{results['rate']:g}/s through the gateway for {results['measure_s']:g} s each "
             f"(Zipf popularity over the population). Empty baseline: "
             f"{results['baseline_rss_mib']:,.0f} MiB over the Kairos processes."
             + (f" A profile row's arrays: {results['row_bytes']:,} bytes."
                if "row_bytes" in results else "")
             + (f" The shards' outcome-rate window: {results['outcome_rate_window_s']:g} s."
                if "outcome_rate_window_s" in results else ""), "",
             "| customers | resident | RSS MiB | bytes/customer | load customers/s | snapshot s | "
             "Decide p50 ms | Decide p99 ms | ingest p99 ms | full collections (load, steps) | "
             "longest pause ms (load, steps) | errors |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for p in results["phases"]:
        d, e = p["decide"]["kinds"]["decide"], p["ingest"]["kinds"]["event"]
        load, steps = p["pauses"]["load"], p["pauses"]["steps"]
        errors = {**d["errors"], **{f"ingest {k}": v for k, v in e["errors"].items()}}
        behind = [op for op in ("decide", "ingest") if p[op]["generator"]["behind"]]
        lines.append(
            f"| {p['customers']:,} | {p['resident']:,} | {p['rss_mib']:,.0f} | "
            f"{p['bytes_per_customer']:,.0f} | "
            f"{p['load']['rate']:,.0f} | {p['snapshot']['seconds']:.1f} | {d['p50_ms']:.2f} | "
            f"{d['p99_ms']:.2f} | {e['p99_ms']:.2f} | {load['full_collections']}, "
            f"{steps['full_collections']} | {load['longest_ms']:.1f}, {steps['longest_ms']:.1f} | "
            f"{errors or ''}"
            f"{' generator behind: ' + ', '.join(behind) if behind else ''} |")
    t = results["targets"]
    b, r = t["bytes_per_customer"], t["decide_p99_ratio"]
    lines += ["", f"- bytes per customer ≤ {b['target']}: {b['measured']:,.0f} — "
                  + (f"**{'met' if b['met'] else 'missed'}** "
                     f"({b['measured'] - b['target']:+,.0f} bytes)" if b["judged"] else
                     f"**not judged** ({b['unjudged']})")
                  + (" — served: a row and its ring each, without idempotency keys, outcome "
                     "keys, taught labels or the decision memo (per shard, at most 100,000 "
                     "decisions' inputs)" if "impressions" in results["phases"][-1]["load"]
                     else ""),
              f"- Decide p99 within {r['target']}x of the smaller population's: "
              f"{r['measured']}x — "
              + (f"**{'met' if r['met'] else 'missed'}**" if r["judged"] else
                 "**not judged** (the generator fell behind its schedule in a Decide step)")]
    return "\n".join(lines) + "\n"


def judge(path: Path) -> int:
    """Print a saved run's report under this version's targets (the file is left as it was)."""
    saved = json.loads(path.read_text())
    print(markdown({**saved, "targets": targets(*saved["phases"], saved.get("row_bytes"))}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.resident",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000_000,
                        help="the larger population (the smaller is a tenth of it)")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="Decides (and events) per second in the steps")
    parser.add_argument("--measure-s", type=float, default=30.0)
    parser.add_argument("--warmup-s", type=float, default=WARMUP_S,
                        help="load before each step's window, not measured")
    parser.add_argument("--shards", type=int, default=runtime.DEFAULT_SHARDS)
    parser.add_argument("--smoke", action="store_true", help="a short run (tests)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--judge", type=Path, metavar="FILE.json",
                        help="judge a saved run again with this version's targets; print it")
    args = parser.parse_args(argv)
    if args.judge:
        return judge(args.judge)
    if args.smoke:
        args.customers, args.rate, args.measure_s, args.warmup_s = 20_000, 50.0, 1.5, 1.0
    if args.customers < SMALL_SHARE:
        parser.error(f"--customers must be at least {SMALL_SHARE}")
    command = " ".join(["python -m bench.resident"] + (sys.argv[1:] if argv is None else argv))
    run = time.strftime("resident-%Y%m%dT%H%M%SZ", time.gmtime()) + ("-smoke" if args.smoke
                                                                      else "")
    # every customer stays resident (idle passivation is off already): the limit is per
    # shard, and each shard reserves its rows (address space, not memory: core/state.py)
    os.environ["KAIROS_RESIDENT_LIMIT"] = str(math.ceil(args.customers / args.shards
                                                        * RESIDENT_HEADROOM))
    os.environ["KAIROS_OUTCOME_RATE_WINDOW_S"] = str(OUTCOME_RATE_WINDOW_S)
    compiled = default_compiled()  # the catalog `kairos` starts on
    impression, row = shown_action(compiled), row_bytes(compiled)
    small = args.customers // SMALL_SHARE
    exit_on_sigterm()
    pool = GeneratorPool(1)
    try:
        with ray_nodes(1), kairos(args.shards, args.customers) as system:
            baseline = kairos_rss()
            phases = [phase(small, 0, baseline, pool, system.target, args.rate,
                            args.warmup_s, args.measure_s, impression)]
            phases.append(phase(args.customers, small, baseline, pool, system.target,
                                args.rate, args.warmup_s, args.measure_s, impression))
    finally:
        pool.close()
    results = {"run": run, "command": command,
               "machine": f"{platform.machine()}, {platform.python_version()}, "
                          f"{os.cpu_count()} cores, "
                          f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
               "shards": args.shards, "rate": args.rate, "measure_s": args.measure_s,
               "load_path": "the runtime client (bench.systems.populate: Event requests "
                            "enqueued to the owning shards, past the gateway, and an offline "
                            f"impression of {impression[0]} on {impression[1]} each)",
               "row_bytes": row, "outcome_rate_window_s": OUTCOME_RATE_WINDOW_S,
               "baseline_rss_mib": round(baseline / 2**20, 1),
               "phases": phases, "targets": targets(*phases, row)}
    report.save(results, args.out, markdown(results))
    print(markdown(results))
    print(json.dumps({"run": run, **{k: v["measured"] for k, v in results["targets"].items()},
                      "met": {k: v["met"] for k, v in results["targets"].items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
