"""Soak: Kairos under steady mixed traffic for an hour, watched for leaks.

    python -m bench.soak --rate 300                 # an hour of sessions at 300/s
    python -m bench.soak --minutes 0.25 --rate 100 --customers 2000 --step-s 5 \
        --sample-s 0.8 --partitions 256             # the suite's short version (15 s)

Sessions (decisions, events and outcomes mixed, as bench/loadgen.py's "journey") arrive at
the given rate, which should be about half the Decide rate the machine holds (bench.load or
bench.overload find it). Every SAMPLE_S the harness reads, for each Kairos process (the Ray
actors: gateway, shards, controller, learner), its resident memory, open file descriptors and
threads, and from the controller how many decisions the shards' memos keep. After the
warm-up nothing should grow. The warm-up lasts the first WARMUP_SHARE of the run (at least one
step) and, beyond that, until every shard's decision memo is full: the memo keeps the inputs
of its last decisions (DECISION_CACHE_SIZE with the default catalog) for their outcomes, a
bounded cache that
takes about twenty minutes to fill at 250 sessions/s, and its filling is not a leak. The
verdict holds when, from just after the warm-up to the end (each the median of a tenth of the
samples), the processes' total RSS grew by less than 5 %, file descriptors and threads did
not grow, no process was replaced, and the traffic was served (errors, fallbacks and requests
never answered within the sweep's error budget; outcomes refused by their customer's outcome
rate are counted apart, as the limit working), and the service kept its pace: no step after
the warm-up had a Decide p99 over P99_DRIFT_MAX times the median p99 of the first
BASELINE_STEPS steps, and at most BEHIND_SHARE_MAX of the steps had their generators behind
schedule (a generator behind sends late, so the hour was not run at the rate asked). Each
sample whose threads differ from the last one's records them by process and name, so a thread
that appears can be told (a pool growing to its bound, or a leak).

Threads are judged in two parts. gRPC's EventEngine pool (threads named `event_engine`, in
every process that speaks gRPC) grows with load, not with time: its lifeguard adds a thread
only when every thread of the pool is busy, at most one a second, and a thread above the
pool's reserve leaves once it has waited 20 s without work (grpc's
work_stealing_thread_pool.cc), so under steady traffic the pool keeps the most threads it
ever needed at once. The verdict wants the other threads flat, and the pool settled: no
pool thread added in the second half of the time after the warm-up (a leak keeps adding).
`python -m bench.soak --judge FILE.json` judges a saved run again with these checks.

Writes bench/results/soak-<time>.json, .md and .png (RSS, descriptors and threads over time)
and prints a JSON summary as its last line.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import ray

from kairos.cluster.control import runtime
from kairos.cluster.control.partitions import DEFAULT_PARTITIONS

from . import report
from .loadgen import CUSTOMER_RATE, GeneratorPool, Step
from .sweep import ERROR_BUDGET, unanswered
from .systems import kairos_processes, populated_kairos

RESULTS = Path(__file__).parent / "results"
SAMPLE_S = 10.0
STEP_S = 60.0  # the traffic, one schedule, is cut into measured steps of about this
WARMUP_SHARE = 0.1
RSS_GROWTH_LIMIT = 0.05
POOL_THREAD = "event_engine"  # what gRPC names its EventEngine pool's threads
# Latency drift: a soak that keeps its memory but slows down is not holding. The first steps
# are the baseline (the memos are still filling then, so they are no easier than later ones)
BASELINE_STEPS = 3
P99_DRIFT_MAX = 3.0
BEHIND_SHARE_MAX = 0.1  # of all steps, the share whose generators may fall behind schedule


class Sampler(threading.Thread):
    """Samples the Kairos processes every `every_s` until stopped."""

    def __init__(self, every_s: float):
        super().__init__(daemon=True)
        self.every_s = every_s
        self.samples: list[dict[str, Any]] = []
        self._done = threading.Event()
        self._t0 = time.monotonic()
        self._threads: dict[str, dict[str, int]] = {}

    def run(self) -> None:
        while True:
            self.samples.append(self.sample())
            if self._done.wait(self.every_s):
                return

    def sample(self) -> dict[str, Any]:
        rss = fds = 0
        threads: dict[str, dict[str, int]] = {}
        for proc in kairos_processes():
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    fds += proc.num_fds()
                    # by pid: a Ray worker's title names the method it is running
                    threads[str(proc.pid)] = _thread_names(proc)
            except psutil.Error:
                continue
        sample = {"t_s": round(self.elapsed(), 1), "processes": len(threads),
                  "rss_mib": round(rss / 2**20, 1), "fds": fds,
                  "threads": sum(sum(t.values()) for t in threads.values()),
                  "memos": _memos()}
        if threads != self._threads:
            sample["thread_names"] = self._threads = threads
        return sample

    def elapsed(self) -> float:
        """Seconds on the samples' clock (their `t_s`)."""
        return time.monotonic() - self._t0

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.samples.append(self.sample())


