"""The decision log's cost benchmark runs end to end (quick mode) and reports what the README
quotes."""
from __future__ import annotations

import json

import pytest


def test_quick_run_reports_the_cost_per_decision(tmp_path, run_bench):
    summary = run_bench("decision_log", tmp_path, "--quick")
    for key in ("cpu_us_per_decision_log_off", "cpu_us_per_decision_log_on",
                "writer_cpu_us_per_record_directory", "record_bytes_mean"):
        assert summary[key] > 0
    assert summary["cpu_us_logging_per_decision"] == pytest.approx(  # each rounded to 0.1
        summary["cpu_us_per_decision_log_on"] - summary["cpu_us_per_decision_log_off"],
        abs=0.11)
    assert json.loads(next(tmp_path.glob("decision-log-*.json")).read_text()) == summary
