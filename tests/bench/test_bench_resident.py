"""The resident-customers bench runs end to end (smoke mode) and writes its report.

It asserts that the harness works and its report is well-formed, never how fast or how small
anything was (only that every customer's ring was written, and the memory per customer is not
below a profile row's own arrays: less would be pages not counted): the committed report comes
from a full run."""
from __future__ import annotations

import json

from tests.bench.harness import run_harness


def test_smoke_run_loads_both_populations_and_judges_the_targets(tmp_path):
    summary = run_harness("resident", ["--smoke"], tmp_path, 300)
    report = json.loads((tmp_path / f"{summary['run']}.json").read_text())
    small, large = report["phases"]
    assert (small["customers"], large["customers"]) == (2_000, 20_000)
    # each load added its customers, and every one of them was resident for the snapshot
    assert small["load"]["events"] == 2_000 and large["load"]["events"] == 18_000
    # ... each served: the shards found every customer's interaction ring written
    assert (small["rings_written"], large["rings_written"]) == (2_000, 20_000)
    assert (small["snapshot"]["customers"], large["snapshot"]["customers"]) == (2_000, 20_000)
    for p in (small, large):
        assert p["resident"] == p["customers"] and p["passivated"] == 0
        assert p["decide"]["kinds"]["decide"]["ok"] > 0 and p["ingest"]["kinds"]["event"]["ok"] > 0
        assert p["pauses"]["load"]["collections"] > 0  # the shards time their collections
        assert p["rss_mib"] > report["baseline_rss_mib"]
    targets = report["targets"]
    # every page of the rows taken was written: no less than a row's arrays each, judged
    assert large["bytes_per_customer"] >= report["row_bytes"] > 0
    assert targets["bytes_per_customer"]["judged"]
    assert report["outcome_rate_window_s"] == 1.0
    assert targets["bytes_per_customer"]["met"] == \
        (large["bytes_per_customer"] <= targets["bytes_per_customer"]["target"])
    assert summary["met"] == {k: v["met"] for k, v in targets.items()}
    assert "| 20,000 |" in (tmp_path / f"{summary['run']}.md").read_text()
