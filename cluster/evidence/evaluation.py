"""From replayed decisions to the evidence for a candidate: where it decides differently, what
it would earn (IPS, SNIPS, doubly robust, for the accept rate and the value per decision) and
how far the log supports that (overlap).

A record whose logged selection is not a probability above 0 (a fallback decision, which
nothing scored, a log written without them, or a damaged one) cannot weigh the candidate's
choice: it is left out and counted; so is a decision pushed to a watch, which was logged
because its best action changed, with a probability the log does not know. "Differs" is the
probability that the candidate shows another action first: 1 - pi(logged action | x),
averaged by channel and by the logged action.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any, Sequence

import numpy as np

from kairos.cluster.evidence import estimators, report
from kairos.cluster.evidence.replay import NOTHING, Replayed

# Overlap: an action the candidate shows first in at least RARE_CANDIDATE_SHARE of decisions
# while the log showed it first in fewer than RARE_LOGGED_COUNT (or RARE_LOGGED_SHARE) of them
# is one the log can hardly judge; a logged selection under LOW_SELECTION makes a weight of
# more than 1 / LOW_SELECTION; an effective sample size under LOW_ESS_SHARE of the records
# means a few decisions carry the estimate.
RARE_CANDIDATE_SHARE = 0.01
RARE_LOGGED_COUNT = 10
RARE_LOGGED_SHARE = 0.01
LOW_SELECTION = 0.02
LOW_ESS_SHARE = 0.1
# the candidate's mass the log cannot see (estimators.unseen_mass) over which it is warned of
UNSEEN_MASS = 0.05
FEW_POSITIVES = 10  # logged decisions that earned a reward, under which it is warned of
REWARDS = ("accept", "value")
MAX_EXAMPLES = 5  # refused requests quoted in the report
MAX_INPUTS = 256  # input names the direct method reads: the most frequent (_features)


def evaluate(replayed: Sequence[Replayed], seed: int = 0) -> dict[str, Any]:
    """The evidence as a JSON-ready dict (see the module's docstring and report.py)."""
    answered = [r for r in replayed if not r.pushed]
    usable = [r for r in answered if 0.0 < r.selection <= 1.0]  # NaN is not
    refused = [r for r in replayed if r.refused]
    result: dict[str, Any] = {
        "logged_catalogs": sorted({r.catalog_version for r in replayed}),
        "records": len(replayed), "evaluated": len(usable),
        "excluded_no_selection": len(answered) - len(usable),
        "excluded_pushes": len(replayed) - len(answered),
        "refused": {"count": len(refused),
                    "examples": sorted({r.refused for r in refused})[:MAX_EXAMPLES]},
        "differs": _differences(usable), "shares": _shares(usable)}
    shares = result["shares"]
    if not usable:
        result["logged"] = {reward: math.nan for reward in REWARDS}
        result["estimates"] = {}
        result["warnings"] = []
        result["overlap"] = {"warnings": ["no logged decision with a selection probability"]}
        return result
    n = len(usable)
    names = sorted({a for r in usable for a in r.candidate} | {r.logged for r in usable})
    index = {name: a for a, name in enumerate(names)}
    # the candidate's probabilities as (record, action, pi) entries, not a records x actions
    # matrix: a record has at most `samples` of them, and a catalog may have 10,000 actions
    records = np.repeat(np.arange(n), [len(r.candidate) for r in usable])
    shown = np.array([index[a] for r in usable for a in r.candidate], np.int64)
    pi = np.array([p for r in usable for p in r.candidate.values()], float)
    logged = np.array([index[r.logged] for r in usable])
    mu = np.array([r.selection for r in usable])
    weights = np.array([r.candidate.get(r.logged, 0.0) for r in usable]) / mu
    seen = _seen(weights, usable)
    features, inputs = _features(usable)
    clusters = estimators.clusters([r.customer for r in usable])
    # the direct method's pairs: each record's logged action, then the candidate's entries
    pairs = np.concatenate([np.arange(n), records]), np.concatenate([logged, shown])
    result["logged"] = {}
    result["estimates"] = {}
    for reward in REWARDS:
        y = np.array([getattr(r, reward) for r in usable])
        model = estimators.direct_method(features, logged, y, seed)
        q = model.predict(*pairs)
        if NOTHING in index:
            q[pairs[1] == index[NOTHING]] = 0.0  # showing nothing earns nothing: no model needed
        result["logged"][reward] = float(np.mean(y))
        given = {"binary": reward == "accept", "clusters": clusters, "seen": seen,
                 "largest": _largest_value(usable) if reward == "value" else None}
        result["estimates"][reward] = {
            "ips": estimators.ips(weights, y, **given).to_json(),
            "snips": estimators.snips(weights, y, **given).to_json(),
            "dr": {**estimators.doubly_robust(
                weights, y, q[:n], np.bincount(records, pi * q[n:], minlength=n),
                **given).to_json(), "model_fallbacks": model.failed}}
    result["overlap"] = _overlap(shares, weights, seen, mu)
    # not the overlap's: the refused requests are said once, apart (report.refusals)
    result["warnings"] = _few_positives(usable, replayed) + _model_fallbacks(result) + \
        _inputs_left_out(*inputs) + _values_read(usable) + _read_at_default(usable) + \
        _few_customers(clusters)
    return result


def _largest_value(usable: Sequence[Replayed]) -> float | None:
    """The largest value the unseen mass may earn (estimators.py): the log's largest read
    through the candidate's bound (replay.py), which the unseen mass may pass. A value read as
    reported (an action the candidate does not value, a refused request) is left out: one
    hostile convert of 1e12 raised every value interval's upper bound to 4.8e11. None (the
    largest of all, estimators.py) when no value was read through a bound: the estimates are
    then all read as reported, which the report warns of, and have no other scale."""
    bounded = [r.value for r in usable if not math.isnan(r.value_bound)]
    return max(bounded) if bounded else None


def _few_customers(clusters: np.ndarray) -> list[str]:
    """A log of one customer: its decisions share it, and with no second one the intervals
    cannot be clustered by customer (estimators.py), so they take them as independent."""
    if estimators.customers(clusters, len(clusters)) >= 2:
        return []
    return ["too few customers: every evaluated decision is one customer's, so the intervals "
            "take them as independent and are likely too narrow"]


def _model_fallbacks(result: dict[str, Any]) -> list[str]:
    """Fits of the doubly robust estimate's reward model that failed numerically (inputs near
    the largest float) and predict their training records' mean instead (estimators.py)."""
    return [f"the doubly robust {report.REWARD_NAMES[reward]}'s reward model failed "
            f"numerically in {n} fit(s) (inputs near the largest number?): those predict the "
            f"mean reward" for reward, e in result["estimates"].items()
            if (n := e["dr"]["model_fallbacks"])]


def _values_read(usable: Sequence[Replayed]) -> list[str]:
    """Conversion values read at the candidate's bound, and those it has none for (replay.py):
    either may be what a hostile or buggy caller reported."""
    clipped = sum(r.clipped for r in usable)
    unbounded = sum(r.value > 0 and math.isnan(r.value_bound) for r in usable)
    return ([f"{clipped} conversion value(s) above the candidate's bound (models.value."
             f"max_ratio x the action's value in the decision) are read at it, as its models "
             f"would learn them"] if clipped else []) + \
        ([f"{unbounded} conversion value(s) are read as reported: the candidate does not "
          f"value their action in their decision, so its models would learn none of them"]
         if unbounded else [])


def _read_at_default(usable: Sequence[Replayed]) -> list[str]:
    """The candidate's slots the log's profiles hold no value of their meaning for (replay.py):
    the decisions replayed read their defaults, so a rule or model reading one judged no
    customer by it (a type changed from a segment's string to a number showed a candidate's
    offer to none of them, unwarned)."""
    counts = Counter(slot for r in usable for slot in r.defaults)
    return [f"{slot}: the log's profiles hold no value of this meaning (the logging catalog "
            f"lacks the slot, or its type or definition changed); {k} of the {len(usable)} "
            f"evaluated decisions saw its default" for slot, k in sorted(counts.items())]


def _few_positives(usable: Sequence[Replayed], replayed: Sequence[Replayed]) -> list[str]:
    """A reward that few logged decisions earned: its estimates rest on those few (the accept
    rate's interval on Wilson's, estimators.py; the value's normal one may be far too narrow).
    A log in which no decision reported a conversion value is one without values: the value
    is not warned of there."""
    earned = {"accept": "were accepted", "value": "reported a conversion value"}
    counts = {reward: sum(getattr(r, reward) > 0 for r in usable) for reward in REWARDS}
    if not any(r.value > 0 for r in replayed):
        del counts["value"]
    return [f"only {n} of the {len(usable)} evaluated decisions {earned[reward]}: the "
            f"{report.REWARD_NAMES[reward]}'s estimates rest on too few of them"
            for reward, n in counts.items() if n < FEW_POSITIVES]


def _features(usable: Sequence[Replayed]) -> tuple[np.ndarray, tuple[int, int]]:
    """The logged decisions' model inputs, one column per name among the MAX_INPUTS that the
    most of them have (0 when a decision lacks it or it was not a number), and how many names
    the log has and how many were left out: a fit of the direct method costs up to the cube
    of the inputs' count (a log of 4,000 decisions with 1,000 input names took 28.7 s)."""
    counts = Counter(name for r in usable for name in r.inputs)
    kept = sorted(sorted(counts, key=lambda name: (-counts[name], name))[:MAX_INPUTS])
    column = {name: j for j, name in enumerate(kept)}
    x = np.zeros((len(usable), len(kept)))
    for i, r in enumerate(usable):
        for name, value in r.inputs.items():
            if name in column:
                x[i, column[name]] = value
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), (len(counts), len(counts) - len(kept))


