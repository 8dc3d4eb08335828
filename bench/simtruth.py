"""The truth a replay of the simulator's decision log is checked against.

For every decision the sessions made, the world knows what each action was truly worth to
that customer, then (acceptance × value, with the drift if it had come): so it knows the true
value of what Kairos showed and of what any other policy would have shown on the same
contexts. The candidate (world.candidate_catalog: a fixed rule on the base actions, no
exploration, no learning) is decided here through the core's engine, once per context, and
its true value is the mean, over the run's decisions, of what its choice was worth.

Written beside the report: <run>-candidate.yaml (the candidate), <run>-truth.jsonl.gz (one
line per decision: its id, customer, channel, device, phase, what was shown, what each action
was worth, the candidate's choice) and the figures in the report's `truth_check`.
`of_log(records, table)` takes the records `kairos log export` writes for the same run and
gives the truth on exactly those: the number an off-policy estimate of the candidate from that
log must come near.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from kairos.cluster.evidence.evaluation import evaluate
from kairos.cluster.evidence.records import DecisionRecord
from kairos.cluster.evidence.replay import for_replay, replay
from kairos.core.catalog import load_catalog
from kairos.core.compiler import compiled_from_text
from kairos.core.engine import DecisionEngine

from .world import (ACTIONS, CHANNELS, Population, candidate_catalog, customer_id,
                    expected_rewards)

T0 = 1_800_000_000.0  # the candidate engine's clock (no rule reads time)


@dataclass
class Truth:
    decision_ids: list[str]
    customers: np.ndarray
    web: np.ndarray
    mobile: np.ndarray
    drifted: np.ndarray
    launched: np.ndarray
    shown: np.ndarray  # index into ACTIONS, -1: nothing
    control: np.ndarray
    rewards: np.ndarray  # (decisions, actions): true acceptance × value
    candidate: np.ndarray  # the candidate's choice, index into ACTIONS (-1: nothing)

    @staticmethod
    def of_run(run: dict[str, Any]) -> "Truth":
        rows, population = run["rows"], run["population"]
        customers, web, mobile = (np.array(rows.customer, int), np.array(rows.web, bool),
                                  np.array(rows.mobile, bool))
        drifted = np.array(rows.drifted, bool)
        return Truth(list(rows.decision_id), customers, web, mobile, drifted,
                     np.array(rows.launched, bool), np.array(rows.shown, int),
                     np.array(rows.control, bool),
                     expected_rewards(population, customers, web, mobile, drifted),
                     candidate_choices(population, customers, web, mobile))

    def worth(self, choice: np.ndarray) -> np.ndarray:
        """What each decision's `choice` (index into ACTIONS, -1: nothing) was truly worth."""
        taken = self.rewards[np.arange(len(choice)), np.maximum(choice, 0)]
        return np.where(choice >= 0, taken, 0.0)

    def figures(self) -> dict[str, Any]:
        """The candidate's and the logging policy's true value per decision, over the run and
        per phase (before the drift, after it, after the launch)."""
        phases = {"all": np.ones(len(self.shown), bool), "before_drift": ~self.drifted,
                  "after_drift": self.drifted & ~self.launched, "after_launch": self.launched}
        candidate, logged = self.worth(self.candidate), self.worth(self.shown)
        return {"decisions": len(self.shown), "candidate": "<run>-candidate.yaml",
                **{name: {"decisions": int(m.sum()),
                          "candidate_true_value": _mean(candidate[m]),
                          "logged_true_value": _mean(logged[m])}
                   for name, m in phases.items()}}

    def write(self, base: Path) -> None:
        base.with_name(base.name + "-candidate.yaml").write_text(candidate_catalog(),
                                                                 encoding="utf-8")
        with gzip.open(base.with_name(base.name + "-truth.jsonl.gz"), "wt",
                       encoding="utf-8") as out:
            for line in self.lines():
                out.write(json.dumps(line, separators=(",", ":")) + "\n")

    def lines(self) -> Iterable[dict[str, Any]]:
        for k, decision_id in enumerate(self.decision_ids):
            yield {"decision_id": decision_id, "customer_id": customer_id(self.customers[k]),
                   "channel": "web" if self.web[k] else "app",
                   "device": "mobile" if self.mobile[k] else "desktop",
                   "drifted": bool(self.drifted[k]), "launched": bool(self.launched[k]),
                   "shown": _name(self.shown[k]), "control": bool(self.control[k]),
                   "worth": {a: round(float(v), 6) for a, v in zip(ACTIONS, self.rewards[k])},
                   "candidate": _name(self.candidate[k])}


