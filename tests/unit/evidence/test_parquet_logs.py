"""`kairos replay` and `kairos uplift` read a Parquet export, as the README says they do."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import truth
from kairos.cluster.cli.main import main
from kairos.cluster.evidence.records import read_records, write_records

README = Path(__file__).resolve().parents[3] / "README.md"


def test_replay_and_uplift_read_a_parquet_log_and_the_readme_says_so(tmp_path, capsys):
    files = truth.write_files(tmp_path, truth.log(4, truth.customers(
        np.random.default_rng(4), 6), learn=False))
    log = tmp_path / "log.parquet"
    write_records(read_records(files / "log.jsonl"), log)
    assert main(["replay", "--log", str(log), "--catalog", str(files / "candidate.yaml"),
                 "--samples", "2", "--out", str(tmp_path / "out")]) == 0
    assert "6 of 6 logged decisions replayed" in capsys.readouterr().out
    assert main(["uplift", "--log", str(log), "--json"]) == 0
    # the replay section's limits once said the Parquet export could not be read
    limits = README.read_text(encoding="utf-8").split("**Limits.** The estimates hold")[1]
    limits = " ".join(limits.split("\n## ")[0].split())
    assert "JSON lines only" not in limits
    assert "`kairos replay` and `kairos uplift` read a `--log` ending `.parquet` as Parquet" \
        in limits
