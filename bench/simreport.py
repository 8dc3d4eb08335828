"""The simulator's measures and report: <run>.json, <run>.md and <run>.png.

- Regret: for each decision, what the oracle's choice was truly worth (the best action the
  decision's catalog made eligible on its channel, under the truth of the moment) minus what
  Kairos's was (nothing shown is worth 0); expected values from the truth, not the drawn
  outcomes. Per window of decisions (in the order they were answered) and cumulative. Held
  decisions (the control group) count: they are part of what the deployment earns.
- The new action, two readings. Its place: in windows of PLACE_WINDOW decisions on the
  launch's catalog, the share of those where it is truly best in which Kairos showed it
  (recall) and of those where Kairos showed it in which it is truly best (precision); the
  oracle has both at 1, and the control group's uniform draws and Thompson's exploration keep
  any policy that explores below that, so it has found its place at the first window where
  both reach 1 - control - PLACE_TOLERANCE ("held": from a window to the end). Its rank: the
  same decisions in RANK_WINDOWS windows, the actions ranked by how often Kairos showed
  them; its true rank is its rank by the oracle's showings over all of them, reached at the
  first window where its rank by Kairos's showings equals it. Each figure is the new action's
  impressions up to the end of that window (the window's size is its resolution).
- Adoption: for each model version the learner published, from its publish to the moment
  the last shard adopted it or a later one (the learner's and the shards' own clocks, one
  machine); p50, p90, p99 and max over the publishes seen.
- Uplift over control: what model decisions were truly worth against what a uniformly random
  eligible action (the control group's policy) is worth on the same decisions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kairos.cluster.settings import MODEL_SYNC_S

from . import report
from .simtruth import Truth
from .world import ACTIONS, DRIFT_SUMMARY, NEW_ACTION, WORLD, launch_share

RANK_WINDOWS = 10
PLACE_WINDOW = 300  # decisions on the launch's catalog
PLACE_TOLERANCE = 0.1
NEW = ACTIONS.index(NEW_ACTION)


def eligible(truth: Truth) -> np.ndarray:
    """(decisions, actions): the actions each decision's catalog offered on its channel."""
    offered = truth.rewards > 0.0  # every offered action is worth something under the truth
    offered[:, NEW] &= truth.launched
    return offered


def oracle(truth: Truth) -> np.ndarray:
    return np.where(eligible(truth), truth.rewards, -np.inf).argmax(axis=1)


def windows(truth: Truth, t: np.ndarray, accepted: np.ndarray, n: int) -> list[dict[str, Any]]:
    best = oracle(truth)
    worth, ideal = truth.worth(truth.shown), truth.worth(best)
    offered = eligible(truth)
    uniform = (truth.rewards * offered).sum(axis=1) / offered.sum(axis=1)
    values = np.array([WORLD[a].value for a in ACTIONS])
    realised = np.where(accepted & (truth.shown >= 0), values[np.maximum(truth.shown, 0)], 0.0)
    out, cumulative = [], 0.0
    for part in np.array_split(np.arange(len(best)), n):
        regret = ideal[part] - worth[part]
        cumulative += float(regret.sum())
        launched = part[truth.launched[part]]
        out.append({"decisions": int(part[-1]) + 1, "t_s": round(float(t[part[-1]]), 1),
                    "kairos": _r(worth[part].mean()), "oracle": _r(ideal[part].mean()),
                    "uniform": _r(uniform[part].mean()), "regret": _r(regret.mean()),
                    "cumulative_regret": round(cumulative, 1),
                    "realised": _r(realised[part].mean()),
                    "hit_rate": _r((truth.shown[part] == best[part]).mean()),
                    "control_share": _r(truth.control[part].mean()),
                    "drifted_share": _r(truth.drifted[part].mean()),
                    "launched_share": _r(truth.launched[part].mean()),
                    "new_action_shown": _share(truth.shown[launched] == NEW),
                    "new_action_oracle": _share(best[launched] == NEW),
                    "new_action_hit": _share(truth.shown[launched][best[launched] == NEW]
                                             == NEW)})
    return out


