"""The drain benchmark runs end to end (short): a node holding customers is drained under
Decide traffic with every call answered and none refused, and the reports are written. A
Decide the shards could not answer within its deadline is answered with the fallback: how
many is a figure of the report (on two cores shared with the suite, the drain's moves can
delay a few), not a pass or a fail here."""
from __future__ import annotations

import json


def test_a_short_run_drains_a_node_under_traffic_and_writes_reports(tmp_path, run_bench):
    # 256 partitions (not 4,096) and 1 s steps: the same drain under traffic with fewer files
    # to snapshot, move and delete, and a shorter step of traffic before it
    summary = run_bench("drain", tmp_path, "--customers", "2000", "--rate", "20",
                        "--grace-for", "2000", "--partitions", "256", "--step-s", "1",
                        timeout_s=400)
    (size,) = summary["sizes"]
    assert size["customers"] == 2000 and 0 < size["on_drained_node"] < 2000
    assert size["drain_s"] > 0 and size["sent"] > 0
    assert summary["grace_s"] >= 60
    report = json.loads(next(tmp_path.glob("drain-*.json")).read_text())
    assert report["sizes"][0]["partitions_moved"] > 0
    steps = report["sizes"][0]["steps"]
    assert steps and not any(step["errors"] for step in steps)  # no call refused or failed
    # every call answered: all a step failed were fallbacks
    assert sum(step["failed"] - step["fallbacks"] for step in steps) == 0
    # the bulk load was snapshotted before the drain began
    assert report["sizes"][0]["populate"]["snapshot_s"] >= 0
    assert "| customers | on the drained node |" in next(tmp_path.glob("drain-*.md")).read_text()
    assert next(tmp_path.glob("drain-*.png")).stat().st_size > 0
