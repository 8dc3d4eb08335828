"""The replay report's files are written under names of their own and renamed: a link planted
under a report's name in a shared --out folder is replaced, and its target left as it was
(write() followed replay.json.partial, replay.md and replay.png's links before); each file
gets the mode a plain open() gives it, as before the rename."""
from __future__ import annotations

import os
import stat
from typing import Any

import pytest

from kairos.cluster.evidence import evaluation, report

from tests.unit.evidence.test_interval_range import accepting_log


def evidence() -> dict[str, Any]:
    made = evaluation.evaluate(accepting_log(0))
    made.update(log="log.jsonl", candidate={"name": "c", "version": "1"}, samples=64,
                candidate_error=0.0625, models="priors")  # what `kairos replay` adds
    return made


@pytest.mark.parametrize("name", ["replay.json.partial", "replay.md", "replay.png"])
def test_a_link_under_a_reports_name_is_replaced_and_its_target_kept(name, tmp_path):
    if name == "replay.png":
        pytest.importorskip("matplotlib")
    victim = tmp_path / "victim"
    victim.write_text("the operator's own file\n")
    out = tmp_path / "shared"
    out.mkdir()
    (out / name).symlink_to(victim)
    written = report.write(evidence(), out)
    assert victim.read_text() == "the operator's own file\n"
    assert all(p.is_file() and not p.is_symlink() for p in written)
    assert not [p for p in os.listdir(out) if p.endswith(".partial") and p != name]


def test_a_link_to_a_folder_under_a_reports_name_is_replaced_not_refused(tmp_path):
    """unwritable() followed the link and refused it as a folder, though the rename replaces
    the link; a folder itself is still refused (tests/unit/cli/test_offline_errors.py)."""
    folder = tmp_path / "folder"
    folder.mkdir()
    out = tmp_path / "shared"
    out.mkdir()
    (out / "replay.md").symlink_to(folder)
    assert report.unwritable(out) is None
    report.write(evidence(), out)
    assert (out / "replay.md").is_file() and not (out / "replay.md").is_symlink()
    assert folder.is_dir() and not list(folder.iterdir())


def test_the_report_files_have_the_mode_open_gives(tmp_path):
    """mkstemp made them 0600 (0644 under umask 022 before they were renamed into place):
    aggregate figures, in a --out folder others may share."""
    plain = tmp_path / "plain"
    plain.write_text("")  # as open() makes a file, under this process's umask
    written = report.write(evidence(), tmp_path / "out")
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == \
        {stat.S_IMODE(plain.stat().st_mode)}


def test_the_umask_is_read_as_it_is():
    previous = os.umask(0o027)
    try:
        assert report._umask() == 0o027
    finally:
        os.umask(previous)
