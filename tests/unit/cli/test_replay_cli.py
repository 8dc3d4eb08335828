"""`kairos replay`: a candidate judged on a decision log file, offline, with its report."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bench import truth
from kairos.cluster.cli.main import main
from kairos.cluster.control.catalog_identity import catalog_digest


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return truth.write_files(tmp_path_factory.mktemp("replay"), truth.log(
        2, truth.customers(np.random.default_rng(2), 80)))


def test_replay_writes_the_report_and_prints_a_summary(files, capsys):
    out = files / "report"
    assert main(["replay", "--log", str(files / "log.jsonl"), "--catalog",
                 str(files / "candidate.yaml"), "--out", str(out), "--samples", "16"]) == 0
    printed = capsys.readouterr().out
    assert "80 of 80 logged decisions replayed through truth-candidate cand-1" in printed
    assert "accept rate: logged" in printed and "doubly robust" in printed
    evidence = json.loads((out / "replay.json").read_text())
    assert evidence["samples"] == 16 and evidence["logged_catalogs"] == ["log-1"]
    assert evidence["candidate"]["digest"] == catalog_digest(truth.candidate_catalog())
    assert set(evidence["estimates"]) == {"accept", "value"}
    assert set(evidence["estimates"]["value"]) == {"ips", "snips", "dr"}
    assert set(evidence["differs"]["by_channel"]) == {"web/hero", "app/home"}
    markdown = (out / "replay.md").read_text()
    assert "## Where the candidate decides differently" in markdown
    assert (out / "replay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "replay.png" in markdown


def test_a_bad_candidate_is_named_by_file_and_line(files, capsys):
    bad = files / "bad.yaml"
    bad.write_text(truth.candidate_catalog().replace("segment != 'c'", "segment !== 'c'"))
    assert main(["replay", "--log", str(files / "log.jsonl"), "--catalog", str(bad),
                 "--out", str(files / "never")]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "discount" in err
    assert not (files / "never").exists()


def test_a_bad_log_is_named_by_file_and_line(files, capsys):
    log = files / "bad.jsonl"
    lines = (files / "log.jsonl").read_text().splitlines()
    log.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    assert main(["replay", "--log", str(log), "--catalog", str(files / "candidate.yaml")]) == 1
    assert f"{log}:2: not JSON" in capsys.readouterr().err


def test_samples_out_of_bounds_are_refused(files, capsys):
    with pytest.raises(SystemExit) as exited:  # an argument error, as --seed's and --limit's
        main(["replay", "--log", str(files / "log.jsonl"), "--catalog",
              str(files / "candidate.yaml"), "--samples", "0"])
    assert exited.value.code == 2
    assert "--samples" in capsys.readouterr().err
