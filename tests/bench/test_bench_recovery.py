"""The recovery benchmark runs end to end (quick mode): both stores recover every customer."""
from __future__ import annotations

import json


def test_quick_run_recovers_identical_customers_and_writes_reports(tmp_path, run_bench):
    summary = run_bench("recovery", tmp_path, "--quick", timeout_s=300)
    assert set(summary) == {"directory (fsync)", "redis (appendfsync always)"}
    for figures in summary.values():
        assert figures["customers"] == 2000 and figures["identical"]
        assert figures["recovery_s"] > 0
    report = json.loads(next(tmp_path.glob("recovery-*.json")).read_text())
    assert all(r["replayed_records"] > 0 for r in report["results"])
    assert "| store | customers |" in next(tmp_path.glob("recovery-*.md")).read_text()