def _inputs_left_out(names: int, left_out: int) -> list[str]:
    """The input names the direct method does not read (_features), said with their count."""
    if not left_out:
        return []
    return [f"the logged decisions have {names} input names: the doubly robust estimates' "
            f"reward model reads the {MAX_INPUTS} that the most decisions have, and leaves "
            f"{left_out} out"]


def _differences(usable: Sequence[Replayed]) -> dict[str, Any]:
    def summary(group: list[Replayed]) -> dict[str, float]:
        return {"decisions": len(group),
                "differs": float(np.mean([1.0 - r.candidate.get(r.logged, 0.0) for r in group]))}
    by_channel, by_action = defaultdict(list), defaultdict(list)
    for r in usable:
        by_channel[f"{r.channel}/{r.placement}"].append(r)
        by_action[r.logged].append(r)
    return {"overall": summary(list(usable))["differs"] if usable else math.nan,
            "by_channel": {k: summary(v) for k, v in sorted(by_channel.items())},
            "by_logged_action": {k: summary(v) for k, v in sorted(by_action.items())}}


def _shares(usable: Sequence[Replayed]) -> dict[str, dict[str, float]]:
    """Each action's share of first slots: in the log and, in expectation, the candidate's."""
    n = max(len(usable), 1)
    logged = Counter(r.logged for r in usable)
    candidate: Counter[str] = Counter()
    for r in usable:
        candidate.update(r.candidate)
    return {a: {"logged": logged[a] / n, "logged_count": logged[a], "candidate": candidate[a] / n}
            for a in sorted(set(logged) | set(candidate))}


