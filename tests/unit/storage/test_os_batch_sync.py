"""Under journal policy "os" a batch of homes (a passivation) or a checkpoint's snapshots sync
the journal once, up to the LSN they name, however many rounds append meanwhile: a sync that
covers it already is skipped. Before, each chunk of homes (FENCE_HOLD_HOMES, or FENCE_HOLD_S of
writing) and each snapshot write fsynced the segment and the directory again whenever a round
had appended since (review rev41 d-last finding 3: 7 to 22 pairs for 1,000 homes under a
thread appending every 0.5 ms, measured). What they name is still on disk before they are."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from kairos.cluster.storage import directory_store
from kairos.cluster.storage.directory_store import DirectoryStore

HOMES = 300


@pytest.fixture
def disk(tmp_path, monkeypatch):
    """The store, its journal "s0" under "os", and the fsyncs in order: "segment" (the
    journal's, with the last LSN then appended), "journal dir", or "home"."""
    store = DirectoryStore(tmp_path)
    journal = store.journal("s0", "os")
    journal.append([["event", 0]])
    seen: list[tuple[str, int]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        real(fd)
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.suffix == ".log":
            seen.append(("segment", journal.last_lsn))
        elif path == journal.directory.resolve():
            seen.append(("journal dir", journal.last_lsn))
        elif path.suffix == ".tmp" and ".blk." in path.name:  # a home (staged: the store's)
            seen.append(("home", 0))

    monkeypatch.setattr(os, "fsync", fsync)
    return store, journal, seen


def journal_syncs(seen: list[tuple[str, int]]) -> list[int]:
    return [lsn for what, lsn in seen if what == "segment"]


def test_a_batch_of_homes_syncs_the_journal_once_while_rounds_append_between_homes(disk,
                                                                                  monkeypatch):
    store, journal, seen = disk
    monkeypatch.setattr(directory_store, "FENCE_HOLD_HOMES", 16)  # many chunks
    named = journal.append([["event", 1]])  # what the homes name: not on disk yet

    def homes():
        for i in range(HOMES):
            journal.append([["event", i]])  # a round between two homes
            yield 0, f"c{i}", b"x" * 100

    store.put_many(homes(), unless_fenced="s0", lsn=named)
    assert journal_syncs(seen) == [named + 1]  # one, before any home was written
    assert seen.index(("segment", named + 1)) < seen.index(("home", 0))
    assert seen.count(("journal dir", named + 1)) == 1
    assert sum(1 for what, _ in seen if what == "home") == HOMES


def test_homes_under_a_thread_appending_sync_once_and_none_once_covered(disk, monkeypatch):
    store, journal, seen = disk
    monkeypatch.setattr(directory_store, "FENCE_HOLD_HOMES", 16)
    named = journal.last_lsn
    stop = threading.Event()

    def rounds() -> None:
        while not stop.is_set():
            journal.append([["event", "y"]])
            time.sleep(0.0002)

    appender = threading.Thread(target=rounds)
    appender.start()
    try:
        store.put_many(((0, f"c{i}", b"x" * 100) for i in range(HOMES)),
                       unless_fenced="s0", lsn=named)
        first = len(journal_syncs(seen))
        store.put_many(((1, f"c{i}", b"x" * 100) for i in range(HOMES)),
                       unless_fenced="s0", lsn=named)  # covered by the first batch's sync
    finally:
        stop.set()
        appender.join()
    assert first == 1
    assert len(journal_syncs(seen)) == 1
    assert journal_syncs(seen)[0] >= named


def test_a_checkpoints_snapshots_sync_the_journal_once(disk):
    store, journal, seen = disk
    lsn = journal.append([["event", 1]])
    for p in range(64):  # a checkpoint writes one partition at a time
        store.put_snapshots({p: b"s" * 100}, unless_fenced="s0", lsn=lsn)
        journal.append([["event", p]])  # a round between them
    assert journal_syncs(seen) == [lsn]


def test_homes_past_what_was_synced_are_synced_for(disk):
    """Skipping never leaves a home naming an LSN the disk may not hold."""
    store, journal, seen = disk
    store.put_many([(0, "a", b"x")], unless_fenced="s0", lsn=journal.last_lsn)
    later = journal.append([["event", 2]])
    store.put_many([(0, "b", b"x")], unless_fenced="s0", lsn=later)
    store.put(0, "c", b"x", unless_fenced="s0")  # no LSN given: all appended
    journal.append([["event", 3]])
    store.put(0, "d", b"x", unless_fenced="s0")
    assert journal_syncs(seen) == [1, later, later + 1]
