"""Drain benchmark: how long taking a node out takes, against the customers it holds.

    python -m bench.drain                          # 100,000 and 1,000,000 customers
    python -m bench.drain --customers 2000 --rate 20 --partitions 256 --step-s 1
                                                   # the suite's short version

For each size: two Ray nodes on this machine, Kairos on them with a gateway on each and one
shard per node (the embedded default's durability: a directory store, fsync per batch), every
customer's profile loaded and snapshotted (the partitions the load dirtied are not written
inside the drain), then DrainNode of the node that does not hold the controller, while
Decide traffic at `--rate` goes through the other node's gateway, one open-loop schedule cut
into steps (bench/loadgen.py's Traffic: the load never pauses, however slow the system gets).
Reported per size: the customers on the drained node, the drain's seconds (its unready window,
KAIROS_DRAIN_UNREADY_S, set to 0 here, so the figure is the moves plus the retired shards'
KAIROS_RETIRE_GRACE_S, 5 s, in which clients learn the new map), partitions and
customers moved per second, and the traffic's Decide p99 and failed calls (errors, fallbacks,
unanswered) while it ran, with its generators' lag (the worst p99 is marked where its own
step's generators fell behind their schedule: their lateness is in it). From the largest size
it works out the grace period a worker pod needs: the unready window, plus twice the measured
drain scaled to the customers a node holds, plus the time Ray takes to stop.

Writes bench/results/drain-<time>.json, .md and .png (drain seconds against customers) and
prints a JSON summary as its last line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import ray  # noqa: E402
from tqdm import tqdm  # noqa: E402

from kairos.cluster.control import runtime  # noqa: E402
from kairos.cluster.control.nodes import GatewaySpec  # noqa: E402
from kairos.cluster.control.partitions import DEFAULT_PARTITIONS, partition_of  # noqa: E402
from kairos.cluster.settings import RETIRE_GRACE_S  # noqa: E402

from . import report  # noqa: E402
from .journeys import customer_id  # noqa: E402
from .loadgen import GeneratorPool, Step  # noqa: E402
from .sweep import failed  # noqa: E402
from .systems import populate_and_snapshot, ray_nodes  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STEP_S = 5.0  # the traffic runs as continuous measured steps of this length
UNREADY_S = 10.0  # the k8s manifests' KAIROS_DRAIN_UNREADY_S
RAY_STOP_S = 60.0  # what a worker pod's grace period leaves Ray after the drain
SAFETY = 2.0  # a busy cluster drains slower than this machine's idle one


def drain_once(customers: int, rate: float, pool: GeneratorPool,
               partitions: int = DEFAULT_PARTITIONS, step_s: float = STEP_S) -> dict[str, Any]:
    """One size on a fresh two-node cluster of `partitions`, traffic cut into steps of
    `step_s`."""
    os.environ["KAIROS_DRAIN_UNREADY_S"] = "0"  # the controller (a Ray actor) inherits it
    store = Path(os.environ.get("TMPDIR", "/tmp")) / f"kairos-drain-{os.getpid()}-{customers}"
    with ray_nodes(2) as (head, worker):
        runtime.start(n_shards=2, n_partitions=partitions, store=str(store),
                      journal_policy="fsync",
                      gateways=GatewaySpec("127.0.0.1", 0), shards_per_cpu=1.0)
        try:
            with tqdm(total=customers, desc=f"populate {customers:,}", unit="customer",
                      leave=False) as bar:
                loaded = populate_and_snapshot(customers, bar.update)
            status = ray.get(runtime.controller().status.remote())
            nodes = {n["node"]: n for n in status["node_status"]}
            target = f"127.0.0.1:{nodes[head]['gateway_port']}"
            held = held_by(set(nodes[worker]["shards"]), customers)
            with pool.traffic(Step(target, "decide", rate, 0.0, step_s, customers)) as traffic:
                # a step of traffic before the drain
                time.sleep(max(traffic.measured_at + step_s - time.time(), 0.0))
                started = time.perf_counter()
                done = ray.get(runtime.controller().drain_node.remote(worker))
                seconds = time.perf_counter() - started
                steps = traffic.stop()  # the step under way is the last
        finally:
            runtime.stop()
            shutil.rmtree(store, ignore_errors=True)
    return {"customers": customers, "populate": loaded,
            "on_drained_node": held, "drain_s": round(seconds, 2),
            "partitions_moved": done["moved"], "shards_stopped": done["shards"],
            "customers_per_s": round(held / seconds, 1),
            "traffic_rate": rate, **traffic_seen(steps)}


def traffic_seen(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The Decide traffic's steps: the worst p99, and whether its step's generators fell
    behind (latency counts from the intended send, so their lateness is in that p99); the
    calls sent and failed (errors, fallbacks, unanswered: a step where nothing came back
    failed all it sent), each step's too; and the generators' lag, each step's and the
    worst, and how many steps they fell behind in."""
    decide = [s["kinds"].get("decide", {}) for s in steps]
    # on a tie, the step behind: its p99 may be lag, and the mark must not be lost
    worst = max(((d["p99_ms"], s["generator"]["behind"]) for s, d in zip(steps, decide) if d),
                default=(None, False))
    return {"traffic_steps": len(steps),
            "decide_p99_ms": worst[0], "decide_p99_generators_behind": worst[1],
            "failed": sum(failed(s, "decide") for s in steps),
            "sent": sum(s["sent"] for s in steps),
            "generator_lag_p99_ms": max((s["generator"]["lag_p99_ms"] for s in steps),
                                        default=None),
            "generators_behind_steps": sum(s["generator"]["behind"] for s in steps),
            "steps": [{"started_at": s["started_at"], "ended_at": s["ended_at"],
                       "settled_s": s["settled_s"], "chained": s["chained"], "sent": s["sent"],
                       "failed": failed(s, "decide"), "errors": d.get("errors", {}),
                       "fallbacks": d.get("fallbacks", 0), "p99_ms": d.get("p99_ms"),
                       "generator_lag_p99_ms": s["generator"]["lag_p99_ms"],
                       "generator_behind": s["generator"]["behind"]}
                      for s, d in zip(steps, decide)]}


