"""Overload: Kairos at three times the highest Decide rate it holds, on the same machine.

    python -m bench.overload                   # find the rate held, then 1x and 3x of it
    python -m bench.overload --held 800        # skip the search: 800/s held
    python -m bench.overload --smoke           # under a minute (the test suite runs it)
    python -m bench.overload --judge bench/results/overload-<time>.json  # a saved run's
                                               # report under this version's verdict, printed

What a demanding operator expects from an overloaded system: what it admits it still serves
fast, and what it cannot serve it says so fast. The verdict holds when, at 3x:
  - the admitted Decides (answered, not the fallback) keep p99 within 2x the nominal p99
    (the 1x step of the same run);
  - every other request got RESOURCE_EXHAUSTED or the flagged fallback decision, within its
    deadline (loadgen.DEADLINE_S), and fast: the refusals' p99 within the admitted Decides'
    bound (a refusal that takes as long as a deadline is no help to a caller that must
    fall back); none got another error, none went unanswered.
The bound means something only if the 1x step held the rate (p99 ≤ 10 ms within the error
budget) with its generators on schedule, and the 3x step's generators kept to theirs (else
their lag is in its latencies): otherwise the latency checks judge nothing, and the verdict
is "not judged" unless a check no lag explains failed (another error, a call unanswered: a
call's deadline runs from its actual send), which makes it "not held" all the same.
Rates are open-loop Poisson arrivals and latency counts from the intended send time
(bench/loadgen.py), so queueing is not hidden.

Writes bench/results/overload-<time>.json and .md and prints a JSON summary as its last line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from kairos.cluster.control.partitions import DEFAULT_PARTITIONS

from . import report
from .loadgen import CUSTOMER_RATE, DEADLINE_S, GeneratorPool, Step
from .sweep import (ERROR_BUDGET, KIND_OF_OP, P99_TARGET_MS, failed, holds, sweep,
                    unanswered)
from .systems import populated_kairos

RESULTS = Path(__file__).parent / "results"
FACTOR = 3.0  # the overload, as a multiple of the rate held
P99_SLACK = 2.0  # admitted p99 at FACTOR x may be this multiple of the nominal p99
# the checks a generator's lag cannot fail: they count answers, not the time they took
LAG_FREE = ("no_other_errors", "all_answered")
ACCEPTED_REFUSALS = frozenset({"RESOURCE_EXHAUSTED", CUSTOMER_RATE})
DECIDE = KIND_OF_OP["decide"]


def verdict(nominal: dict[str, Any], overload: dict[str, Any]) -> dict[str, Any]:
    """Whether the overload step kept the promise (see the module doc), with the figures: held
    None where the steps leave nothing to judge it by (`not_judged` says why) and every
    check no lag explains passed. A step where
    no Decide came back has no figures of it: all it sent went unanswered (and nothing
    admitted to judge its latency by: the promise is not kept)."""
    n, o = decides(nominal), decides(overload)
    other_errors = {code: count for code, count in o["errors"].items()
                    if code not in ACCEPTED_REFUSALS}
    bound_ms = P99_SLACK * n["admitted_p99_ms"] if n["count"] else None
    refused = sum(o["errors"].values()) + o["fallbacks"]
    missing = unanswered(overload, DECIDE)
    checks = {
        "admitted_p99_within_2x": bound_ms is not None and o["count"] > 0
        and o["admitted_p99_ms"] <= bound_ms,
        "refusals_within_deadline": refused == 0 or o["refused_max_ms"] <= DEADLINE_S * 1e3,
        "refusals_fast": refused == 0 or (bound_ms is not None
                                          and o["refused_p99_ms"] <= bound_ms),
        "no_other_errors": not other_errors,
        "all_answered": missing == 0,
    }
    unjudged = not_judged(nominal, overload)
    if not all(checks[name] for name in LAG_FREE):
        held = False
    else:
        held = None if unjudged else all(checks.values())
    return {"held": held, "not_judged": unjudged,
            "checks": checks,
            "nominal_admitted_p99_ms": n.get("admitted_p99_ms"),
            "overload_admitted_p99_ms": o.get("admitted_p99_ms"), "bound_ms": bound_ms,
            "admitted": o["ok"] - o["fallbacks"], "refused": refused,
            "refused_p99_ms": o.get("refused_p99_ms"), "refused_max_ms": o.get("refused_max_ms"),
            "other_errors": other_errors, "unanswered": missing}


def not_judged(nominal: dict[str, Any], overload: dict[str, Any]) -> list[str]:
    """Why the steps cannot judge the promise, if they cannot: the bound comes from a nominal
    step that did not hold its rate, or a step's latencies carry its generators' lag."""
    why = []
    if not holds(nominal, DECIDE):
        p99 = decides(nominal).get("p99_ms")
        why.append("the nominal step did not hold its rate (p99 "
                   f"{'—' if p99 is None else f'{p99:g}'} ms against {P99_TARGET_MS:g}, "
                   f"{failed(nominal, DECIDE)} of "
                   f"{nominal['sent']} failed against a budget of {ERROR_BUDGET:.1%})")
    why += [f"the {name} step's generators fell behind their schedule"
            for name, step in (("nominal", nominal), ("overload", overload))
            if step["generator"]["behind"]]
    return why


def decides(step: dict[str, Any]) -> dict[str, Any]:
    """The step's Decide figures; counts of nothing where no Decide came back."""
    return step["kinds"].get(DECIDE, {"count": 0, "ok": 0, "fallbacks": 0, "errors": {}})