def new_action(truth: Truth, control: float) -> dict[str, Any]:
    """When the new action found its place and its rank (module docstring)."""
    launched = np.flatnonzero(truth.launched)
    best = oracle(truth)
    shown_new = truth.shown[launched] == NEW
    truly_best = best[launched] == NEW
    out: dict[str, Any] = {"launched_decisions": int(len(launched)),
                           "impressions": int(shown_new.sum()),
                           "oracle_share": _share(truly_best), "shown_share": _share(shown_new)}
    # its place: in windows of PLACE_WINDOW decisions on the launch's catalog, shown where
    # it is truly best (recall) and truly best where shown (precision)
    target = 1.0 - control - PLACE_TOLERANCE
    spans = [np.arange(i, i + PLACE_WINDOW)  # full windows only: the rest is left out
             for i in range(0, len(launched) - PLACE_WINDOW + 1, PLACE_WINDOW)]
    recall = [_share(shown_new[p][truly_best[p]]) for p in spans]
    precision = [_share(truly_best[p][shown_new[p]]) for p in spans]
    out["place"] = {"target": round(target, 4), "window_decisions": PLACE_WINDOW,
                    "recall_by_window": recall, "precision_by_window": precision,
                    **_reached(spans, shown_new, [
                        r is not None and q is not None and r >= target and q >= target
                        for r, q in zip(recall, precision)])}
    # its rank by showings
    if len(launched) >= RANK_WINDOWS:
        true_rank = _rank(np.bincount(best[launched], minlength=len(ACTIONS)))
        spans = np.array_split(np.arange(len(launched)), RANK_WINDOWS)
        shown = truth.shown[launched]
        ranks = [_rank(np.bincount(shown[p][shown[p] >= 0], minlength=len(ACTIONS)))
                 for p in spans]
        out["rank"] = {"true_rank": true_rank, "ranks_by_window": ranks,
                       "window_decisions": int(len(spans[0])),
                       **_reached(spans, shown_new, [r == true_rank for r in ranks])}
    return out


def _reached(spans: list[np.ndarray], shown_new: np.ndarray, ok: list[bool]
             ) -> dict[str, Any]:
    """The first window that is ok, and the first from which every one is ("held"): each
    with the new action's impressions and the decisions since the launch to its end."""
    out = {}
    for name, window in (("first", ok.index(True) if True in ok else None),
                         ("held", _held_from(ok))):
        if window is not None:
            end = int(spans[window][-1]) + 1
            out[name] = {"window": window, "impressions": int(shown_new[:end].sum()),
                         "decisions": end}
    return out


def _held_from(ok: list[bool]) -> int | None:
    """The first index from which every one is true (None if the last is not)."""
    first = None
    for i in range(len(ok) - 1, -1, -1):
        if not ok[i]:
            break
        first = i
    return first


def _rank(counts: np.ndarray) -> int:
    """The new action's rank (1 = shown most) among these counts; ties rank it lower."""
    return int((counts > counts[NEW]).sum() + (counts[np.arange(len(counts)) != NEW]
                                                 == counts[NEW]).sum()) + 1


def adoption(publishes: dict[int, float], adoptions: dict[str, dict[int, float]],
             switch: tuple[float, float] | None) -> dict[str, Any]:
    """Publish → every shard running it (or a later version), over the publishes seen; those
    whose way to every shard the catalog switch overlapped (`switch`: from the PutCatalog to
    its answer, epoch seconds) apart: shards adopt them only once they run the new catalog."""
    per_shard = [sorted(a.items()) for a in adoptions.values()]
    lags: dict[str, list[float]] = {"steady": [], "switch": []}
    firsts, unadopted = [], 0
    for version, at in sorted(publishes.items()):
        times = [next((t for v, t in adopted if v >= version), None) for adopted in per_shard]
        if not times or None in times:
            unadopted += 1
            continue
        # the switch held this one up: it was published before the switch ended and not
        # yet everywhere when it began
        during = switch is not None and at <= switch[1] and max(times) >= switch[0]
        lags["switch" if during else "steady"].append(max(times) - at)
        firsts.append(min(times) - at)
    out: dict[str, Any] = {"shards": len(per_shard), "publishes": len(lags["steady"]),
                           "not_adopted_by_all": unadopted, "model_sync_s": MODEL_SYNC_S,
                           "during_switch": len(lags["switch"]),
                           "during_switch_max_ms": round(max(lags["switch"]) * 1000, 1)
                           if lags["switch"] else None,
                           "lags_ms": [round(x * 1000, 1) for x in lags["steady"]]}
    if lags["steady"]:
        ms = np.array(lags["steady"]) * 1000
        out.update({f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 90, 99)})
        out.update({"max_ms": round(float(ms.max()), 1),
                    "first_shard_p50_ms": round(float(np.median(firsts)) * 1000, 1)})
    return out


