"""Sweeps: one system, one operation, a ladder of rates; the highest rate that holds.

A step "holds" when its p99 is within the target and at most ERROR_BUDGET of the requests it
sent failed, fell back or got no answer at all. (The rate a step sends is set by its schedule,
not by the server; a generator that fell behind sends late, which its latency shows.) The
ladder stops after STOP_AFTER_FAILURES steps in a row that did not hold (one noisy step does
not cut the curve short); every step run is reported.
"""
from __future__ import annotations

from typing import Any, Callable

from tqdm import tqdm

from .loadgen import GeneratorPool, Step

P99_TARGET_MS = 10.0
ERROR_BUDGET = 0.001  # errors, fallbacks and unanswered requests, as a share of those sent
STOP_AFTER_FAILURES = 2
KIND_OF_OP = {"decide": "decide", "stream": "event", "batch": "event", "ingest": "event"}


def holds(result: dict[str, Any], kind: str, p99_target_ms: float = P99_TARGET_MS) -> bool:
    stats = result["kinds"].get(kind)
    if not stats or not stats["count"]:
        return False
    return (stats["p99_ms"] <= p99_target_ms
            and failed(result, kind) <= ERROR_BUDGET * result["sent"])


def unanswered(result: dict[str, Any], kind: str) -> int:
    """Requests of a one-kind step that got no answer at all before the step ended."""
    return max(result["sent"] - result["kinds"][kind]["count"], 0)


def failed(result: dict[str, Any], kind: str) -> int:
    """Error statuses, fallbacks and requests never answered."""
    stats = result["kinds"][kind]
    return sum(stats["errors"].values()) + stats["fallbacks"] + unanswered(result, kind)


def sweep(pool: GeneratorPool, system: str, make_step: Callable[[float], Step],
          rates: tuple[float, ...]) -> dict[str, Any]:
    """Run the ladder; the steps and the highest rate that held (0 if none did)."""
    steps = []
    failures = 0
    with tqdm(rates, desc=f"{system} {make_step(rates[0]).op}", unit="step",
              leave=False) as bar:
        for rate in bar:
            step = make_step(rate)
            result = pool.run(step)
            result["holds"] = holds(result, KIND_OF_OP[step.op])
            steps.append(result)
            stats = result["kinds"].get(KIND_OF_OP[step.op], {})
            bar.set_postfix_str(f"{rate:.0f}/s p99 {stats.get('p99_ms', float('nan')):.1f} ms")
            failures = 0 if result["holds"] else failures + 1
            if failures >= STOP_AFTER_FAILURES:
                break
    held = [s for s in steps if s["holds"]]
    best = max(held, key=lambda s: s["rate_target"]) if held else None
    return {"op": steps[0]["op"], "kind": KIND_OF_OP[steps[0]["op"]], "steps": steps,
            "max_rate_held": best["kinds"][KIND_OF_OP[best["op"]]]["rate"] if best else 0.0,
            "max_rate_target_held": best["rate_target"] if best else 0.0}


def headline_step(result: dict[str, Any]) -> dict[str, Any]:
    """The step that stands for a sweep: its highest that held, else its first."""
    held = [s for s in result["steps"] if s["holds"]]
    return max(held, key=lambda s: s["rate_target"]) if held else result["steps"][0]


def cpu_us_per_ok(step: dict[str, Any], kind: str) -> float | None:
    """Server CPU per request of `kind` answered without an error or a fallback: what a
    request the system did serve cost it (per request answered, refusals, which cost less,
    would lower the figure the more the system refused)."""
    stats = step["kinds"].get(kind)
    ok = stats["count"] - sum(stats["errors"].values()) - stats["fallbacks"] if stats else 0
    spent = step.get("server_cpu_s")
    return round(spent / ok * 1e6, 1) if spent is not None and ok > 0 else None


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The figures that stand for a sweep: its headline step's."""
    step = headline_step(result)
    stats = step["kinds"][result["kind"]]
    return {"p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"], "rate": stats["rate"],
            "errors": failed(step, result["kind"]),
            "cpu_us_per_request": step["cpu_us_per_request"],
            "generator_cpu_us_per_request": step["generator_cpu_us_per_request"],
            "max_rate_held": result["max_rate_held"], "at_rate_target": step["rate_target"]}
