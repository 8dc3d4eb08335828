"""The kernel benchmark runs end to end (quick mode) and reports what the README quotes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_writes_reports_and_a_summary_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.kernel", "--quick", "--out",
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True, check=True,
                         timeout=600)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["actions"] == 200
    for key in ("decide_us", "reference_decide_us", "apply_event_us", "bytes_per_customer"):
        assert summary[key] > 0
    report = json.loads(next(tmp_path.glob("kernel-*.json")).read_text())
    assert [r["actions"] for r in report["results"]] == [50, 200]
    assert "| actions |" in next(tmp_path.glob("kernel-*.md")).read_text()
