"""whole_files.replacing: the file is whole or absent, a link under its name is replaced (its
target kept), and a block that raises leaves nothing behind."""
from __future__ import annotations

import os
import stat

import pytest

from kairos.cluster import whole_files


def test_a_link_under_the_name_is_replaced_and_its_target_kept(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("kept")
    (tmp_path / "out").symlink_to(victim)
    with whole_files.replacing(tmp_path / "out", sync=True) as f:
        f.write(b"new")
    assert victim.read_text() == "kept"
    assert not (tmp_path / "out").is_symlink() and (tmp_path / "out").read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o600


def test_a_block_that_raises_leaves_the_old_file_and_no_partial(tmp_path):
    (tmp_path / "out").write_text("old")
    with pytest.raises(RuntimeError), whole_files.replacing(tmp_path / "out", 0o644) as f:
        f.write(b"half")
        raise RuntimeError("cut")
    assert (tmp_path / "out").read_text() == "old" and os.listdir(tmp_path) == ["out"]


def test_a_folder_that_is_not_there_is_said_as_the_block_starts(tmp_path):
    with pytest.raises(FileNotFoundError):
        with whole_files.replacing(tmp_path / "missing" / "out"):
            pytest.fail("the block ran")