def candidate_choices(population: Population, customers: np.ndarray, web: np.ndarray,
                      mobile: np.ndarray) -> np.ndarray:
    """The candidate's first action for each decision's context (index into ACTIONS, -1:
    nothing), decided once per distinct (customer, channel, device) by the core's engine on
    the customer's profile event."""
    engine = DecisionEngine(compiled_from_text(candidate_catalog(), "candidate"),
                            capacity=max(len(set(customers.tolist())), 1))
    chosen: dict[tuple[int, bool, bool], int] = {}
    out = np.empty(len(customers), int)
    for k, key in enumerate(zip(customers.tolist(), web.tolist(), mobile.tolist())):
        if key not in chosen:
            i, on_web, on_mobile = key
            cid = customer_id(i)
            engine.apply([engine.encode_event(cid, "profile", T0, population.profile(i))])
            channel = "web" if on_web else "app"
            decision = engine.decide(cid, channel, CHANNELS[channel],
                                     {"device": "mobile" if on_mobile else "desktop"},
                                     now=T0 + 1)
            chosen[key] = ACTIONS.index(decision.actions[0].action_id) \
                if decision.actions else -1
        out[k] = chosen[key]
    return out


def read_table(path: Path) -> dict[str, dict[str, Any]]:
    """A run's <run>-truth.jsonl.gz, by decision id."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return {row["decision_id"]: row for row in map(json.loads, lines)}


def of_log(records: Iterable[DecisionRecord], table: dict[str, dict[str, Any]]
           ) -> dict[str, Any]:
    """The truth on a decision log of the run (`kairos log export`'s records): over the
    records the run's truth table knows, what the candidate's choices and what the logged
    policy's showings were truly worth, per decision, and the log's realised reward (the
    values its outcomes carried), which should come near the logged true value."""
    matched = candidate = logged = realised = 0.0
    unknown = 0
    for record in records:
        row = table.get(record.decision_id)
        if row is None:
            unknown += 1
            continue
        matched += 1
        worth = row["worth"]
        candidate += worth.get(row["candidate"], 0.0) if row["candidate"] else 0.0
        first = min(record.shown, key=lambda s: s.slot).action_id if record.shown else None
        logged += worth.get(first, 0.0) if first else 0.0
        realised += sum(o.value for o in record.outcomes if o.action_id == first)
    n = max(matched, 1.0)
    return {"records": int(matched), "unknown_records": unknown,
            "candidate_true_value": candidate / n, "logged_true_value": logged / n,
            "logged_realised_value": realised / n}


def replay_check(records: list[DecisionRecord], truth: Truth) -> dict[str, Any]:
    """The run's exported decision log replayed through the candidate (`kairos replay`'s
    code): its off-policy estimates of the candidate's value per decision against the
    candidate's true value on exactly those records, and whether each 95 % interval covers
    it. The candidate has no exploration, so one re-decision gives its choice exactly."""
    table = {row["decision_id"]: row for row in truth.lines()}
    known = of_log(records, table)
    replayed = list(replay(records, for_replay(load_catalog(candidate_catalog(), "candidate")),
                           samples=1))
    evidence = evaluate(replayed)
    true = known["candidate_true_value"]
    estimates = {name: {**e, "covers_truth": e["low"] <= true <= e["high"]}
                 for name, e in evidence["estimates"].get("value", {}).items()}
    return {**known, "exported": len(records), "evaluated": evidence["evaluated"],
            "ess": evidence["overlap"].get("ess"), "warnings": evidence["overlap"]["warnings"],
            "estimates": estimates}


def _name(index: int) -> str | None:
    return ACTIONS[index] if index >= 0 else None


def _mean(values: np.ndarray) -> float | None:
    return round(float(values.mean()), 4) if len(values) else None
