"""The learning harness's smoke run: Kairos and its three peers play the same rounds of two
datasets, and the report says what each earned. Asserts what the run must show whatever the
machine: every policy played every round and learned (above chance), and the report is
complete. The committed report comes from `python -m bench.learning`."""
from __future__ import annotations

import json

from tests.bench.harness import run_harness


def test_the_smoke_run_plays_every_policy_and_writes_its_report(tmp_path):
    summary = run_harness("learning", ["--smoke"], tmp_path, 240)
    report = json.loads((tmp_path / f"{summary['run']}.json").read_text())
    assert set(report["datasets"]) == {"wine", "phishing"}
    for name, chance in (("wine", 1 / 3), ("phishing", 1 / 2)):
        d = report["datasets"][name]
        assert set(d["policies"]) == {"kairos", "kairos_standardize", "kairos_optimistic", "kairos_ucb",
                                      "river_linucb", "river_logistic_egreedy", "vw_squarecb"}
        for policy, r in d["policies"].items():
            assert len(r["rewards"]) == 1 and r["mean"] > chance + 0.1, (name, policy, r["mean"])
        assert d["best_peer"] in d["policies"] and not d["best_peer"].startswith("kairos")
        assert isinstance(d["held"], bool)
    md = (tmp_path / f"{summary['run']}.md").read_text()
    assert "| wine (178×3, 13) |" in md and "**Verdict:" in md
    assert (tmp_path / f"{summary['run']}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
