"""What the decision log costs per decision: CPU µs of a shard's Decide round with the log on
against off (the difference is building the record: the profile block, the inputs, the
eligible actions, packing), the writer's CPU per record appending to a directory store, and a
record's size.

    python -m bench.decision_log           # 100 rounds of 256 Decides on the default catalog
    python -m bench.decision_log --quick   # a short run (the test suite uses it)

Writes bench/results/decision-log-<time>.json (with the machine's load average: the figures
are CPU time, but a busy machine slows both sides) and prints a JSON object as its last line.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
from collections import deque
import tempfile
import time
from pathlib import Path

from kairos.cluster import pauses
from kairos.cluster.control.partitions import partition_of
from kairos.cluster.protocol import Decide, Event
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.core.compiler import default_compiled

from . import provenance
from .workload import T0, random_event

RESULTS = Path(__file__).parent / "results"
PARTITIONS = 64
ROUND = 256


def _loaded(logging: bool, customers: int, rng: random.Random) -> Shard:
    compiled = default_compiled()
    shard = Shard("bench", compiled, range(PARTITIONS), PARTITIONS, store=MemoryStore())
    shard.decision_log.enabled = logging
    shard.engine.keep_eligible = logging
    events = []
    for k in range(customers):
        customer = f"c{k}"
        for n in range(5):
            etype, attrs = random_event(compiled.catalog, rng, T0 + n)
            events.append(Event(partition=partition_of(customer, PARTITIONS),
                                customer_id=customer, event_type=etype, time=T0 + n,
                                attributes=attrs))
    shard.process(events)
    return shard


def _round_cpu_us(shard: Shard, customers: int, rng: random.Random) -> float:
    """CPU µs per decision of a round of ROUND Decides."""
    ids = [f"c{rng.randrange(customers)}" for _ in range(ROUND)]
    batch = [Decide(partition=partition_of(c, PARTITIONS), customer_id=c, channel="web",
                    placement="hero", context={}, now=T0 + 10) for c in ids]
    began = time.process_time()
    shard.process(batch)
    return (time.process_time() - began) / ROUND * 1e6


def run(rounds: int, customers: int) -> dict:
    """Rounds with the log off and on taken in turn, so a busy machine slows both alike."""
    rng = random.Random(7)
    off, on = _loaded(False, customers, rng), _loaded(True, customers, rng)
    pauses.settle()  # as a shard's actor does once loaded, and keep_short every second
    handed: deque = deque(maxlen=10)  # the last rounds' records, handed over as a shard does
    on.decision_log.writer.submit = lambda entries, forget, trim=None: handed.append(entries)
    times: dict[Shard, list[float]] = {off: [], on: []}
    for _ in range(rounds):
        for shard in (off, on):
            times[shard].append(_round_cpu_us(shard, customers, rng))
        pauses.keep_short()
    cpu_off, cpu_on = statistics.median(times[off]), statistics.median(times[on])
    entries = [e for r in handed for e in r]
    with tempfile.TemporaryDirectory() as root:
        log = DirectoryStore(root, fsync=False).decision_log("bench")
        began = time.process_time()
        for k in range(0, len(entries), ROUND):
            log.append(entries[k:k + ROUND])
        write_us = (time.process_time() - began) / len(entries) * 1e6
    return {"decisions_per_round": ROUND, "rounds": rounds, "customers": customers,
            "cpu_us_per_decision_log_off": round(cpu_off, 1),
            "cpu_us_per_decision_log_on": round(cpu_on, 1),
            "cpu_us_logging_per_decision": round(cpu_on - cpu_off, 1),
            "writer_cpu_us_per_record_directory": round(write_us, 1),
            "record_bytes_mean": round(statistics.mean(len(e[2]) for e in entries))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS, help="report folder")
    args = parser.parse_args()
    result = run(*((5, 200) if args.quick else (100, 5000)))
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    result["cpus"] = os.cpu_count()
    for name, value in result.items():
        print(f"{name:>38}  {value}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    provenance.stamp(result)
    (args.out / f"decision-log-{stamp}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