def _thread_names(proc: psutil.Process) -> dict[str, int]:
    """The process's threads counted by name, numbers dropped (pool workers share a name)."""
    names: Counter[str] = Counter()
    for thread in proc.threads():
        try:
            comm = Path(f"/proc/{proc.pid}/task/{thread.id}/comm").read_text().strip()
        except OSError:  # the thread ended since the listing: not the process
            continue
        names[re.sub(r"\d+", "#", comm)] += 1
    return dict(sorted(names.items()))


def _memos() -> list[list[int]]:
    """Per shard, the decisions its memo keeps and how many it may (its last statistics, at
    most a second old)."""
    status = ray.get(runtime.controller().status.remote(), timeout=30)
    return [[s.get("decisions_remembered", 0), s.get("decision_memo_capacity", 0)]
            for s in status["shards"]]


def _memos_full(sample: dict[str, Any]) -> bool:
    """Every shard's memo full. Runs saved before the sampler read memos have none, and
    those saved before it read their capacity have counts alone: neither can say."""
    memos = sample.get("memos") or []
    return (bool(memos) and all(isinstance(m, list) for m in memos)
            and all(kept >= capacity > 0 for kept, capacity in memos))


def warmed_up(samples: list[dict[str, Any]], at_least_s: float) -> float:
    """When the warm-up ends: at_least_s, or later, the first sample with every memo full."""
    full = [s["t_s"] for s in samples if _memos_full(s)]
    return max(at_least_s, full[0]) if full else at_least_s