def uplift(truth: Truth) -> dict[str, Any]:
    """Model decisions against the control group's uniform policy on the same decisions, per
    phase; and the held decisions' own mean (what a control-group analysis would see)."""
    offered = eligible(truth)
    uniform = (truth.rewards * offered).sum(axis=1) / offered.sum(axis=1)
    worth = truth.worth(truth.shown)
    out = {}
    for name, phase in _phases(truth).items():
        model, held = phase & ~truth.control, phase & truth.control
        if not model.any():
            continue
        gain = worth[model].mean() / uniform[model].mean() - 1.0
        out[name] = {"model": _r(worth[model].mean()), "uniform": _r(uniform[model].mean()),
                     "uplift": _r(gain), "held_decisions": int(held.sum()),
                     "held_mean": _r(worth[held].mean()) if held.any() else None}
    return out


def _phases(truth: Truth) -> dict[str, np.ndarray]:
    return {"before_drift": ~truth.drifted, "after_drift": truth.drifted & ~truth.launched,
            "after_launch": truth.launched}


def results(run: dict[str, Any], truth: Truth, name: str, command: str) -> dict[str, Any]:
    rows = run["rows"]
    t, accepted = np.array(rows.t), np.array(rows.accepted, bool)
    curve = windows(truth, t, accepted, run["plan"]["windows"])
    regret = truth.worth(oracle(truth)) - truth.worth(truth.shown)
    new = new_action(truth, run["plan"]["control"])
    launch = run["launch"]
    adopted = adoption(run["publishes"], run["adoptions"],
                       (launch["sent_at"], launch["switched_at"]) if "switched_at" in launch
                       else None)
    lift = uplift(truth)
    first_drifted = int(np.argmax(truth.drifted)) if truth.drifted.any() else None
    first_launched = int(np.argmax(truth.launched)) if truth.launched.any() else None
    checks = {
        "learned_before_drift": bool(first_drifted) and
        _fifth(regret[:first_drifted], last=False) > _fifth(regret[:first_drifted], last=True),
        "above_control_after_launch": lift.get("after_launch", {}).get("uplift", -1) > 0,
        "new_action_found_its_place": "first" in new["place"],
        "every_publish_adopted": adopted["publishes"] > 0 and
        adopted["not_adopted_by_all"] <= 1}  # the last publish may come after the last read
    return {"run": name, "command": command, "plan": run["plan"],
            "seconds": run["seconds"], "profiles_s": run["profiles_s"],
            "counts": run["counts"],
            "decisions_per_s": round(len(t) / max(run["seconds"], 1e-9), 1),
            "world": {"drift": DRIFT_SUMMARY, "launch_share": round(launch_share(
                run["population"]), 4), "new_action": NEW_ACTION},
            "drift": {"decision": first_drifted, "t_s": _at(t, first_drifted)},
            "launch": {**run["launch"], "first_decision": first_launched,
                       "first_t_s": _at(t, first_launched)},
            "regret": {"per_decision": _r(regret.mean()), "cumulative": round(float(
                regret.sum()), 1), "model_only_per_decision": _r(regret[~truth.control].mean()),
                "by_phase": {k: _r(regret[m].mean()) if m.any() else None
                             for k, m in _phases(truth).items()}},
            "windows": curve, "new_action": new, "adoption": adopted, "uplift": lift,
            "truth_check": truth.figures(),
            "verdict": {"held": all(checks.values()), "checks": checks}}


