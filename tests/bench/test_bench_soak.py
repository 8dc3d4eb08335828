"""The soak harness's short version (15 s): steady sessions against Kairos while its processes
are sampled. Asserts that the harness works and what needs no clock: every sample saw the
same Kairos processes (none restarted), the traffic flowed, and the report is complete. The
hour-long run's report is committed in bench/results."""
from __future__ import annotations

import json

from tests.bench.harness import run_harness


def test_a_short_soak_writes_samples_and_a_verdict(tmp_path):
    # 256 partitions: the bulk load's snapshot 0.4 s, 4.7 s with 4,096. Not less traffic: on a
    # loaded machine 12 s sent 1,114 of the 1,200 scheduled, too near the 1,000 asserted
    summary = run_harness("soak", ["--minutes", "0.25", "--rate", "100", "--customers", "2000",
                                   "--step-s", "5", "--sample-s", "0.8", "--partitions", "256"],
                          tmp_path, 420)
    report = json.loads((tmp_path / f"{summary['run']}.json").read_text())
    samples = report["samples"]
    assert len(samples) >= 15
    assert len({s["processes"] for s in samples}) == 1 and samples[0]["processes"] >= 4
    assert all(s["rss_mib"] > 0 and s["fds"] > 0 and s["threads"] > 0 for s in samples)
    assert report["verdict"]["checks"]["same_processes"]
    assert report["verdict"]["sent"] >= 100 * 10
    assert len(report["steps"]) == 3
    assert "**Verdict:" in (tmp_path / f"{summary['run']}.md").read_text()
    assert (tmp_path / f"{summary['run']}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(len(s["memos"]) == 2 for s in samples)  # every shard's memo, every sample
    assert all(kept > 0 and capacity == 100_000 for kept, capacity in samples[-1]["memos"])
    assert "thread_names" in samples[0]
