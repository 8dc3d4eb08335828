"""The micro-costs harness runs end to end (quick mode) and reports every probe the README
quotes, each with its inputs and finite figures (no timing is judged)."""
from __future__ import annotations

import json
import math

from bench import costs

FIELDS = {"unit", "median", "min", "max", "repeats"}


def test_quick_run_reports_every_probe_with_finite_figures(tmp_path, run_bench):
    summary = run_bench("costs", tmp_path, "--quick", timeout_s=15)
    report = json.loads(next(tmp_path.glob("costs-*-quick.json")).read_text())
    assert summary["report"].endswith(".json") and summary["finite"] is True
    assert report["command"] == "python -m bench.costs --quick"
    assert report["load_average_1m"] >= 0 and report["provenance"]["cpus"] >= 1
    assert list(report["probes"]) == [name for name, _ in costs.PROBES]
    for name, probe in report["probes"].items():
        if "skipped" in probe:  # only the Redis probe may be, without a redis-server
            assert name == "redis_log_trim" and "no redis-server" in probe["skipped"]
            continue
        assert probe["inputs"] and probe["figures"], name
        for figure, value in probe["figures"].items():
            assert FIELDS <= set(value) and value["repeats"] >= 1, (name, figure)
            assert all(math.isfinite(value[k]) for k in ("median", "min", "max")), figure
            # a difference of two timings (on minus off) may fall below zero by noise
            assert value.get("difference") or value["min"] > 0, (name, figure, value)
    table = next(tmp_path.glob("costs-*-quick.md")).read_text()
    assert "| probe | figure | median |" in table
    assert all(f"| {name} |" in table for name in report["probes"])
