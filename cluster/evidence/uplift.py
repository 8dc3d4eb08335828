"""The models' uplift over the control group, from a decision log.

A channel with a control share (catalog: `channels.<name>.control`) holds back that share of
its decisions at random: each shows one eligible action drawn uniformly instead of the models'
choice (`DecisionRecord.control`). Since the draw is random, the held-back decisions measure
what the channel earns without the models, and the difference is what they add:

- per channel (and placement): the accept rate and the value per decision of the models'
  decisions against the control's, their difference (the uplift) and its 95 % confidence
  interval (two independent means, normal approximation with unequal variances);
- per action on a channel: its accept rate when the models chose to show it against when the
  control drew it: how much better the models pick whom to show it to (targeting).

Rewards are replay's: the first shown action's accept (ACCEPT or CONVERT) and the conversion
values it reported. A fallback decision (nothing scored it, selection 0) belongs to neither
group. An uplift needs decisions in both groups; with fewer than two in either its interval
is unknown (NaN) and the report says so.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from kairos.cluster.evidence.estimators import Z95
from kairos.cluster.evidence.records import DecisionRecord
from kairos.cluster.evidence.replay import NOTHING, rewards

REWARDS = ("accept", "value")


@dataclass(frozen=True)
class Difference:
    """Mean of the models' decisions minus mean of the control's, with its 95 % interval."""

    models: float
    control: float
    uplift: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"models": self.models, "control": self.control, "uplift": self.uplift,
                "low": self.low, "high": self.high}


def difference(models: np.ndarray, control: np.ndarray) -> Difference:
    m = float(np.mean(models)) if len(models) else math.nan
    c = float(np.mean(control)) if len(control) else math.nan
    if len(models) < 2 or len(control) < 2:
        return Difference(m, c, m - c, math.nan, math.nan)
    se = math.sqrt(float(np.var(models, ddof=1)) / len(models)
                   + float(np.var(control, ddof=1)) / len(control))
    return Difference(m, c, m - c, m - c - Z95 * se, m - c + Z95 * se)


def uplift(records: Iterable[DecisionRecord]) -> dict[str, Any]:
    """The uplift report as a JSON-ready dict (see the module's docstring)."""
    # channel/placement -> group -> [(action, accept, value)]
    groups: dict[str, dict[bool, list[tuple[str, float, float]]]] = \
        defaultdict(lambda: {False: [], True: []})
    fallbacks = 0
    for record in records:
        action, selection, accept, value = rewards(record)
        if not selection > 0.0:
            fallbacks += 1
            continue
        groups[f"{record.channel}/{record.placement}"][record.control].append(
            (action, accept, value))
    channels = {}
    for where, by_group in sorted(groups.items()):
        models, control = by_group[False], by_group[True]
        channels[where] = {
            "decisions": len(models), "control_decisions": len(control),
            **{reward: difference(_column(models, i), _column(control, i)).to_json()
               for i, reward in enumerate(REWARDS, start=1)},
            "actions": _by_action(models, control)}
    return {"channels": channels, "fallbacks_left_out": fallbacks}


def _by_action(models: list[tuple[str, float, float]], control: list[tuple[str, float, float]]
               ) -> dict[str, Any]:
    """Per action shown first: its accept rate when the models chose it against when the
    control drew it."""
    shown: dict[str, dict[bool, list[tuple[str, float, float]]]] = \
        defaultdict(lambda: {False: [], True: []})
    for held, rows in ((False, models), (True, control)):
        for row in rows:
            if row[0] != NOTHING:
                shown[row[0]][held].append(row)
    return {action: {"shown_by_models": len(by[False]), "drawn_by_control": len(by[True]),
                     "accept": difference(_column(by[False], 1), _column(by[True], 1)).to_json()}
            for action, by in sorted(shown.items())}


def _column(rows: list[tuple[str, float, float]], i: int) -> np.ndarray:
    return np.array([row[i] for row in rows], float)


def table(report: dict[str, Any]) -> str:
    """The report as Markdown: a row per channel, then a row per action."""
    lines = ["| channel | decisions (control) | accept: models | control | uplift (95 % CI) "
             "| value/decision uplift (95 % CI) |", "|---|---:|---:|---:|---:|---:|"]
    for where, c in report["channels"].items():
        a, v = c["accept"], c["value"]
        lines.append(f"| {where} | {c['decisions']:,} ({c['control_decisions']:,}) "
                     f"| {a['models']:.3f} | {a['control']:.3f} | {_ci(a)} | {_ci(v)} |")
    lines += ["", "| channel | action | shown by models (drawn by control) | accept: models "
              "| control | targeting uplift (95 % CI) |", "|---|---|---:|---:|---:|---:|"]
    for where, c in report["channels"].items():
        for action, s in c["actions"].items():
            a = s["accept"]
            lines.append(f"| {where} | {action} | {s['shown_by_models']:,} "
                         f"({s['drawn_by_control']:,}) | {a['models']:.3f} | {a['control']:.3f} "
                         f"| {_ci(a)} |")
    return "\n".join(lines)


def _ci(d: dict[str, float]) -> str:
    if math.isnan(d["low"]):
        return f"{d['uplift']:+.3f} (too few decisions)"
    return f"{d['uplift']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f})"
