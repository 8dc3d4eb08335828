"""Sweeps: one system, one operation, a ladder of rates; the highest rate that holds.

A step "holds" when its p99 is within the target and at most ERROR_BUDGET of the requests it
sent failed, fell back or got no answer at all. (The rate a step sends is set by its schedule,
not by the server; a generator that fell behind sends late, which its latency shows.) The
ladder stops after STOP_AFTER_FAILURES steps in a row that did not hold (one noisy step does
not cut the curve short); every step run is reported. The rate a sweep held is the highest
step below which every step held: a step that held above one that failed is luck, not
capacity.
"""
from __future__ import annotations

from typing import Any, Callable

from tqdm import tqdm

from .loadgen import OPS, GeneratorPool, Step

P99_TARGET_MS = 10.0
ERROR_BUDGET = 0.001  # errors, fallbacks and unanswered requests, as a share of those sent
STOP_AFTER_FAILURES = 2
KIND_OF_OP = {"decide": "decide", "stream": "event", "batch": "event", "ingest": "event"}


def holds(result: dict[str, Any], kind: str, p99_target_ms: float = P99_TARGET_MS) -> bool:
    stats = result["kinds"].get(kind)
    if not stats or not stats["count"]:
        return False
    return stats["p99_ms"] <= p99_target_ms and within_budget(result, kind)


def within_budget(result: dict[str, Any], kind: str) -> bool:
    """At most ERROR_BUDGET of what the step sent failed, fell back or went unanswered."""
    return failed(result, kind) <= ERROR_BUDGET * result["sent"]


def unanswered(result: dict[str, Any], kind: str | None = None) -> int:
    """Requests that got no answer at all (not even an error) before the step ended: of
    `kind`, in a step of that kind alone, or of every kind. The generators count what they
    sent, not of which kind: a kind of a mixed step has no such figure (ValueError)."""
    if kind is not None and len(OPS.get(result.get("op"), ())) > 1:
        raise ValueError(f"a {result['op']} step's unanswered {kind} requests are not "
                         "counted: only all its kinds' together")
    return max(result["sent"] - sum(s["count"] for s in _figures(result, kind)), 0)


def failed(result: dict[str, Any], kind: str | None = None) -> int:
    """Error statuses, fallbacks and requests never answered: of `kind`, in a step of that
    kind alone (ValueError for a mixed step's: see unanswered), or of every kind."""
    refused = sum(sum(s["errors"].values()) + s["fallbacks"] for s in _figures(result, kind))
    return refused + unanswered(result, kind)


def _figures(result: dict[str, Any], kind: str | None) -> list[dict[str, Any]]:
    """The step's figures of `kind` (none when nothing of it came back: a kind is in a step's
    result only if something of it was answered), or of every kind."""
    kinds = result["kinds"]
    if kind is None:
        return list(kinds.values())
    return [kinds[kind]] if kind in kinds else []


def sweep(pool: GeneratorPool, system: str, make_step: Callable[[float], Step],
          rates: tuple[float, ...], after: Callable[[dict[str, Any]], None] | None = None
          ) -> dict[str, Any]:
    """Run the ladder; the steps and the highest rate that held (0 if none did). `after`
    is given each step's result once its measured window has closed (the system's work the
    step deferred is settled there, before the next step's window)."""
    steps = []
    failures = 0
    with tqdm(rates, desc=f"{system} {make_step(rates[0]).op}", unit="step",
              leave=False) as bar:
        for rate in bar:
            step = make_step(rate)
            result = pool.run(step)
            result["holds"] = holds(result, KIND_OF_OP[step.op])
            if after is not None:
                after(result)
            steps.append(result)
            stats = result["kinds"].get(KIND_OF_OP[step.op], {})
            bar.set_postfix_str(f"{rate:.0f}/s p99 {stats.get('p99_ms', float('nan')):.1f} ms")
            failures = 0 if result["holds"] else failures + 1
            if failures >= STOP_AFTER_FAILURES:
                break
    result = {"op": steps[0]["op"], "kind": KIND_OF_OP[steps[0]["op"]], "steps": steps}
    return {**result, "max_rate_held": rate_held(result, intended=True)}


def held_steps(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep's steps, by rate, up to the first that did not hold."""
    held = []
    for step in sorted(result["steps"], key=lambda s: s["rate_target"]):
        if not step["holds"]:
            break
        held.append(step)
    return held


def rate_held(result: dict[str, Any], intended: bool = False) -> float:
    """The rate of the highest step below which every step held (0 if the first did not):
    the rate it was sent at if `intended`, else the rate served in it (fallbacks left out)."""
    held = held_steps(result)
    if not held:
        return 0.0
    best = held[-1]
    return best["rate_target"] if intended else served_rate(best, result["kind"])


def headline_step(result: dict[str, Any]) -> dict[str, Any]:
    """The step that stands for a sweep: the highest it held (rate_held's), else its first."""
    held = held_steps(result)
    return held[-1] if held else result["steps"][0]


def served(step: dict[str, Any], kind: str) -> int:
    """The step's requests of `kind` answered without an error or a fallback."""
    stats = step["kinds"].get(kind)
    return stats["count"] - sum(stats["errors"].values()) - stats["fallbacks"] if stats else 0


def served_rate(step: dict[str, Any], kind: str) -> float:
    """Requests of `kind` served per second of the step's window (runs before the figure
    have the rate answered without an error, fallbacks included, which this scales)."""
    stats = step["kinds"].get(kind)
    if not stats:
        return 0.0
    if "served_rate" in stats:
        return stats["served_rate"]
    answered_ok = stats["count"] - sum(stats["errors"].values())
    return stats["rate"] * served(step, kind) / answered_ok if answered_ok else 0.0


def cpu_us_per_ok(step: dict[str, Any], kind: str) -> float | None:
    """Server CPU per request of `kind` served (`served`) in the window the CPU was counted
    over: what a request the system did serve cost it (per request answered, refusals,
    which cost less, would lower the figure the more the system refused). Unrounded: a
    target compares it. Runs before the window's own count divide by every request served,
    some after the window (an overloaded step's figure, under)."""
    stats = step["kinds"].get(kind, {})
    ok = stats.get("served_in_window", served(step, kind))
    spent = step.get("server_cpu_s")
    return spent / ok * 1e6 if spent is not None and ok > 0 else None


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The figures that stand for a sweep: its headline step's (no latency, where nothing of
    its kind came back)."""
    step = headline_step(result)
    stats = step["kinds"].get(result["kind"], {})
    return {"p50_ms": stats.get("p50_ms"), "p99_ms": stats.get("p99_ms"),
            "rate": served_rate(step, result["kind"]), "errors": failed(step, result["kind"]),
            # runs before the CPU figures have none (judged again, they are not measured)
            "cpu_us_per_request": step.get("cpu_us_per_request"),
            "generator_cpu_us_per_request": step.get("generator_cpu_us_per_request"),
            "max_rate_held": rate_held(result, intended=True),
            "at_rate_target": step["rate_target"]}
