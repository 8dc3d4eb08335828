"""The overload harness runs end to end (smoke mode) and writes its report and verdict.

It asserts that the harness works and its report is well-formed, never how fast anything
was: the committed report comes from a full run on a quiet machine."""
from __future__ import annotations

import json

from tests.bench.harness import run_harness


def test_smoke_run_writes_a_report_with_a_verdict(tmp_path):
    summary = run_harness("overload", ["--smoke"], tmp_path, 300)
    report = json.loads((tmp_path / f"{summary['run']}.json").read_text())
    verdict = report["verdict"]
    assert set(verdict["checks"]) == {"admitted_p99_within_2x", "refusals_within_deadline",
                                      "refusals_fast", "no_other_errors", "all_answered"}
    # held, not held or not judged (as a smoke run's may be): which one, the unit tests judge
    # on fabricated steps (tests/unit/bench/test_flattering_verdicts.py); here, that the one
    # given keeps its promise
    checks, held = verdict["checks"], verdict["held"]
    assert held in (True, False, None) and isinstance(verdict["not_judged"], list)
    assert held is not True or (all(checks.values()) and not verdict["not_judged"])
    assert held is False or (checks["no_other_errors"] and checks["all_answered"])
    assert held is not None or verdict["not_judged"]
    assert report["overload"]["rate_target"] == 3 * report["nominal"]["rate_target"]
    assert report["nominal"]["sent"] > 0 and report["overload"]["sent"] > 0
    assert verdict["admitted"] + verdict["refused"] + verdict["unanswered"] \
        == report["overload"]["sent"]
    assert "| overload |" in (tmp_path / f"{summary['run']}.md").read_text()
