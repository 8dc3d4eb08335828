"""A gap's file holds the gap's last LSN, and replay accepts past it only a segment that
starts right after it: an acknowledged segment lost after the gap is JournalCorrupt, as it is
with no gap (an empty file accepted any later segment: review rev43 d-durability finding 4).
An empty file, as the first gap's files were written, still accepts what it did."""
from __future__ import annotations

import pytest

from kairos.cluster.storage.frames import JournalCorrupt
from kairos.cluster.storage.journal import Journal

from tests.unit.storage.test_journal_gaps import inspected, lsns, records, torn


def past_a_gap(directory) -> list:
    """A torn tail kept (LSNs 4 on), then two segments after the gap; their paths."""
    past = torn(directory)
    j = Journal(directory, segment_bytes=1)
    j.append(records(7, 2))
    j.append(records(9, 2))
    j.close()
    segments = sorted(directory.glob("*.log"))
    assert lsns(directory) == [1, 2, 3, past + 1, past + 2, past + 3, past + 4]
    return segments


def test_a_segment_lost_after_a_gap_is_seen(tmp_path):
    segments = past_a_gap(tmp_path)
    inspected(tmp_path)
    segments[1].unlink()
    with pytest.raises(JournalCorrupt, match="do not quarantine"):
        lsns(tmp_path)


def test_a_gap_s_file_holds_its_last_lsn(tmp_path):
    past = torn(tmp_path)
    Journal(tmp_path).close()
    gap, = tmp_path.glob("*.gap")
    assert int(gap.name[:-4]) == 4 and gap.read_bytes() == str(past).encode()


def test_an_empty_gap_s_file_accepts_any_later_segment_as_before(tmp_path):
    segments = past_a_gap(tmp_path)
    inspected(tmp_path)
    gap, = tmp_path.glob("*.gap")
    gap.write_bytes(b"")
    segments[1].unlink()
    assert lsns(tmp_path)[:3] == [1, 2, 3]


def test_a_quarantined_segment_after_a_gap_is_accepted_past_both(tmp_path):
    """The operator quarantines the segment after the gap: its own gap is recorded on the
    next opening, and replay goes past both."""
    segments = past_a_gap(tmp_path)
    (tmp_path / "quarantine" / segments[1].name).write_bytes(segments[1].read_bytes())
    segments[1].unlink()
    Journal(tmp_path).close()
    inspected(tmp_path)
    assert lsns(tmp_path)[:3] == [1, 2, 3] and len(lsns(tmp_path)) == 5
