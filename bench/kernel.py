"""Kernel benchmark: µs per full re-evaluation and per applied event, Cython against the twin.

    python -m bench.kernel            # 50, 200 and 1,000 actions on the default features
    python -m bench.kernel --quick    # a short run (the test suite uses it so it never rots)

Writes bench/results/kernel-<time>.json and .md, prints the Markdown table, and prints as its
last line a JSON object for the 200-action case.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from kairos.core import _kernel, reference
from kairos.core.compiler import CompiledCatalog, compile_catalog
from kairos.core.engine import DecisionEngine
from kairos.core.state import ProfileTable

from . import provenance
from .workload import T0, catalog_with_actions, random_context, random_event

RESULTS = Path(__file__).parent / "results"
ACTION_COUNTS = (50, 200, 1000)
BATCH = 256
# Between one timed event and the next (a shard taking 100 events a second): each event
# decays its customer's windowed features from the last one's time, as live traffic does
EVENT_GAP_S = 0.01
# Decisions are timed a day on: later than every event the runs apply (the EventClock's
# capacity is ~3 hours of them), so each decays the profile from its last event, as a
# decision in traffic does; at a time before a row's clock the decay would be skipped
DECIDE_AT = T0 + 86_400.0


def populate(compiled: CompiledCatalog, customers: int, events_each: int,
             rng: random.Random) -> DecisionEngine:
    """An engine whose customers have a history of random events and some outcomes."""
    engine = DecisionEngine(compiled, capacity=customers)
    cat = compiled.catalog
    batch = []
    for i in range(customers):
        for j in range(events_each):
            t = T0 - (events_each - j) * rng.uniform(60, 86400)
            etype, attrs = random_event(cat, rng, t)
            batch.append(engine.encode_event(f"c{i}", etype, t, attrs))
        if len(batch) >= 4096:
            engine.apply(batch)
            batch = []
    engine.apply(batch)
    outcomes = []
    for i in range(customers):
        for _ in range(rng.randrange(0, 6)):
            a = rng.randrange(len(compiled.action_ids))
            ch = int(rng.choice(np.flatnonzero(compiled.offered[a])))
            outcomes.append((f"c{i}", compiled.action_ids[a], compiled.channel_names[ch],
                             rng.choice(["impression", "impression", "accept", "reject"]),
                             T0 - rng.uniform(0, 7 * 86400), None))
    engine.record_outcomes(outcomes)
    return engine


class EventClock:
    """Event times that move on, one EVENT_GAP_S after another, across every timed call of
    both kernels on one engine. Events re-applied at one time find each row's clock already
    there and skip the decay of its windowed features, which real traffic never does: each
    event is later than the last one its customer had. The times are computed before the
    timing, so a call costs a slice, as a fixed array did."""

    def __init__(self, start: float = T0, capacity: int = 1 << 20):
        self.times = start + EVENT_GAP_S * np.arange(1, capacity + 1)
        self.used = 0

    def next(self, n: int) -> np.ndarray:
        if self.used + n > len(self.times):  # sized to not happen; stays right if it does
            self.times = self.times[-1] + EVENT_GAP_S * np.arange(1, 2 * len(self.times) + 1)
            self.used = 0
        self.used += n
        return self.times[self.used - n:self.used]


def timed(fn, iterations: int) -> float:
    """Median over 5 rounds of the mean µs per iteration."""
    rounds = []
    for _ in range(5):
        start = time.perf_counter_ns()
        for i in range(iterations):
            fn(i)
        rounds.append((time.perf_counter_ns() - start) / iterations / 1000.0)
    return float(np.median(rounds))


def measure(module, engine: DecisionEngine, rng: random.Random, iterations: int,
            clock: EventClock, batch_decide: bool = True) -> dict:
    """µs per decide and per applied event, one at a time and in batches of BATCH; the batch
    decide only if `batch_decide` (the twin's is in no report, and took most of a quick run:
    5 rounds of at least 2 batches of 256 twin decisions, however few `iterations`)."""
    c = engine.compiled
    t = engine.table
    cat = module.CatalogView(c)
    st = module.StateView(t.values, t.ring_action, t.ring_channel, t.ring_outcome, t.ring_time,
                          t.ring_head)
    mv = module.ModelView(*engine.models.kernel_arrays())
    ws = module.Workspace(c, BATCH, 1)
    n = len(t)
    requests = []
    for _ in range(max(iterations, BATCH)):
        ch = rng.randrange(len(c.channel_names))
        ctx = engine.encode_context(random_context(c.catalog, rng, DECIDE_AT))
        requests.append((rng.randrange(n), ch, rng.randrange(len(c.placement_names[ch])), ctx))
    rows = np.array([r[0] for r in requests[:BATCH]], np.int64)
    chans = np.array([r[1] for r in requests[:BATCH]], np.int32)
    places = np.array([r[2] for r in requests[:BATCH]], np.int32)
    ctxs = np.stack([r[3] for r in requests[:BATCH]])
    nows = np.full(BATCH, DECIDE_AT)
    zeros = np.zeros(BATCH, np.int32)

    def decide_1(i):
        r = requests[i % len(requests)]
        module.decide_one(cat, st, mv, ws, r[0], r[1], r[2], r[3], DECIDE_AT, 0)

    def decide_batch(i):
        module.decide(cat, st, mv, ws, rows, chans, places, ctxs, nows, zeros)

    events = []
    for _ in range(BATCH * 4):
        etype, attrs = random_event(c.catalog, rng, T0)
        events.append(engine.encode_event(f"c{rng.randrange(n)}", etype, T0, attrs))
    ev_rows = np.array([t.index[e.customer_id] for e in events], np.int64)
    ev_types = np.array([e.event_type for e in events], np.int32)
    ev_fields = np.stack([e.fields for e in events])

    def apply_1(i):
        j = i % len(events)
        module.apply_events(cat, st, ev_rows[j:j + 1], ev_types[j:j + 1], clock.next(1),
                            ev_fields[j:j + 1])

    def apply_batch(i):
        j = (i % 4) * BATCH
        module.apply_events(cat, st, ev_rows[j:j + BATCH], ev_types[j:j + BATCH],
                            clock.next(BATCH), ev_fields[j:j + BATCH])

    batch_iters = max(iterations // BATCH, 2)
    figures = {"decide_us": timed(decide_1, iterations)}
    if batch_decide:
        figures["decide_batch_us"] = timed(decide_batch, batch_iters) / BATCH
    return {**figures, "apply_event_us": timed(apply_batch, batch_iters) / BATCH,
            "apply_event_single_us": timed(apply_1, iterations)}


def bytes_per_customer(compiled: CompiledCatalog, customers: int) -> float:
    """Memory of the profile table (arrays, id index, id list) per resident customer."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = ProfileTable(compiled, customers)
    for i in range(customers):
        table.row(f"c{i:09d}")
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / customers


