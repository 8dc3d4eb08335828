"""L3: an append whose write fails cuts what it wrote (never half a batch behind); should the
cut itself fail, the write's error is still the one raised (the cut's chained to it) and the
journal appends nothing more after the half frame; closing it cuts the frame off."""
from __future__ import annotations

import errno
import os

import pytest

from kairos.cluster.storage.journal import Journal


def test_a_failed_cut_after_a_failed_write_stops_the_journal_and_keeps_the_writes_error(
        tmp_path, monkeypatch):
    journal = Journal(tmp_path / "j", "fsync")
    assert journal.append([["alice", 1]]) == 1
    real_write, real_ftruncate = os.write, os.ftruncate

    def half_then_fail(fd: int, data: bytes) -> int:
        monkeypatch.setattr(os, "write", failing_write)
        return real_write(fd, data[:len(data) // 2])

    def failing_write(fd: int, data: bytes) -> int:
        raise OSError(errno.EIO, "write failed")

    def failing_ftruncate(fd: int, size: int) -> None:
        monkeypatch.setattr(os, "ftruncate", real_ftruncate)  # once
        raise OSError(errno.EIO, "ftruncate failed")

    monkeypatch.setattr(os, "write", half_then_fail)
    monkeypatch.setattr(os, "ftruncate", failing_ftruncate)
    with pytest.raises(OSError) as raised:
        journal.append([["bob", 2]])
    monkeypatch.setattr(os, "write", real_write)
    assert raised.value.strerror == "write failed"
    assert raised.value.__cause__.strerror == "ftruncate failed"
    assert journal.failed is not None
    with pytest.raises(OSError, match="failed earlier"):
        journal.append([["carol", 3]])  # never written after the half frame
    journal.close()  # cuts what no sync covered: the half frame
    assert list(Journal(tmp_path / "j", "fsync").replay()) == [(1, ["alice", 1])]


def test_closing_after_a_failed_cut_closes_the_file_even_when_the_cut_fails_again(
        tmp_path, monkeypatch):
    """The closing cut fails too: its error is raised, and the segment's descriptor is closed
    all the same (it was left open)."""
    journal = Journal(tmp_path / "j", "fsync")
    assert journal.append([["alice", 1]]) == 1
    fd = journal._fd

    def failing(*args) -> None:
        raise OSError(errno.EIO, "failed")

    monkeypatch.setattr(os, "write", failing)
    monkeypatch.setattr(os, "ftruncate", failing)
    with pytest.raises(OSError):
        journal.append([["bob", 2]])
    assert journal.failed is not None
    with pytest.raises(OSError, match="failed"):
        journal.close()
    monkeypatch.undo()
    assert journal._fd is None
    with pytest.raises(OSError) as closed:
        os.fstat(fd)
    assert closed.value.errno == errno.EBADF
