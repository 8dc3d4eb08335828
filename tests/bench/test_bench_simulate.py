"""The simulator's quick run: synthetic customers with a known truth, closed loop through a
Kairos of its own (two shards and the learner, a gateway with API keys), a drift and a
launch. Asserts what must hold whatever the machine's speed: the report is complete, the
measures are consistent with the truth (the oracle is never beaten, regret adds up), the
models earned more than the control group's uniform policy, the launch's catalog reached the
sessions and the new action was shown, every shard adopted the published model versions, and
the truth files let a decision log be checked (`simtruth.of_log` on records made from them
gives back the report's figures). The full run's report is committed in bench/results."""
from __future__ import annotations

import json
import math

from bench import simtruth
from bench.world import ACTIONS, BASE_ACTIONS, NEW_ACTION
from kairos.cluster.evidence.records import DecisionRecord, OutcomeRecord, ShownAction
from kairos.core.compiler import compiled_from_text
from tests.bench.harness import run_harness

DECISIONS, WINDOWS = 3000, 12


def test_the_quick_run_measures_regret_launch_and_adoption_against_the_truth(tmp_path):
    summary = run_harness("simulate", ["--quick"], tmp_path, 420)
    base = tmp_path / summary["run"]
    report = json.loads(base.with_suffix(".json").read_text())
    counts = report["counts"]
    assert counts["decided"] + counts["decide_errors"] == DECISIONS
    rows = report["truth_check"]["decisions"]
    assert rows == counts["decided"] - counts["fallbacks"] >= 0.9 * DECISIONS
    assert counts["outcomes"] + counts["outcomes_refused"] + counts["respond_errors"] \
        == rows - counts["empty"]

    windows = report["windows"]
    assert len(windows) == WINDOWS and windows[-1]["decisions"] == rows
    cumulative = 0.0
    for w in windows:
        assert w["oracle"] >= w["kairos"] and w["oracle"] >= w["uniform"]
        assert math.isclose(w["regret"], w["oracle"] - w["kairos"], abs_tol=2e-4)
        assert w["cumulative_regret"] >= cumulative
        cumulative = w["cumulative_regret"]
    kairos = sum(w["kairos"] for w in windows) / WINDOWS
    uniform = sum(w["uniform"] for w in windows) / WINDOWS
    assert kairos > uniform  # the models learned something the control's policy does not
    assert all(v["uplift"] > 0 for v in report["uplift"].values())
    assert report["drift"]["decision"] > 0 and report["launch"]["version"] == "sim-2"
    assert report["launch"]["first_decision"] > report["drift"]["decision"]

    new = report["new_action"]
    assert new["impressions"] > 0 and 1 <= new["rank"]["true_rank"] <= len(ACTIONS)
    assert len(new["rank"]["ranks_by_window"]) == 10
    assert abs(new["oracle_share"] - report["world"]["launch_share"]) < 0.1
    place = new["place"]
    assert len(place["recall_by_window"]) == len(place["precision_by_window"]) >= 2
    assert all(0 <= h <= 1 for h in place["recall_by_window"] + place["precision_by_window"]
               if h is not None)
    assert new["place"]["target"] == 0.8  # 1 - the control share - the tolerance
    adoption = report["adoption"]
    assert adoption["shards"] == 2 and adoption["publishes"] > 0
    assert adoption["not_adopted_by_all"] <= 1
    assert all(lag >= 0 for lag in adoption["lags_ms"])
    assert 0 < adoption["first_shard_p50_ms"] <= adoption["p50_ms"] <= adoption["p99_ms"]

    md = base.with_suffix(".md").read_text()
    assert "| window ends at decision |" in md and "**Verdict:" in md
    assert base.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    candidate = compiled_from_text(
        base.with_name(base.name + "-candidate.yaml").read_text(), "candidate")
    assert list(candidate.action_ids) == list(BASE_ACTIONS)
    _check_the_truth_hook(base, report["truth_check"])
    # the run's log, exported through the gateway, replayed through the candidate
    check = report["replay_check"]
    assert check["exported"] == check["records"] == rows and check["unknown_records"] == 0
    assert check["evaluated"] == rows and check["ess"] > 0
    assert set(check["estimates"]) == {"ips", "snips", "dr"}
    assert all(e["low"] <= e["value"] <= e["high"] for e in check["estimates"].values())
    assert "Replay of the run's decision log" in md


def _check_the_truth_hook(base, figures) -> None:
    """Decision records made from the truth table (what `kairos log export` will give for the
    run) get back the report's true values through `of_log`."""
    table = simtruth.read_table(base.with_name(base.name + "-truth.jsonl.gz"))
    assert len(table) == figures["decisions"]
    records = []
    for row in table.values():
        shown = () if row["shown"] is None else (
            ShownAction(row["shown"], 0, 1.0, 0.5, 1.0),)
        assert set(row["worth"]) == set(ACTIONS)
        assert row["worth"][NEW_ACTION] > 0  # its truth holds before its launch too
        records.append(DecisionRecord(
            row["decision_id"], 0.0, row["customer_id"], row["channel"], "", "", 0,
            {"device": row["device"]}, {}, b"", tuple(ACTIONS), shown,
            outcomes=tuple(OutcomeRecord(row["decision_id"], row["customer_id"], s.action_id,
                                         "CONVERT", 1.0, 0.0) for s in shown)))
    truth = simtruth.of_log(records, table)
    assert truth["records"] == figures["decisions"] and truth["unknown_records"] == 0
    assert math.isclose(truth["candidate_true_value"], figures["all"]["candidate_true_value"],
                        abs_tol=1e-3)
    assert math.isclose(truth["logged_true_value"], figures["all"]["logged_true_value"],
                        abs_tol=1e-3)