def held_by(shards: set[str], customers: int) -> int:
    """How many of the loaded customers the partition map gives to `shards`."""
    routing = ray.get(runtime.controller().get_map.remote(0))
    owners = np.frombuffer(routing["owners"], np.uint16)
    mine = {i for i, name in enumerate(routing["shards"]) if name in shards}
    return sum(int(owners[partition_of(customer_id(i), len(owners))]) in mine
               for i in range(customers))


def grace_period(results: list[dict[str, Any]], per_node: int) -> float:
    """Seconds a worker pod's termination needs for `per_node` customers, from the largest
    measured size: its moves scaled by customers, the retired shards' fixed linger not."""
    largest = max(results, key=lambda r: r["on_drained_node"])
    moves_s = max(largest["drain_s"] - RETIRE_GRACE_S, 0.0) \
        * max(per_node / max(largest["on_drained_node"], 1), 1.0)
    return round(UNREADY_S + SAFETY * (moves_s + RETIRE_GRACE_S) + RAY_STOP_S)


def markdown(results: dict[str, Any]) -> str:
    rows = ["| customers | on the drained node | drain s | partitions moved | customers/s | "
            "Decide p99 ms during it | generator lag p99 ms | failed / sent |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["sizes"]:
        behind = r["generators_behind_steps"]
        rows.append(f"| {r['customers']:,} | {r['on_drained_node']:,} | {r['drain_s']:.2f} | "
                    f"{r['partitions_moved']:,} | {r['customers_per_s']:,.0f} | "
                    f"{r['decide_p99_ms']}"
                    + (" (its step's generators behind)" if r["decide_p99_generators_behind"]
                       else "")
                    + f" | {r['generator_lag_p99_ms']}"
                    + (f" (behind in {behind} of {r['traffic_steps']} steps)" if behind else "")
                    + f" | {r['failed']} / {r['sent']:,} |")
    return (f"# Drain benchmark {results['run']}\n\n`{results['command']}` on "
            f"{results['machine']}\n\n" + "\n".join(rows) + "\n\n"
            f"Grace period for a worker holding {results['grace_for']:,} customers: "
            f"{results['grace_s']:.0f} s (unready window {UNREADY_S:.0f} s + {SAFETY:g} × the "
            f"drain, its moves scaled from the largest size, + {RAY_STOP_S:.0f} s for "
            f"Ray).\n")


def plot(results: dict[str, Any], path: Path) -> None:
    sizes = results["sizes"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["on_drained_node"] for r in sizes], [r["drain_s"] for r in sizes], "o-")
    ax.set_xlabel("customers on the drained node")
    ax.set_ylabel("drain seconds")
    ax.set_title(results["run"])
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drain",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--rate", type=float, default=200.0,
                        help="Decide calls per second during the drain")
    parser.add_argument("--generators", type=int, default=1)
    parser.add_argument("--grace-for", type=int, default=1_000_000,
                        help="customers per worker node to size the grace period for")
    # fewer partitions and shorter steps: the suite's short run (fewer files to snapshot,
    # move and delete), the drain still under traffic
    parser.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    parser.add_argument("--step-s", type=float, default=STEP_S,
                        help="seconds of each measured traffic step (one before the drain)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    command = " ".join(["python -m bench.drain"] + (sys.argv[1:] if argv is None else argv))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    pool = GeneratorPool(args.generators)
    try:
        sizes = [drain_once(n, args.rate, pool, args.partitions, args.step_s)
                 for n in args.customers]
    finally:
        pool.close()
    results = {"run": f"drain-{stamp}", "command": command,
               "machine": f"{os.cpu_count()} cores", "sizes": sizes,
               "grace_for": args.grace_for, "grace_s": grace_period(sizes, args.grace_for)}
    base = report.save(results, args.out, markdown(results))
    plot(results, base.with_suffix(".png"))
    print(json.dumps({"run": results["run"], "grace_s": results["grace_s"],
                      "sizes": [{k: r[k] for k in ("customers", "on_drained_node", "drain_s",
                                                   "failed", "sent")} for r in sizes]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
