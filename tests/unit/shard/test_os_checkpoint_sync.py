"""Under journal policy "os" the journal is fsynced before a snapshot or a home names its LSNs
(the store syncs it first), so a power cut takes no LSN they name: a home stamped past the
journal's end after the cut made replay skip that customer's events acknowledged after the
restart (review rev41 d-fence round 2, finding 2), and a snapshot past it left a gap
(`skip_past`, now the backstop for damage). The power cut here keeps of each segment what its
last fsync found, and only the names a directory fsync found."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from kairos.cluster.protocol import EventAck
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.journal import Journal

from .test_journal import records
from .test_same_name import applied
from .test_shard import T0, Clock, event, p_of, shard


class Disk:
    """What a power cut leaves of the journal in `directory`, from the fsyncs seen."""

    def __init__(self, directory: Path, monkeypatch):
        self.directory = directory
        self.kept: dict[str, bytes] = {}  # segment -> its bytes at its last fsync
        self.named: set[str] = set()  # segments a directory fsync found
        self.fsyncs: list[str] = []
        real = os.fsync

        def fsync(fd: int) -> None:
            real(fd)
            path = Path(os.readlink(f"/proc/self/fd/{fd}"))
            if path == directory:
                self.named = {p.name for p in directory.glob("*.log")}
            elif path.parent == directory and path.suffix == ".log":
                self.kept[path.name] = path.read_bytes()
            else:
                return
            self.fsyncs.append(path.name)
        monkeypatch.setattr(os, "fsync", fsync)

    def cut(self) -> None:
        for path in self.directory.glob("*.log"):
            if path.name in self.named:
                path.write_bytes(self.kept.get(path.name, b""))
            else:
                path.unlink()


def opened(root) -> DirectoryStore:
    store = DirectoryStore(root)
    store.own_journal("s0", "inc", claim=True)
    return store


@pytest.mark.parametrize("written", ["home", "snapshot"])
def test_a_power_cut_takes_no_lsn_a_home_or_snapshot_names(compiled, tmp_path, monkeypatch,
                                                            written):
    root, clock = tmp_path / "store", Clock()
    s = shard(compiled, "s0", store=opened(root), journal_policy="os", clock=clock, idle_s=60.0)
    s.recover()
    disk = Disk(root / "journals" / "s0", monkeypatch)
    for i in range(3):
        s.process([event("ana", "app_open", T0 + i)])
    if written == "home":
        clock.now += 61
        assert s.passivate(clock.now) == 1  # its home is stamped 3
    else:
        s.snapshot([p_of("ana")])
    disk.cut()
    monkeypatch.undo()
    restarted = shard(compiled, "s0", store=opened(root), journal_policy="os", clock=clock)
    restarted.recover()
    assert restarted.journal.last_lsn == 3
    assert not (root / "journals" / "s0" / "quarantine").exists()  # nothing skipped
    assert restarted.process([event("ana", "app_open", T0 + 3)])[0] == [EventAck(sequence=4)]
    rebuilt = shard(compiled, "s0", store=opened(root), journal_policy="os", clock=clock)
    rebuilt.recover()
    assert applied(rebuilt, "ana") == 4


def test_under_os_a_sync_fsyncs_what_was_written_since_the_last_and_a_roll_the_segment(
        tmp_path, monkeypatch):
    disk = Disk(tmp_path, monkeypatch)
    j = Journal(tmp_path, policy="os", segment_bytes=2000)
    j.append(records(0, 5))
    assert disk.fsyncs == []  # appends leave it to the operating system
    j.sync()
    assert disk.fsyncs == ["00000000000000000001.log", tmp_path.name]  # the segment, its name
    j.sync()
    assert len(disk.fsyncs) == 2  # nothing new
    while len(list(tmp_path.glob("*.log"))) < 2:
        j.append(records(j.last_lsn, 10))
    assert disk.fsyncs[2:] == ["00000000000000000001.log"]  # the segment it closed
    j.sync()
    disk.cut()
    j.close()
    assert Journal(tmp_path, policy="os").last_lsn == j.last_lsn