def _seen(weights: np.ndarray, usable: Sequence[Replayed]) -> np.ndarray:
    """Each record's candidate mass the log sees (estimators.py): its weight where the log
    showed something, plus the candidate's probability of showing nothing, which earns 0
    wherever it is shown: known without the log showing it."""
    return np.where([r.logged == NOTHING for r in usable], 0.0, weights) + \
        np.array([r.candidate.get(NOTHING, 0.0) for r in usable])


def _overlap(shares: dict[str, dict[str, float]], weights: np.ndarray, seen: np.ndarray,
             mu: np.ndarray) -> dict[str, Any]:
    n = len(weights)
    rare = [{"action": a, **s} for a, s in shares.items() if a != NOTHING
            and s["candidate"] >= RARE_CANDIDATE_SHARE
            and (s["logged_count"] < RARE_LOGGED_COUNT or s["logged"] < RARE_LOGGED_SHARE)]
    total = float(np.sum(weights))
    low = float(np.sum(weights[mu < LOW_SELECTION])) / total if total > 0 else 0.0
    ess = estimators.effective_sample_size(weights)
    warnings = [f"the candidate shows {a['action']} first in {a['candidate']:.1%} of decisions; "
                f"the log showed it first {a['logged_count']} times ({a['logged']:.1%}): "
                f"its estimates rest on too few of them" for a in rare]
    if low > 0.1:
        warnings.append(f"{low:.0%} of the importance weight comes from decisions the log made "
                        f"with a selection under {LOW_SELECTION:g}")
    unseen = estimators.unseen_mass(seen)
    if unseen > UNSEEN_MASS:
        warnings.append(f"the log may not have seen {unseen:.0%} of what the candidate would "
                        f"show: it sees {float(np.mean(seen)):.0%} of its mass (the mean "
                        f"importance weight, with its share of showing nothing; 1 where the "
                        f"log explores all it would show), so what the candidate would show "
                        f"the log may never have shown in that context (or its logged "
                        f"probabilities are misstated), and the intervals are widened by it")
    if ess < LOW_ESS_SHARE * n:
        warnings.append(f"effective sample size {ess:.0f} of {n} decisions: a few decisions "
                        f"carry the estimates")
    return {"ess": ess, "ess_share": ess / n, "rare_actions": rare,
            "rare_mass": float(sum(a["candidate"] for a in rare)),
            "low_selection_weight": low, "unseen_mass": unseen,
            "max_weight": float(np.max(weights)), "warnings": warnings}
