"""The replay report's files are written under names of their own and renamed: a link planted
under a report's name in a shared --out folder is replaced, and its target left as it was
(write() followed replay.json.partial, replay.md and replay.png's links before)."""
from __future__ import annotations

import os

import pytest

from kairos.cluster.evidence import evaluation, report

from tests.unit.evidence.test_interval_range import accepting_log


@pytest.mark.parametrize("name", ["replay.json.partial", "replay.md", "replay.png"])
def test_a_link_under_a_reports_name_is_replaced_and_its_target_kept(name, tmp_path):
    if name == "replay.png":
        pytest.importorskip("matplotlib")
    evidence = evaluation.evaluate(accepting_log(0))
    evidence.update(log="log.jsonl", candidate={"name": "c", "version": "1"}, samples=64,
                    candidate_error=0.0625, models="priors")  # what `kairos replay` adds
    victim = tmp_path / "victim"
    victim.write_text("the operator's own file\n")
    out = tmp_path / "shared"
    out.mkdir()
    (out / name).symlink_to(victim)
    written = report.write(evidence, out)
    assert victim.read_text() == "the operator's own file\n"
    assert all(p.is_file() and not p.is_symlink() for p in written)
    assert not [p for p in os.listdir(out) if p.endswith(".partial") and p != name]