def engine_decide_us(engine: DecisionEngine, rng: random.Random, iterations: int) -> float:
    c = engine.compiled
    n = len(engine.table)
    requests = []
    for _ in range(iterations):
        ch = c.channel_names[rng.randrange(len(c.channel_names))]
        context = random_context(c.catalog, rng, DECIDE_AT)
        requests.append((f"c{rng.randrange(n)}", ch, context))
    return timed(lambda i: engine.decide(requests[i][0], requests[i][1], None, requests[i][2],
                                         now=DECIDE_AT), iterations)


def run(action_counts, customers: int, events_each: int, iterations: int,
        ref_iterations: int) -> list[dict]:
    rows = []
    for n_actions in action_counts:
        rng = random.Random(n_actions)
        compiled = compile_catalog(catalog_with_actions(n_actions))
        engine = populate(compiled, customers, events_each, rng)
        clock = EventClock()  # one for both kernels: the twin's events come after the fast's
        fast = measure(_kernel, engine, random.Random(1), iterations, clock)
        twin = measure(reference, engine, random.Random(1), ref_iterations, clock,
                       batch_decide=False)
        row = {
            "actions": n_actions,
            "customers": customers,
            "predictors": compiled.n_predictors,
            "profile_slots": compiled.layout.size,
            "decide_us": fast["decide_us"],
            "decide_batch_us": fast["decide_batch_us"],
            "engine_decide_us": engine_decide_us(engine, random.Random(2),
                                                 max(iterations // 4, 10)),
            "reference_decide_us": twin["decide_us"],
            "apply_event_us": fast["apply_event_us"],
            "apply_event_single_us": fast["apply_event_single_us"],
            "reference_apply_event_us": twin["apply_event_us"],
            "bytes_per_customer": bytes_per_customer(compiled, min(customers * 10, 100_000)),
        }
        row["speedup_decide"] = row["reference_decide_us"] / row["decide_us"]
        row["speedup_apply"] = row["reference_apply_event_us"] / row["apply_event_us"]
        rows.append(row)
    return rows


COLUMNS = [("actions", "actions", "{}"), ("decide_us", "decide µs (1)", "{:.2f}"),
           ("decide_batch_us", "decide µs (256)", "{:.2f}"),
           ("engine_decide_us", "engine.decide µs", "{:.1f}"),
           ("reference_decide_us", "twin decide µs", "{:.0f}"),
           ("speedup_decide", "× twin", "{:.0f}"),
           ("apply_event_us", "event µs (256)", "{:.3f}"),
           ("apply_event_single_us", "event µs (1)", "{:.2f}"),
           ("reference_apply_event_us", "twin event µs", "{:.1f}"),
           ("bytes_per_customer", "bytes/customer", "{:.0f}")]


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|" + "---:|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[key]) for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run for smoke tests")
    parser.add_argument("--out", type=Path, default=RESULTS, help="report folder")
    args = parser.parse_args(argv)
    if args.quick:
        rows = run((50, 200), customers=200, events_each=5, iterations=300, ref_iterations=10)
    else:
        rows = run(ACTION_COUNTS, customers=10_000, events_each=20, iterations=20_000,
                   ref_iterations=200)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report = {"bench": "kernel", "time": stamp, "quick": args.quick,
              "command": "python -m bench.kernel" + (" --quick" if args.quick else ""),
              "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                          "processor": platform.processor() or platform.machine()},
              "targets": {"decide_us_max": 10.0, "speedup_min": 20.0, "apply_event_us_max": 2.0,
                          "bytes_per_customer_max": 1024},
              "results": rows}
    provenance.stamp(report)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"kernel-{stamp}{'-quick' if args.quick else ''}"
    table = markdown(rows)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(f"# Kernel benchmark {stamp}\n\n`{report['command']}`"
                                         f" on {report['machine']['platform']}\n\n{table}\n")
    print(table)
    summary = next(r for r in rows if r["actions"] == 200)
    print(json.dumps({k: summary[k] for k in ("actions", "decide_us", "reference_decide_us",
                                              "apply_event_us", "bytes_per_customer",
                                              "decide_batch_us", "speedup_decide")}))


if __name__ == "__main__":
    main()
