"""The models' uplift over the control group, from a decision log.

A channel with a control share (catalog: `channels.<name>.control`) holds back that share of
its decisions at random: each shows one eligible action drawn uniformly instead of the models'
choice (`DecisionRecord.control`). Since the draw is random, the held-back decisions measure
what the channel earns without the models, and the difference is what they add:

- per channel (and placement): the accept rate and the value per decision of the models'
  decisions against the control's, their difference (the uplift) and its 95 % confidence
  interval;
- per action on a channel: its accept rate when the models chose to show it against when the
  control drew it: how much better the models pick whom to show it to (targeting).

Groups are compared within each catalog version (a stratum), and the strata's differences
combined, weighted by their decisions: a version may hold back another share while the
rates move, and the groups pooled over versions would then differ by the change of share
(Simpson's paradox), not by the models. The accept rates' interval is Agresti and Caffo's
(a success and a failure added to each group, then the normal approximation), which holds
its coverage for rare accepts and small control groups where the plain normal one does not
(with no accept among 50 control decisions it had no width from them at all), clipped to
[-1, 1] where it passes what a difference of two rates can be; the value's
is the normal approximation with unequal variances. A customer has many decisions, in both
groups and every catalog version, which share its propensity and its response to the models:
the combined difference's variance is multiplied by its design effect, that variance clustered
by customer (each customer's weighted terms summed over the groups and the versions) over the
one that takes every decision as independent, when that is above 1 (with one decision per
customer it is not, and the numbers are the independent ones; with one customer there is no
clustered variance, and the effect is 1). Where the models' effect differed by customer, the
independent interval covered no effect in under half of the logs of 50 customers x 40
decisions, and one clustered within each version only in half of those of 50 customers x 40
versions x 1 decision (tests/unit/evidence/test_uplift_clustered.py). Both intervals take
Student's t with the customers less one degrees of freedom, not the normal's 1.96, as the
estimators' do (estimators.t95).

A stratum is compared when each group has two decisions; the others are left out of that
comparison, and named (`left_out`). Which are left out depends on the groups' sizes only, never
on what they earned: keeping a version only when its control converted twice kept those whose
control did better by chance (with no true effect and 5 % held back, the models' value looked
44 % lower). A group of a stratum with fewer than two decisions that earned a value has no
variance of its own to speak of (one with none has 0), so the value's interval takes for it the
larger of its own and that group's variance over all the channel's versions (their values
pooled: between-version differences only widen it); when the group has fewer than two such
decisions in all the versions either, the value's interval is unknown (NaN). The table names up
to NAMED_LEFT_OUT left-out versions in a cell and counts the rest.

Rewards are replay's: the first shown action's accept (ACCEPT or CONVERT) and the conversion
value it reported, read as the models learned it where the catalog that made the decision is
given (`kairos uplift --catalog`): at most its models.value.max_ratio times the action's value
in the decision (replay.py). One convert of 1e12, which the API takes, made a value uplift of
+5.6e8. A value of a decision whose catalog is not given, or which it does not value, is read
as reported, and counted (`values_unbounded`); so are those read at the bound
(`values_clipped`). A fallback decision (nothing scored it, selection 0) belongs to neither
group, nor does a decision pushed to a watch: it was logged because its best action changed,
which held-back decisions (a random action) do far more often. An uplift needs a stratum with
two decisions in each group; without one its interval is unknown (NaN) and the report says
so.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from kairos.cluster.evidence.estimators import clusters, customers, standard_error, t95
from kairos.cluster.evidence.records import DecisionRecord
from kairos.cluster.evidence.replay import NOTHING, Replayer, rewards

REWARDS = ("accept", "value")
NAMED_LEFT_OUT = 5  # versions a table's cell names; past them it counts them


@dataclass(frozen=True)
class Difference:
    """Mean of the models' decisions minus mean of the control's, with its 95 % interval."""

    models: float
    control: float
    uplift: float
    low: float
    high: float
    left_out: tuple[str, ...] = ()  # the catalog versions (strata) too small to compare

    def to_json(self) -> dict[str, Any]:
        return {"models": self.models, "control": self.control, "uplift": self.uplift,
                "low": self.low, "high": self.high, "left_out": list(self.left_out)}


# a logged decision: its first shown action, accept and value, and its customer (None: its own)
Row = tuple[str, float, float, str | None]
Strata = dict[str, dict[bool, list[Row]]]  # version -> held? -> rows


def difference(strata: Strata, column: int, binary: bool) -> Difference:
    """The groups' means and their difference, over the strata with two decisions in each
    group, each weighted by its decisions; the others are left out, and named (see the
    module's docstring)."""
    columns = {version: (_column(s[False], column), _column(s[True], column))
               for version, s in strata.items()}
    kept = {version for version, (m, c) in columns.items() if min(len(m), len(c)) >= 2}
    left_out = tuple(sorted(set(columns) - kept))
    usable = [columns[version] for version in sorted(kept)]
    if not usable:
        models = _column([r for s in strata.values() for r in s[False]], column)
        control = _column([r for s in strata.values() for r in s[True]], column)
        m = float(np.mean(models)) if len(models) else math.nan
        c = float(np.mean(control)) if len(control) else math.nan
        return Difference(m, c, m - c, math.nan, math.nan, left_out)
    total = sum(len(m) + len(c) for m, c in usable)
    weights = [(len(m) + len(c)) / total for m, c in usable]
    m = sum(w * float(np.mean(x)) for w, (x, _) in zip(weights, usable))
    c = sum(w * float(np.mean(y)) for w, (_, y) in zip(weights, usable))
    # how much a customer's decisions, in both groups and every version, widen the variance
    effect, df = _design_effect(usable, [strata[version] for version in sorted(kept)], weights)
    if binary:
        adjusted = [((x.sum() + 1) / (len(x) + 2), (y.sum() + 1) / (len(y) + 2), len(x) + 2,
                     len(y) + 2) for x, y in usable]
        centre = sum(w * (pm - pc) for w, (pm, pc, _, _) in zip(weights, adjusted))
        variance = effect * sum(w * w * (pm * (1 - pm) / nm + pc * (1 - pc) / nc)
                                for w, (pm, pc, nm, nc) in zip(weights, adjusted))
    else:
        centre = m - c
        pooled = [_variance(np.concatenate([pair[held] for pair in columns.values()]))
                  for held in (0, 1)]
        variance = effect * sum(w * w * (_variance(x, pooled[0]) / len(x)
                                         + _variance(y, pooled[1]) / len(y))
                                for w, (x, y) in zip(weights, usable))
    half = t95(df) * math.sqrt(variance)
    low, high = float(centre - half), float(centre + half)
    if binary:  # a difference of two rates: the normal approximation can pass +-1
        low, high = max(low, -1.0), min(high, 1.0)
    return Difference(m, c, m - c, low, high, left_out)


def _design_effect(usable: list[tuple[np.ndarray, np.ndarray]], strata: list[dict[bool, list[Row]]],
                   weights: list[float]) -> tuple[float, int]:
    """The combined difference's variance clustered by customer (estimators.standard_error:
    each customer's weighted terms summed over both groups and every version, since a
    customer's decisions span versions) over its variance with every decision taken as
    independent, at least 1 (with one decision per customer the clustered one is no larger,
    and the independent numbers stand); 1 with fewer than two customers, which have no
    clustered variance. With it, the degrees of freedom of the interval's t quantile: the
    customers less one (the decisions less one where it is 1 for want of customers)."""
    independent = sum(w * w * (float(np.var(x, ddof=1)) / len(x) + float(np.var(y, ddof=1))
                               / len(y)) for w, (x, y) in zip(weights, usable))
    influence = np.concatenate([w * np.concatenate([(x - np.mean(x)) / len(x),
                                                    (np.mean(y) - y) / len(y)])
                                for w, (x, y) in zip(weights, usable)])
    codes = clusters([row[3] for s in strata for row in s[False] + s[True]])
    clustered = (standard_error(influence, codes) * len(influence)) ** 2
    if not independent > 0 or math.isnan(clustered):
        return 1.0, len(influence) - 1
    return max(clustered / independent, 1.0), customers(codes, len(influence)) - 1


def _variance(values: np.ndarray, pooled: float = math.nan) -> float:
    """A group's variance of a value; with fewer than two that earned one, the larger of its
    own and `pooled` (that group's over the channel's versions; NaN when unknown there too)."""
    own = float(np.var(values, ddof=1))
    if np.count_nonzero(values) >= 2:
        return own
    return max(own, pooled) if pooled >= 0 else math.nan  # NaN when the pool is unknown too


def uplift(records: Iterable[DecisionRecord], catalogs: Mapping[str, Replayer] = {}
           ) -> dict[str, Any]:
    """The uplift report as a JSON-ready dict (see the module's docstring). `catalogs`: by
    version, the catalogs the log's decisions were made by, through whose bound their convert
    values are read (see the module's docstring)."""
    # channel/placement -> catalog version -> held back? -> [(action, accept, value, customer)]
    groups: dict[str, Strata] = defaultdict(lambda: defaultdict(lambda: {False: [], True: []}))
    fallbacks = pushes = clipped = unbounded = 0
    for record in records:
        if record.pushed:
            pushes += 1
            continue
        action, selection, accept, value = rewards(record)
        if not selection > 0.0:
            fallbacks += 1
            continue
        if value > 0.0:
            read = catalogs[record.catalog_version].replay(record) \
                if record.catalog_version in catalogs else None
            value = value if read is None else read.value
            clipped += read is not None and read.clipped
            unbounded += read is None or math.isnan(read.value_bound)
        groups[f"{record.channel}/{record.placement}"][record.catalog_version][
            record.control].append((action, accept, value, record.customer_id))
    channels = {}
    for where, strata in sorted(groups.items()):
        channels[where] = {
            "decisions": sum(len(s[False]) for s in strata.values()),
            "control_decisions": sum(len(s[True]) for s in strata.values()),
            "catalog_versions": len(strata),
            **{reward: difference(strata, i, reward == "accept").to_json()
               for i, reward in enumerate(REWARDS, start=1)},
            "actions": _by_action(strata)}
    return {"channels": channels, "fallbacks_left_out": fallbacks, "pushes_left_out": pushes,
            "values_clipped": clipped, "values_unbounded": unbounded}


def _by_action(strata: Strata) -> dict[str, Any]:
    """Per action shown first: its accept rate when the models chose it against when the
    control drew it, compared within catalog versions as the channel's are."""
    shown: dict[str, Strata] = defaultdict(lambda: defaultdict(lambda: {False: [], True: []}))
    for version, by_group in strata.items():
        for held, rows in by_group.items():
            for row in rows:
                if row[0] != NOTHING:
                    shown[row[0]][version][held].append(row)
    return {action: {"shown_by_models": sum(len(s[False]) for s in by.values()),
                     "drawn_by_control": sum(len(s[True]) for s in by.values()),
                     "accept": difference(by, 1, binary=True).to_json()}
            for action, by in sorted(shown.items())}


def _column(rows: list[Row], i: int) -> np.ndarray:
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


def _ci(d: dict[str, Any]) -> str:
    names = d["left_out"]
    left_out = f"; left out: {', '.join(names)}" if names else ""
    if len(names) > NAMED_LEFT_OUT:
        left_out = f"; left out: {len(names)} versions ({', '.join(names[:NAMED_LEFT_OUT])}, ...)"
    if math.isnan(d["low"]):
        return f"{d['uplift']:+.3f} (too few to tell{left_out})"
    return f"{d['uplift']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f}{left_out})"
