"""The coverage harness writes its report (two seeds; the figures the README quotes come from
a full run)."""
from __future__ import annotations

import json

from bench import coverage


def test_a_run_of_two_seeds_writes_coverage_and_errors(tmp_path, capsys):
    coverage.main(["--seeds", "0:2", "--out", str(tmp_path)])
    [report] = tmp_path.glob("coverage-*.json")
    result = json.loads(report.read_text())
    assert result["command"] == "python -m bench.coverage --seeds 0:2"
    for reward in coverage.REWARDS:
        figures = result["rewards"][reward]
        assert figures["seeds"] == 2 and 0 <= figures["dr_covered"] <= 2
        assert figures["dr_half_width"] > 0
        assert set(figures["mean_error"]) == set(coverage.ESTIMATORS)
    table = report.with_suffix(".md").read_text()
    assert "| accept | " in table and table in capsys.readouterr().out
