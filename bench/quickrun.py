"""A short harness's command line and report: `--quick` (the test suite's run) and `--out`,
the report stamped with its provenance and written as <bench>-<time>[-quick].json and .md,
the Markdown printed, and a JSON summary as the last line (tests read it); and the basics
bench.costs' probes share (bench/costs.py, bench/safeguards.py): a figure's spread over its
repeats, a difference of two ways, a call's µs, the customers, shard and Redis servers they
run on."""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from kairos.cluster.control.partitions import partition_of
from kairos.cluster.protocol import Event
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage import redis_server
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.store import StoreUnavailable
from kairos.core.compiler import default_compiled

from . import provenance

RESULTS = Path(__file__).parent / "results"


def main(bench: str, description: str, measure: Callable[[bool], dict[str, Any]],
         markdown: Callable[[dict[str, Any]], str],
         summary: Callable[[dict[str, Any]], dict[str, Any]],
         argv: list[str] | None = None) -> None:
    """Run `measure(quick)` (the report's own fields), write its report, print the summary
    line: the report's path, the run's seconds and `summary(report)`."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{bench}", description=description)
    parser.add_argument("--quick", action="store_true", help="seconds: the test suite's run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="report folder")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    measured = measure(args.quick)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report = {"bench": bench, "time": stamp, "quick": args.quick,
              "command": f"python -m bench.{bench}" + (" --quick" if args.quick else ""),
              "seconds": round(time.perf_counter() - began, 1),
              "load_average_1m": round(os.getloadavg()[0], 2), **measured}
    provenance.stamp(report)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{bench}-{stamp}{'-quick' if args.quick else ''}"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (args.out / f"{name}.md").write_text(text)
    print(text)
    print(json.dumps({"report": str(args.out / f"{name}.json"), "seconds": report["seconds"],
                      **summary(report)}))


def spread(samples: list[float], unit: str, digits: int = 3) -> dict[str, Any]:
    """A figure over its repeats: the median, the lowest and highest, how many (here, not in
    bench.costs, whose imports, Ray's among them, each process bench.flood spawns would pay)."""
    return {"unit": unit, "median": round(statistics.median(samples), digits),
            "min": round(min(samples), digits), "max": round(max(samples), digits),
            "repeats": len(samples)}


def added(more: list[float], less: list[float], unit: str, digits: int = 3) -> dict[str, Any]:
    """What one way costs over another, repeat by repeat (taken in turn, so a busy moment
    slows both alike); marked a difference: noise can take one below zero."""
    return {**spread([m - n for m, n in zip(more, less)], unit, digits), "difference": True}


def per_call_us(fn: Callable[[], Any], calls: int) -> float:
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - began) / calls * 1e6


# -- what bench.costs' probes run on ------------------------------------------------------------

PARTITIONS = 64
RECORD = (b"x" * 200,)  # a journal batch of one small record: what is timed around a write
# shows (an owner's check, a replica's WAIT), not the writing
CART_TIMER_S = 1800.0  # the default catalog's cart_abandoned: 30 minutes after add_to_cart


def customer_id(k: int) -> str:
    return f"c{k:09d}"


def carts(customers: range, at: float) -> list[Event]:
    """An add_to_cart for each customer: each arms its cart_abandoned timer."""
    return [Event(partition=partition_of(customer_id(k), PARTITIONS), customer_id=customer_id(k),
                  event_type="add_to_cart", time=at,
                  attributes={"product_id": "tv", "category": "electronics", "price": 199.0})
            for k in customers]


def bench_shard(root: str, clock: Callable[[], float]) -> Shard:
    """A Shard of the default catalog on a directory store in `root`, every partition its own;
    never idle long enough to passivate (a sleeper's wake is a cost of its own)."""
    return Shard("bench", default_compiled(), range(PARTITIONS), PARTITIONS,
                 store=DirectoryStore(root), clock=clock, idle_s=10 * CART_TIMER_S)


# a Redis probe's server that did not start (a port another took first), or a write the store
# refused (ReplicasBehind among them): the probe is skipped, saying why; the run goes on
REDIS_FAILURES = (redis_server.DidNotStart, StoreUnavailable)


def redis_probe(probe: Callable[[bool], dict[str, Any]]) -> Callable[[bool], dict[str, Any]]:
    """`probe`, on redis-servers it starts, skipped where there is none or on REDIS_FAILURES."""
    @functools.wraps(probe)
    def skipping(quick: bool) -> dict[str, Any]:
        if not os.path.exists(redis_server.EXECUTABLE):
            return {"skipped": f"no redis-server ({redis_server.EXECUTABLE})"}
        try:
            return probe(quick)
        except REDIS_FAILURES as exc:
            return {"skipped": f"{type(exc).__name__}: {exc}"}
    return skipping
