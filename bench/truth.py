"""Known truth for off-policy evaluation: decision logs whose candidate policy's value is known.

A synthetic world: customers with a segment and a score (profile attributes, set by one
`profile` event) ask for a decision on web or app with a device in the context; each action has
a hidden true acceptance probability, a logistic function of those features (`WORLD`), and a
conversion value. The logging policy is Kairos itself: a DecisionEngine with `logging_catalog()`
(Thompson sampling, so the logged selection is below 1) decides for each customer, learning
online from the outcomes drawn from the truth, and every decision becomes a
`DecisionRecord` exactly as the decision log writes them (the profile as a one-customer block
from `blocks.export_block`, the shown actions with the kernel's selection probabilities, the
outcome joined). The candidate, `candidate_catalog()`, has other levers, priors and an
eligibility rule; it does not learn (replay decides with the catalog's priors).

Its true value is what it earns under the truth on the same contexts: for each logged context,
the mean over `truth_samples` of the candidate's own decisions (through the public
`DecisionEngine.decide_many`, on a profile rebuilt from the customer's event, not from the
logged block) of the true acceptance probability, and value, of the action it shows first.

    python -m bench.truth --seed 1 --n 2000 --out /tmp/truth   # writes log.jsonl and
                                                               # candidate.yaml, prints truth
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kairos.cluster.evidence.records import DecisionRecord, OutcomeRecord, ShownAction, \
    write_jsonl
from kairos.cluster.evidence.replay import for_replay
from kairos.cluster.storage.blocks import export_block, pack
from kairos.core.catalog import load_catalog
from kairos.core.compiler import compiled_from_text
from kairos.core.engine import DecisionEngine

T0 = 1_800_000_000.0  # the first decision's time (2027-01-15)
CHANNELS = {"web": "hero", "app": "home"}  # one placement of one slot each
WEB_SHARE = 0.6
# action: (true logit coefficients on [1, score, segment b, segment c, mobile], value of a
# conversion, channels)
WORLD: dict[str, tuple[tuple[float, ...], float, tuple[str, ...]]] = {
    "discount": ((-1.5, 1.0, 0.5, -0.5, 0.3), 5.0, ("web", "app")),
    "upgrade": ((-2.0, 1.2, -0.5, 0.8, -0.4), 6.0, ("web", "app")),
    "content": ((-0.5, -0.5, 0.2, 0.0, 0.6), 3.0, ("web", "app")),
    "care": ((-1.0, 0.0, -0.3, 0.5, 0.0), 4.0, ("web",)),
}
ACTIONS = tuple(WORLD)


def _catalog(name: str, version: str, levers: dict[str, float], eligibility: dict[str, str],
             prior: dict[str, Any], group_priors: dict[str, dict[str, float]],
             variance_scale: float) -> str:
    actions = []
    for action, (_, value, channels) in WORLD.items():
        spec: dict[str, Any] = {
            "id": action, "group": action, "purpose": "service", "value": value,
            "channels": {ch: {"treatment": f"{action}_{ch}"} for ch in channels}}
        if action in levers:
            spec["lever"] = levers[action]
        if action in eligibility:
            spec["eligibility"] = eligibility[action]
        actions.append(spec)
    doc = {
        "kairos_catalog": 1, "name": name, "version": version,
        "channels": {ch: {"placements": {pl: {"top_k": 1}}} for ch, pl in CHANNELS.items()},
        "context": {"device": {"type": "string", "values": ["desktop", "mobile"]}},
        "events": {"profile": {"fields": {
            "segment": {"type": "string", "values": ["a", "b", "c"]},
            "score": {"type": "float", "min": 0, "max": 10}}}},
        "attributes": {
            "segment": {"type": "string", "values": ["a", "b", "c"], "default": "a",
                        "from": {"event": "profile", "field": "segment"}},
            "score": {"type": "float", "default": 0,
                      "from": {"event": "profile", "field": "score"}}},
        "consent": {"service": True},
        "actions": actions,
        "arbitration": {"exploration": {"method": "thompson", "variance_scale": variance_scale}},
        "models": {"predictors": [{"name": "score"},
                                  {"name": "segment", "equals": "b"},
                                  {"name": "segment", "equals": "c"},
                                  {"name": "device", "source": "context", "equals": "mobile"}],
                   "prior": prior, "groups": group_priors},
        "fallbacks": {ch: [] for ch in CHANNELS}}
    return yaml.safe_dump(doc, sort_keys=False)


def logging_catalog() -> str:
    """What decided the log: uninformed priors, wide Thompson draws, learning online."""
    return _catalog("truth-logging", "log-1", {}, {},
                    {"base_rate": 0.15, "precision": 1.0, "predictor_precision": 1.0}, {}, 10.0)


def candidate_catalog() -> str:
    """The policy under evaluation: upgrades weighed down, no discount for segment c, and
    priors that believe content and care are accepted more; Thompson draws around them."""
    return _catalog("truth-candidate", "cand-1", {"upgrade": 0.5, "content": 1.5},
                    {"discount": "segment != 'c'"},
                    {"base_rate": 0.15, "precision": 4.0, "predictor_precision": 4.0},
                    {"content": {"base_rate": 0.2}, "care": {"base_rate": 0.2}}, 1.0)


@dataclass(frozen=True)
class Customer:
    customer_id: str
    segment: str
    score: float
    device: str
    channel: str

    def features(self) -> np.ndarray:
        return np.array([1.0, self.score, self.segment == "b", self.segment == "c",
                         self.device == "mobile"], float)


def true_accept(action: str, customer: Customer) -> float:
    coefficients, _, channels = WORLD[action]
    if customer.channel not in channels:
        return 0.0
    return 1.0 / (1.0 + math.exp(-float(np.dot(coefficients, customer.features()))))


def true_value(action: str, customer: Customer) -> float:
    return true_accept(action, customer) * WORLD[action][1]


def customers(rng: np.random.Generator, n: int) -> list[Customer]:
    return [Customer(f"c{i}", str(rng.choice(["a", "b", "c"])), float(rng.uniform(0, 2)),
                     "mobile" if rng.random() < 0.5 else "desktop",
                     "web" if rng.random() < WEB_SHARE else "app") for i in range(n)]


def _profile(engine: DecisionEngine, customer: Customer, when: float) -> None:
    engine.apply([engine.encode_event(customer.customer_id, "profile", when,
                                      {"segment": customer.segment, "score": customer.score})])


def log(seed: int, population: list[Customer], learn: bool = True,
        catalog_text: str | None = None) -> list[DecisionRecord]:
    """The logging policy (`logging_catalog()` unless given) decides once for each customer,
    in order, and learns from the outcome the truth draws (unless `learn` is off: it then
    decides with its priors throughout); the decision records, outcomes joined."""
    rng = np.random.default_rng([seed, 1])
    compiled = compiled_from_text(catalog_text or logging_catalog(), "truth-logging")
    engine = DecisionEngine(compiled, seed=seed)
    names = compiled.predictor_names[1:]  # the intercept is no input
    records = []
    for i, customer in enumerate(population):
        now = T0 + i
        _profile(engine, customer, now - 1)
        context = {"device": customer.device}
        decision = engine.decide(customer.customer_id, customer.channel,
                                 CHANNELS[customer.channel], context, now=now, explain=True)
        inputs = dict(zip(names, engine.workspace.predictors[0, 1:].tolist()))
        block = pack(export_block(engine, [customer.customer_id]))
        outcomes = []
        for ranked in decision.actions:
            accepted = rng.random() < true_accept(ranked.action_id, customer)
            value = WORLD[ranked.action_id][1] if accepted else 0.0
            outcome = "convert" if accepted else "reject"
            if learn:
                engine.record_outcomes([(customer.customer_id, ranked.action_id,
                                         customer.channel, outcome, now + 1,
                                         decision.decision_id, value if accepted else None)])
            outcomes.append(OutcomeRecord(decision.decision_id, customer.customer_id,
                                          ranked.action_id, outcome.upper(), value, now + 1))
        dropped_by_rules = {d.action_id for d in decision.explanation.dropped
                            if d.reason not in ("RESTRAINT", "GROUP_LIMIT", "TOP_K")}
        records.append(DecisionRecord(
            decision.decision_id, now, customer.customer_id, customer.channel,
            CHANNELS[customer.channel], decision.catalog_version, decision.model_version,
            context, inputs, block,
            tuple(a for a in compiled.action_ids if a not in dropped_by_rules),
            tuple(ShownAction(r.action_id, slot, r.selection, r.propensity, r.priority)
                  for slot, r in enumerate(decision.actions)),
            control=decision.control, outcomes=tuple(outcomes)))
    return records


@dataclass(frozen=True)
class TrueValue:
    accept: float  # the candidate's expected accept rate per decision
    value: float  # its expected conversion value per decision


def candidate_truth(population: list[Customer], candidate_text: str, seed: int,
                    samples: int) -> TrueValue:
    """The candidate's expected reward under the truth on these customers, each decided
    `samples` times by the candidate (through its own engine, from the customer's event)."""
    engine = DecisionEngine(for_replay(load_catalog(candidate_text, "candidate")),
                            seed=seed + 10_007)
    accept = value = 0.0
    for i, customer in enumerate(population):
        _profile(engine, customer, T0 + i - 1)
        request = engine.encode_request(customer.customer_id, customer.channel,
                                        CHANNELS[customer.channel],
                                        {"device": customer.device}, T0 + i)
        for decision in engine.decide_encoded([request] * samples):
            if decision.actions:
                first = decision.actions[0].action_id
                accept += true_accept(first, customer)
                value += true_value(first, customer)
    n = len(population) * samples
    return TrueValue(accept / n, value / n)


def world(seed: int, n: int, truth_samples: int = 100,
          candidate_text: str | None = None) -> tuple[list[DecisionRecord], TrueValue]:
    """A log of n decisions and the candidate's true value on their contexts."""
    population = customers(np.random.default_rng([seed, 0]), n)
    candidate_text = candidate_text or candidate_catalog()
    return log(seed, population), candidate_truth(population, candidate_text, seed,
                                                  truth_samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    records, truth = world(args.seed, args.n)
    write_files(args.out, records)
    print(json.dumps({"records": len(records), "true_accept": truth.accept,
                      "true_value": truth.value}))


def write_files(folder: Path, records: list[DecisionRecord]) -> Path:
    """The log as log.jsonl, the catalogs as candidate.yaml and logging.yaml, in `folder`."""
    write_jsonl(records, folder / "log.jsonl")
    (folder / "candidate.yaml").write_text(candidate_catalog(), encoding="utf-8")
    (folder / "logging.yaml").write_text(logging_catalog(), encoding="utf-8")
    return folder


if __name__ == "__main__":
    main()