def verdict(samples: list[dict[str, Any]], warm_s: float, steps: list[dict[str, Any]]
            ) -> dict[str, Any]:
    """Growth from just after the warm-up to the end, each end the median of a window of
    samples (thread pools and sockets come and go by a few; a leak keeps climbing)."""
    samples = _with_pool_threads(samples)
    after = [s for s in samples if s["t_s"] >= warm_s] or samples[-1:]
    n = max(len(after) // 10, min(3, len(after)))
    first, last = _medians(after[:n]), _medians(after[-n:])
    half = len(after) // 2
    pool = [s["pool_threads"] for s in after]
    sent = sum(s["sent"] for s in steps)
    errors = Counter()
    for step in steps:
        for k in step["kinds"].values():
            errors.update(k["errors"])
            errors["fallback"] += k["fallbacks"]
        errors["unanswered"] += unanswered(step)
    rate_limited = errors.pop(CUSTOMER_RATE, 0)  # the limit working, on the Zipf head
    failed = sum(errors.values())
    growth = (last["rss_mib"] - first["rss_mib"]) / max(first["rss_mib"], 1e-9)
    pace = _pace(steps, warm_s)
    checks = {"rss_growth_below_5pct": growth < RSS_GROWTH_LIMIT,
              "fds_flat": last["fds"] <= first["fds"],
              "threads_flat": last["threads"] - last["pool_threads"]
              <= first["threads"] - first["pool_threads"],
              "grpc_pool_settled": max(pool[half:]) <= max(pool[:half] or pool[:1]),
              "same_processes": len({s["processes"] for s in after}) == 1,
              "served": failed <= ERROR_BUDGET * max(sent, 1),
              "p99_within_3x_first_steps": pace["p99_worst_ms"] is None
              or pace["p99_worst_ms"] <= P99_DRIFT_MAX * pace["p99_baseline_ms"],
              "generators_on_schedule": pace["behind_share"] <= BEHIND_SHARE_MAX}
    return {"held": all(checks.values()), "checks": checks, "window_samples": n, **pace,
            **{key: [first[key], last[key]] for key in ("rss_mib", "fds", "threads",
                                                        "pool_threads", "processes")},
            "rss_growth": round(growth, 4), "sent": sent, "failed": failed,
            "failures": dict(+errors), "rate_limited_outcomes": rate_limited,
            "memos_full": _memos_full(after[0]),
            "threads_changed": _threads_changed(samples, warm_s)}


def _pace(steps: list[dict[str, Any]], warm_s: float) -> dict[str, Any]:
    """Decide p99 per step against the first steps', and how many steps ran behind."""
    p99 = [s["kinds"].get("decide", {}).get("p99_ms") for s in steps]
    baseline = [v for v in p99[:BASELINE_STEPS] if v is not None]
    after = [v for v, start in zip(p99, _step_starts(steps)) if start >= warm_s and v is not None]
    behind = sum(s["generator"]["behind"] for s in steps)
    return {"p99_baseline_ms": statistics.median(baseline) if baseline else None,
            "p99_worst_ms": max(after) if after and baseline else None,
            "steps_behind": behind, "behind_share": round(behind / max(len(steps), 1), 3)}


def _step_starts(steps: list[dict[str, Any]]) -> list[float]:
    """When each step began, on the samples' clock, as the run recorded it; for files from
    before it did, estimated: steps back to back from 0, each as long as its sends took at
    its offered rate (which leaves out the time between steps)."""
    if steps and all("started_s" in step for step in steps):
        return [step["started_s"] for step in steps]
    starts, t = [], 0.0
    for step in steps:
        starts.append(t)
        t += step["sent"] / step["offered_rate"] if step.get("offered_rate") else 0.0
    return starts


def _with_pool_threads(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples, each with `pool_threads`: gRPC EventEngine threads in all processes (a
    sample names its threads only when they changed, so the last names carry forward)."""
    names: dict[str, dict[str, int]] = {}
    out = []
    for sample in samples:
        names = sample.get("thread_names", names)
        out.append({**sample, "pool_threads": sum(t.get(POOL_THREAD, 0)
                                                  for t in names.values())})
    return out


def _threads_changed(samples: list[dict[str, Any]], warm_s: float
                     ) -> dict[str, dict[str, int]]:
    """Per process, the thread names whose count changed from the warm-up's end to the end
    (only samples whose threads changed name them)."""
    named = [s for s in samples if "thread_names" in s]
    if not named:
        return {}
    before = [s for s in named if s["t_s"] <= warm_s] or named[:1]
    first, last = before[-1]["thread_names"], named[-1]["thread_names"]
    changed = {}
    for proc in sorted(first.keys() | last.keys()):
        was, now = first.get(proc, {}), last.get(proc, {})
        diff = {name: now.get(name, 0) - was.get(name, 0) for name in was.keys() | now.keys()
                if now.get(name, 0) != was.get(name, 0)}
        if diff:
            changed[proc] = dict(sorted(diff.items()))
    return changed


def _medians(samples: list[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.median(s[key] for s in samples)
            for key in ("rss_mib", "fds", "threads", "pool_threads", "processes")}


def markdown(results: dict[str, Any]) -> str:
    v = results["verdict"]
    lines = [f"# Soak {results['run']}", "", f"`{results['command']}`", "",
             f"{results['minutes']} minutes of sessions at {results['rate']:.0f}/s, "
             f"{results['customers']} customers, {results['shards']} shards; warm-up "
             f"{results['warmup_s']:.0f} s (decision memos "
             f"{'full' if v['memos_full'] else 'still filling'} after it: "
             f"{', '.join(str(c) for _, c in results['samples'][-1]['memos'])} "
             f"decisions per shard).", "",
             f"| (medians of {v['window_samples']} samples) | after warm-up | end |",
             "|---|---:|---:|",
             f"| RSS of the Kairos processes (MiB) | {v['rss_mib'][0]} | {v['rss_mib'][1]} |",
             f"| open file descriptors | {v['fds'][0]} | {v['fds'][1]} |",
             f"| threads | {v['threads'][0]} | {v['threads'][1]} |",
             f"| of them gRPC's EventEngine pool | {v['pool_threads'][0]} | "
             f"{v['pool_threads'][1]} |",
             f"| processes | {v['processes'][0]} | {v['processes'][1]} |", "",
             f"Decide p99 of the first {BASELINE_STEPS} steps (median) {v['p99_baseline_ms']} "
             f"ms, the worst step's after the warm-up {v['p99_worst_ms']} ms (at most "
             f"{P99_DRIFT_MAX:g}×); generators behind schedule in {v['steps_behind']} of "
             f"{len(results['steps'])} steps (at most {BEHIND_SHARE_MAX:.0%}).", "",
             f"Requests sent {v['sent']}, failed {v['failed']} "
             f"({', '.join(f'{code} {n}' for code, n in v['failures'].items()) or 'none'}); "
             f"outcomes refused by their customer's outcome rate (OUTCOMES_PER_CUSTOMER, "
             f"not failures: the hottest Zipf customers report faster than it allows) "
             f"{v['rate_limited_outcomes']}.", "",
             "Threads that came or went after the warm-up, by process: "
             + (", ".join(f"{proc}: " + ", ".join(f"{name} {n:+d}" for name, n in d.items())
                          for proc, d in v["threads_changed"].items()) or "none") + ".", "",
             report.verdict_line(v)]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = results["samples"]
    t = [s["t_s"] / 60 for s in samples]
    series = {"RSS (MiB)": [s["rss_mib"] for s in samples],
              "file descriptors": [s["fds"] for s in samples],
              "threads": [s["threads"] for s in samples],
              "decisions in memos": [sum(kept for kept, _ in s["memos"]) for s in samples]}
    fig, axes = plt.subplots(len(series), 1, figsize=(8, 9), sharex=True)
    for ax, (label, values) in zip(axes, series.items()):
        ax.plot(t, values)
        ax.axvline(results["warmup_s"] / 60, color="grey", linestyle=":")
        ax.set_ylabel(label)
    axes[-1].set_xlabel("minutes")
    axes[0].set_title(f"Kairos processes under {results['rate']:.0f} sessions/s")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=float,
                        help="sessions per second: about half the Decide rate held")
    parser.add_argument("--judge", type=Path, metavar="FILE.json",
                        help="judge a saved run again with this version's checks; print it")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--generators", type=int, default=2)
    parser.add_argument("--step-s", type=float, default=STEP_S)
    parser.add_argument("--sample-s", type=float, default=SAMPLE_S)
    # fewer for a short run: fewer files for the bulk load's snapshot to write
    parser.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.judge:
        return judge(args.judge)
    if args.rate is None:
        parser.error("--rate is required")
    command = " ".join(["python -m bench.soak"] + (sys.argv[1:] if argv is None else argv))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    total_s = args.minutes * 60
    count = max(round(total_s / args.step_s), 1)  # steps of one length, as near --step-s
    step_s = total_s / count
    pool = GeneratorPool(args.generators)
    try:
        with populated_kairos(args.shards, args.customers, args.partitions) as system:
            sampler = Sampler(args.sample_s)
            sampler.start()
            # one schedule for the whole run: the load never pauses between steps
            steps = pool.traffic(Step(system.target, "journey", args.rate, 0.0, step_s,
                                      args.customers, 1), count).results()
            for step in steps:  # when its schedule began, on the samples' clock
                began = sampler.elapsed() - (time.time() - step["started_at"])
                step["started_s"] = round(began, 1)
            sampler.stop()
    finally:
        pool.close()
    warm_s = warmed_up(sampler.samples, max(WARMUP_SHARE * total_s, step_s))
    results = {"run": f"soak-{stamp}", "command": command, "minutes": args.minutes,
               "rate": args.rate, "customers": args.customers, "shards": args.shards,
               "warmup_s": warm_s, "samples": sampler.samples, "steps": steps,
               "verdict": verdict(sampler.samples, warm_s, steps)}
    base = report.save(results, args.out, markdown(results))
    plot(results, base.with_suffix(".png"))
    print(json.dumps({"run": results["run"], **{k: results["verdict"][k] for k in (
        "held", "rss_growth", "fds", "threads", "sent", "failed")}}))
    return 0


def judge(path: Path) -> int:
    """Print a saved run's verdict under this version's checks (the file is left as it was)."""
    saved = json.loads(path.read_text())
    again = verdict(saved["samples"], saved["warmup_s"], saved["steps"])
    print(json.dumps({"run": saved["run"], "verdict_saved": saved["verdict"]["checks"],
                      **{k: again[k] for k in ("held", "checks", "rss_growth", "fds", "threads",
                                               "pool_threads", "threads_changed",
                                               "p99_baseline_ms", "p99_worst_ms",
                                               "steps_behind")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