def _fifth(values: np.ndarray, last: bool) -> float:
    """The mean of the first (or last) fifth."""
    n = max(len(values) // 5, 1)
    return float((values[-n:] if last else values[:n]).mean())


def summary(results: dict[str, Any]) -> dict[str, Any]:
    new, adopted = results["new_action"], results["adoption"]
    return {"run": results["run"], "held": results["verdict"]["held"],
            "decisions": results["truth_check"]["decisions"],
            "regret_per_decision": results["regret"]["per_decision"],
            "impressions_to_place": new["place"].get("first", {}).get("impressions"),
            "impressions_to_rank": new.get("rank", {}).get("first", {}).get("impressions"),
            "adoption_p50_ms": adopted.get("p50_ms"), "adoption_p99_ms": adopted.get("p99_ms")}


def save(results: dict[str, Any], out: Path) -> Path:
    base = report.save(results, out, markdown(results))
    plot(results, base.with_suffix(".png"))
    return base


def _replay_lines(check: dict[str, Any] | None) -> list[str]:
    """The replay of the run's exported log against the truth (simtruth.replay_check)."""
    if not check:
        return []
    estimates = ", ".join(
        f"{name.upper()} {e['value']:.3f} ({e['low']:.3f} to {e['high']:.3f}, "
        f"{'covers' if e['covers_truth'] else 'misses'} the truth)"
        for name, e in check["estimates"].items())
    return [f"Replay of the run's decision log (`kairos log export`: {check['exported']} "
            f"decisions, {check['records']} matched to the truth, {check['evaluated']} "
            f"weighed, effective sample size {check['ess']:.0f}): the candidate's true value "
            f"per decision on them {check['candidate_true_value']:.3f}; estimated {estimates}."
            + (" Warnings: " + "; ".join(check["warnings"]) + "." if check["warnings"] else ""),
            ""]


def markdown(results: dict[str, Any]) -> str:
    p, r, new, a = results["plan"], results["regret"], results["new_action"], results["adoption"]
    c, tc = results["counts"], results["truth_check"]
    lines = [f"# Simulator {results['run']}", "", f"`{results['command']}`", "",
             f"{p['customers']} customers, {tc['decisions']} decisions in "
             f"{results['seconds']} s ({results['decisions_per_s']}/s, {p['concurrency']} "
             f"sessions in flight), {p['shards']} shards and the learner, control share "
             f"{p['control']}; drift at decision {results['drift']['decision']} "
             f"({results['drift']['t_s']} s: {results['world']['drift']}); "
             f"`{results['world']['new_action']}` launched at "
             f"{results['launch'].get('sent_s', 0):.1f} s (catalog switched by "
             f"{results['launch'].get('switched_s', 0):.1f} s), truly best for "
             f"{results['world']['launch_share']:.1%} of the contexts.", "",
             "| window ends at decision | s | Kairos | oracle | uniform | regret/decision "
             "| cumulative | hit rate | new action shown / oracle |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in results["windows"]:
        lines.append(f"| {w['decisions']} | {w['t_s']} | {w['kairos']} | {w['oracle']} | "
                     f"{w['uniform']} | {w['regret']} | {w['cumulative_regret']} | "
                     f"{w['hit_rate']} | {_pair(w['new_action_shown'], w['new_action_oracle'])} |")
    phases = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r["by_phase"].items())
    lines += ["", f"Regret per decision (expected, from the truth) {r['per_decision']} over the "
                  f"run ({phases}); model decisions only {r['model_only_per_decision']}; "
                  f"cumulative {r['cumulative']}.", ""]
    place, rank = new["place"], new.get("rank", {})
    if not new["launched_decisions"]:
        lines.append("New action: no decision was made on the launch's catalog.")
    else:
        lines.append(
            f"New action: the oracle would show it in {new['oracle_share']:.1%} of the "
            f"decisions after the launch, Kairos showed it in {new['shown_share']:.1%}. Its "
            f"place (recall and precision at least {place['target']:.0%} over "
            f"{place['window_decisions']} decisions): {_reading(place)} (recall by window "
            f"{_twos(place['recall_by_window'])}, precision "
            f"{_twos(place['precision_by_window'])}). Its true rank by showings, "
            f"{rank.get('true_rank')}: {_reading(rank)} (ranks by window of "
            f"{rank.get('window_decisions')} decisions: {rank.get('ranks_by_window')}).")
    lines += ["", f"Model adoption, publish → every shard ({a['shards']} shards, "
                  f"{a['publishes']} publishes, sync every {a['model_sync_s']} s): "
                  + (f"p50 {a['p50_ms']} ms, p90 {a['p90_ms']} ms, p99 {a['p99_ms']} ms, "
                     f"max {a['max_ms']} ms (the first shard: p50 {a['first_shard_p50_ms']} ms)"
                     if a["publishes"] else "no publish was seen")
              + f"; {a['during_switch']} publishes during the catalog switch, adopted by all "
                f"within {a['during_switch_max_ms']} ms.", "",
              "Uplift of the models over the control group's uniform policy on the same "
              "decisions: " + ", ".join(f"{k.replace('_', ' ')} {v['uplift']:+.1%}"
                                         for k, v in results["uplift"].items()) + ".", "",
              f"Truth check: the candidate ({tc['candidate']}) is truly worth "
              f"{tc['all']['candidate_true_value']} per decision on this run's contexts, the "
              f"logging policy (Kairos) {tc['all']['logged_true_value']}.", "",
              *_replay_lines(results.get("replay_check")),
              f"Calls: {c['decided']} decided ({c['fallbacks']} fallbacks, {c['empty']} "
              f"showed nothing, {c['decide_errors']} errors; {c.get('decides_shed', 0)} refused as "
              f"overload (RESOURCE_EXHAUSTED) and sent again), {c['outcomes']} outcomes "
              f"({c['outcomes_refused']} refused by the customer's rate, "
              f"{c['respond_errors']} errors)"
              + (": " + ", ".join(f"{k} {n} (the first: {c['examples'][k]!r})"
                                  for k, n in sorted(c["errors"].items()))
                 if c["errors"] else "") + ".", "", report.verdict_line(results["verdict"])]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = results["windows"]
    x = [w["decisions"] for w in ws]
    fig, axes = plt.subplots(3, 1, figsize=(8, 10), sharex=True)
    axes[0].plot(x, [w["oracle"] for w in ws], label="oracle")
    axes[0].plot(x, [w["kairos"] for w in ws], label="Kairos")
    axes[0].plot(x, [w["uniform"] for w in ws], label="uniform (control's policy)")
    axes[0].set_ylabel("true value per decision")
    axes[1].plot(x, [w["regret"] for w in ws], color="C3")
    axes[1].set_ylabel("regret per decision", color="C3")
    cumulative = axes[1].twinx()
    cumulative.plot(x, [w["cumulative_regret"] for w in ws], color="grey", linestyle="--")
    cumulative.set_ylabel("cumulative regret", color="grey")
    after = [(w["decisions"], w) for w in ws if w["new_action_shown"] is not None]
    axes[2].plot([d for d, _ in after], [w["new_action_shown"] for _, w in after],
                 label=f"{NEW_ACTION} shown by Kairos")
    axes[2].plot([d for d, _ in after], [w["new_action_oracle"] for _, w in after],
                 label=f"{NEW_ACTION} shown by the oracle")
    axes[2].plot([d for d, _ in after], [w["new_action_hit"] for _, w in after],
                 label=f"{NEW_ACTION} shown where it is truly best")
    axes[2].set_ylabel("share of decisions after the launch")
    axes[2].set_ylim(bottom=0)
    axes[2].set_xlabel("decisions")
    for ax in axes:
        for at, label in ((results["drift"]["decision"], "drift"),
                          (results["launch"]["first_decision"], "launch")):
            if at is not None:
                ax.axvline(at, color="grey", linestyle=":")
                ax.text(at, 1.0, f" {label}", transform=ax.get_xaxis_transform(),
                        va="top", fontsize="small")
    axes[0].legend(fontsize="small")
    axes[2].legend(fontsize="small")
    axes[0].set_title(f"Simulator: {results['plan']['customers']} customers, "
                      f"{results['plan']['shards']} shards")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _reading(reached: dict[str, Any]) -> str:
    if "first" not in reached:
        return "not reached"
    first = reached["first"]
    return (f"first reached after **{first['impressions']} impressions** "
            f"({first['decisions']} decisions since the launch), "
            + (f"held to the end from {reached['held']['impressions']}"
               if "held" in reached else "not held to the end"))


def _twos(values: list[float | None]) -> str:
    return "[" + ", ".join("-" if v is None else f"{v:.2f}" for v in values) + "]"


def _share(mask: np.ndarray) -> float | None:
    return round(float(mask.mean()), 4) if len(mask) else None


def _pair(a: float | None, b: float | None) -> str:
    return "" if a is None else f"{a} / {b}"


def _r(v: float) -> float:
    return round(float(v), 4)


def _at(t: np.ndarray, index: int | None) -> float | None:
    return None if index is None else round(float(t[index]), 1)
