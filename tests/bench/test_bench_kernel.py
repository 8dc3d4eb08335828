"""The kernel benchmark runs end to end (quick mode) and reports what the README quotes."""
from __future__ import annotations

import json


def test_quick_run_writes_reports_and_a_summary_line(tmp_path, run_bench):
    summary = run_bench("kernel", tmp_path, "--quick")
    assert summary["actions"] == 200
    for key in ("decide_us", "reference_decide_us", "apply_event_us", "bytes_per_customer"):
        assert summary[key] > 0
    report = json.loads(next(tmp_path.glob("kernel-*.json")).read_text())
    assert [r["actions"] for r in report["results"]] == [50, 200]
    assert "| actions |" in next(tmp_path.glob("kernel-*.md")).read_text()