def _held_line(results: dict[str, Any]) -> str:
    """Where the nominal rate came from: given, found by the sweep, or (no step of the sweep
    held) the sweep's lowest rate."""
    rate = f"{results['held_rate']:.0f}/s"
    search = results["search"]
    if search is None:
        return f"Decide rate held {rate} (given)"
    if search["max_rate_held"]:
        return f"Decide held at {rate} (p99 within {P99_TARGET_MS:g} ms, the sweep)"
    return (f"no rate of the sweep held Decide's p99 within {P99_TARGET_MS:g} ms: nominal is "
            f"its lowest, {rate}")


def markdown(results: dict[str, Any]) -> str:
    v = results["verdict"]
    lines = [f"# Overload {results['run']}", "", f"`{results['command']}`", "",
             f"{_held_line(results)}; overload at "
             f"{FACTOR:.0f}x = {results['overload']['rate_target']:.0f}/s, "
             f"{results['customers']} customers, {results['shards']} shards.", "",
             "| step | offered/s | admitted | admitted p99 ms | refused or fallback | "
             "refused max ms | other errors | unanswered |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for name in ("nominal", "overload"):
        step = results[name]
        k = decides(step)
        other = {c: n for c, n in k["errors"].items() if c not in ACCEPTED_REFUSALS}
        lines.append(f"| {name} | {step['offered_rate']:.0f} | {k['ok'] - k['fallbacks']} | "
                     f"{_ms(k.get('admitted_p99_ms'))} | "
                     f"{sum(k['errors'].values()) + k['fallbacks']} | "
                     f"{_ms(k.get('refused_max_ms'))} | {other or ''} | "
                     f"{unanswered(step, DECIDE)} |")
    lines += ["", report.verdict_line(v)]
    if v["held"] is False and v["not_judged"]:  # failed on a check no lag explains
        lines += ["", f"Its latency checks judge nothing: {'; '.join(v['not_judged'])}."]
    return "\n".join(lines) + "\n"


def _ms(ms: float | None) -> str:
    return "—" if ms is None else f"{ms:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a short run (tests)")
    parser.add_argument("--held", type=float, help="the Decide rate held (skips the search)")
    parser.add_argument("--rates", default="250,500,750,1000,1250,1500,2000",
                        help="the search's ladder (Decides per second)")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--generators", type=int, default=2)
    parser.add_argument("--measure-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=2.0,
                        help="each step's warm-up, before it measures")
    parser.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--judge", type=Path, metavar="FILE.json",
                        help="print a saved run's report under this version's verdict (the "
                             "file is left as it was)")
    args = parser.parse_args(argv)
    if args.judge:
        saved = json.loads(args.judge.read_text())
        print(markdown({**saved, "verdict": verdict(saved["nominal"], saved["overload"])}))
        return 0
    if args.smoke:  # fewer partitions: fewer files for the bulk load's snapshot to write
        args.customers, args.measure_s, args.held = 500, 1.5, args.held or 100.0
        args.warmup_s, args.partitions = 0.5, 256
    command = " ".join(["python -m bench.overload"] + (sys.argv[1:] if argv is None else argv))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    pool = GeneratorPool(args.generators)
    try:
        with populated_kairos(args.shards, args.customers, args.partitions) as system:
            def step(rate: float) -> Step:
                return Step(system.target, "decide", rate, args.warmup_s, args.measure_s,
                            args.customers, 1)

            search = None
            held = args.held
            if held is None:
                search = sweep(pool, "kairos", step,
                               tuple(float(r) for r in args.rates.split(",")))
                held = search["max_rate_held"] or float(args.rates.split(",")[0])
            nominal = pool.run(step(held))
            overload = pool.run(step(FACTOR * held))
    finally:
        pool.close()
    results = {"run": f"overload-{stamp}{'-smoke' if args.smoke else ''}", "command": command,
               "held_rate": held, "customers": args.customers, "shards": args.shards,
               "search": search, "nominal": nominal, "overload": overload,
               "verdict": verdict(nominal, overload)}
    report.save(results, args.out, markdown(results))
    print(json.dumps({"run": results["run"], "held_rate": held, **{
        k: results["verdict"][k] for k in ("held", "nominal_admitted_p99_ms",
                                           "overload_admitted_p99_ms", "admitted", "refused",
                                           "unanswered", "not_judged")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
