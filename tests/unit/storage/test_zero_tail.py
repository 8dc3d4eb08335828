"""A journal whose last segment ends in zeros (a file system that extended the file after a
power cut without its data, or preallocation): a header of length 0 announces no batch, as
none is ever written, so the zeros are a torn tail, cut quietly as a short last frame is: no
ERROR that an acknowledged batch may be lost, no `.torn` file, no LSN skipped per zero byte
(durability review rev45, finding 2: `truncated_to_header_of_last`)."""
from __future__ import annotations

import logging

import pytest

from kairos.cluster.storage.journal import Journal


def records(first: int, n: int) -> list:
    return [["event", f"c{i % 7}", "page_view", float(i), {"category": "home"}]
            for i in range(first, first + n)]


@pytest.mark.parametrize("zeros", [4096, 8, 5])
def test_a_zero_filled_tail_is_cut_quietly_and_skips_no_lsn(tmp_path, caplog, zeros):
    j = Journal(tmp_path)
    for b in range(3):
        j.append(records(b * 2, 2))
    j.close()
    (segment,) = tmp_path.glob("*.log")
    whole = segment.stat().st_size
    with open(segment, "ab") as f:
        f.write(bytes(zeros))
    with caplog.at_level(logging.WARNING, logger="kairos.store"):
        j = Journal(tmp_path)
    assert j.last_lsn == 6 and [lsn for lsn, _ in j.replay()] == [1, 2, 3, 4, 5, 6]
    assert segment.stat().st_size == whole
    assert not (tmp_path / "quarantine").exists() and not list(tmp_path.glob("*.gap"))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert j.append(records(6, 1)) == 7
    j.close()
    assert [lsn for lsn, _ in Journal(tmp_path).replay()] == [1, 2, 3, 4, 5, 6, 7]


def test_a_zeroed_header_before_a_batchs_bytes_is_damage_kept_not_a_torn_tail(tmp_path, caplog):
    """A zeroed sector over an acknowledged last frame leaves its header 0 and its records:
    kept in quarantine and flagged, its LSNs never handed out again."""
    j = Journal(tmp_path)
    for b in range(2):
        j.append(records(b * 2, 2))
    (segment,) = tmp_path.glob("*.log")
    last = segment.stat().st_size  # where the third batch's frame starts
    j.append(records(4, 2))
    j.close()
    data = bytearray(segment.read_bytes())
    data[last:last + 8] = bytes(8)
    segment.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="kairos.store"):
        j = Journal(tmp_path)
    assert [lsn for lsn, _ in j.replay()] == [1, 2, 3, 4]
    assert list((tmp_path / "quarantine").glob("*.torn"))
    assert [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert j.append(records(6, 1)) > 6
