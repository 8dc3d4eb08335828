"""What Take and Forget erase, and when: a home goes only once a snapshot covers the record
that asked (under every journal policy), and a journal rewrite that fails leaves its erasures
to the next try, or to the shard rebuilt in its place (durability.py)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from kairos.cluster.identity import alias_key, anonymous_id, link_id
from kairos.cluster.protocol import Claim, Link, Settle
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.store import StoreUnavailable
from tests.unit.shard.test_shard import (N_PARTITIONS, T0, Clock, event, forget, merge, p_of,
                                         profile, shard, take)

KEY = alias_key("cookie", "zz")
ANON = anonymous_id(KEY)
LINK = link_id(KEY, "ana")


def linked(s: Shard) -> None:
    """Ana with the cookie's anonymous profile merged in: the link's four steps."""
    s.process([Claim(partition=p_of("ana"), customer_id="ana", key=KEY, link=LINK)])
    s.process([Link(partition=p_of(KEY), key=KEY, customer_id="ana")])
    state = s.process([take(ANON, LINK, "ana")])[0][0].value
    assert s.process([merge("ana", LINK, KEY, state)])[0][0].value is True


def files_holding(root: Path, text: str) -> list[str]:
    return [str(f.relative_to(root)) for f in root.rglob("*")
            if f.is_file() and text.encode() in f.read_bytes()]


def test_a_failed_snapshot_after_a_forget_keeps_its_aliases_and_tombstones(compiled, tmp_path):
    """The erase tick's snapshot fails (a full disk, the store down): the forgotten
    customer's home, which alone holds its aliases once the journal is cut, is still there
    for the rebuilt shard's replay, so a retried forget retires them and a late link step is
    refused."""
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    s.process([event("ana", "app_open", T0), event(ANON, "page_view", T0, category="home")])
    linked(s)
    s.passivate(clock.now + 10**6)  # ana lives in her home, which holds the alias
    s.checkpoint(math.inf, N_PARTITIONS)
    assert s.process([forget("ana")])[0][0].aliases == [KEY]

    def full(*args, **kwargs):
        raise StoreUnavailable("disk full")
    s.store.put_snapshots = full
    with pytest.raises(StoreUnavailable):
        s.tick()
    s.close()
    again = Shard("s0", compiled, range(N_PARTITIONS), N_PARTITIONS,
                  store=DirectoryStore(tmp_path), clock=clock)
    again.recover()
    assert again.process([forget("ana")])[0][0].aliases == [KEY]
    assert again.directory.is_buried(p_of("ana"), LINK, clock.now)
    late = again.process([Claim(partition=p_of("ana"), customer_id="ana", key=KEY, link=LINK)])
    assert late[0][0].status == "conflict"


def test_a_link_under_a_journal_that_keeps_nothing_deletes_no_home_before_a_snapshot(
        compiled, tmp_path):
    """Journal policy off (os at a power cut is alike): a crash after the link's tick,
    before a snapshot: the anonymous profile's home is still there (with no journal to
    replay, the state it handed over lived only in memory)."""
    clock = Clock()

    def started() -> Shard:
        return shard(compiled, store=DirectoryStore(tmp_path), clock=clock,
                     journal_policy="off")
    s = started()
    s.process([event(ANON, "page_view", T0 + i, category="home") for i in range(5)])
    s.passivate(clock.now + 10**6)
    s.checkpoint(math.inf, N_PARTITIONS)
    linked(s)
    s.process([Settle(partition=p_of(ANON), anonymous=ANON, link=LINK)])
    clock.now += 1
    s.tick()  # no snapshot is due yet
    assert s.store.get(p_of(ANON), ANON) is not None
    s.close()  # a crash: what only memory held is lost, the anonymous profile's home is not
    again = started()
    again.recover()
    assert again.process([profile(ANON, T0 + 10)])[0][0].value["events_applied"] == 5
    again.checkpoint(math.inf, N_PARTITIONS)  # had the link been snapshotted...
    linked(again)
    again.checkpoint(math.inf, N_PARTITIONS)  # ...the home goes once it is
    assert again.store.get(p_of(ANON), ANON) is None
    again.close()
    last = started()
    last.recover()
    assert last.process([profile("ana", T0 + 10)])[0][0].value["events_applied"] == 5


@pytest.mark.parametrize("rebuild", [False, True])
def test_a_failed_journal_rewrite_erases_the_customer_at_the_next_tick(compiled, tmp_path,
                                                                       rebuild):
    """ENOSPC while the erase tick rewrites the journal: the erasure is asked for again,
    by the same shard or the one rebuilt from the store (the snapshot names it)."""
    clock = Clock()

    def started() -> Shard:
        return shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    s = started()
    gone = "ana-secret@example.com"
    s.process([event(gone, "page_view", T0 + i, category="home") for i in range(3)])
    s.process([event("bob", "app_open", T0)])
    s.process([forget(gone)])

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    s.journal.compact = full
    with pytest.raises(OSError):
        s.tick()
    if rebuild:
        s.close()
        s = started()
        s.recover()
    else:
        del s.journal.compact  # space again: the same shard goes on
    clock.now += 120
    s.tick()
    assert files_holding(tmp_path, gone) == []


def test_an_erasure_whose_last_snapshot_fails_still_asks_the_store_to_forget(compiled,
                                                                              tmp_path):
    """The erase tick's second snapshot (the one without the ids) fails once the journal is
    rewritten: the store is still asked to forget (Redis: its AOF rewritten), as the next
    erase has nothing left to ask it for."""
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock)
    gone = "ana-secret@example.com"
    s.process([event(gone, "page_view", T0 + i, category="home") for i in range(3)])
    s.process([forget(gone)])
    asked: list[int] = []
    s.store.erased = lambda: asked.append(1)
    compact, put_snapshots = s.journal.compact, s.store.put_snapshots

    def compacted(*args, **kwargs):
        dropped = compact(*args, **kwargs)
        asked.clear()  # those before the rewrite (the first snapshot's) do not count

        def full(*args, **kwargs):
            raise StoreUnavailable("the store went away")
        s.store.put_snapshots = full  # the snapshot after the rewrite fails
        return dropped
    s.journal.compact = compacted
    with pytest.raises(StoreUnavailable):
        s.tick()
    assert asked == [1]
    s.store.put_snapshots = put_snapshots
    clock.now += 120
    s.tick()
    assert files_holding(tmp_path / "journals", gone) == []
