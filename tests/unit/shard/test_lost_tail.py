"""A journal that lost its tail while a snapshot naming a later LSN of it stayed (journal policy
"os" on a directory: the snapshot is fsynced, the journal is left to the operating system, and
a power cut takes its page-cache tail): recovery moves the journal's next LSN past the
snapshot's, so the events acknowledged after the restart are snapshotted and replayed, not
refused or skipped (review rev41 d-fence, finding 2). A Redis server keeps a prefix of its
writes, so there the same is damage from outside (StoreCorrupt)."""
from __future__ import annotations

import math
import shutil

import pytest

from kairos.cluster.protocol import EventAck
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.journal import Journal
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.storage.store import StoreCorrupt

from tests.unit.storage.conftest import redis_server  # noqa: F401 (a fixture)

from .test_same_name import applied
from .test_shard import N_PARTITIONS, T0, event, p_of, shard


def opened(root) -> DirectoryStore:
    store = DirectoryStore(root)
    store.own_journal("s0", "inc", claim=True)
    return store


def power_cut(compiled, root, tmp_path):
    """Three events acknowledged under "os", a snapshot of ana's partition at LSN 3 written,
    and the journal put back as the disk held it after the first: a restarted shard."""
    s = shard(compiled, "s0", store=opened(root), journal_policy="os")
    s.recover()
    s.process([event("ana", "app_open", T0)])
    on_disk = tmp_path / "on-disk"
    shutil.copytree(root / "journals" / "s0", on_disk)
    s.process([event("ana", "app_open", T0 + 1)])
    s.process([event("ana", "app_open", T0 + 2)])
    s.snapshot([p_of("ana")])
    assert s.store.snapshot_lsn(p_of("ana")) == ("s0", 3)
    shutil.rmtree(root / "journals" / "s0")
    shutil.copytree(on_disk, root / "journals" / "s0")
    restarted = shard(compiled, "s0", store=opened(root), journal_policy="os")
    restarted.recover()
    return restarted


def test_events_acknowledged_after_a_power_cut_took_the_journal_s_tail_are_kept(
        compiled, tmp_path):
    root = tmp_path / "store"
    s = power_cut(compiled, root, tmp_path)
    assert s.journal.last_lsn == 3  # past the snapshot: no LSN of it given out again
    assert s.process([event("ana", "app_open", T0 + 3)])[0] == [EventAck(sequence=4)]
    s.process([event("bob", "app_open", T0 + 3)])
    rebuilt = shard(compiled, "s0", store=opened(root), journal_policy="os")
    rebuilt.recover()  # replays past the gap, from the snapshot at 3
    assert (applied(rebuilt, "ana"), applied(rebuilt, "bob")) == (4, 1)
    s.checkpoint(math.inf, N_PARTITIONS)  # not refused as another incarnation's
    assert s.store.snapshot_lsn(p_of("ana")) == ("s0", 5)
    again = shard(compiled, "s0", store=opened(root), journal_policy="os")
    again.recover()
    assert (applied(again, "ana"), applied(again, "bob")) == (4, 1)


def test_the_gap_a_lost_tail_left_is_kept_across_reopening(compiled, tmp_path):
    """Reopened before anything more was journaled, the journal still goes on past the gap,
    and reads across it."""
    root = tmp_path / "store"
    power_cut(compiled, root, tmp_path).journal.close()
    journal = Journal(root / "journals" / "s0", "os")
    assert journal.last_lsn == 3
    journal.append([["a record"]])
    journal.close()
    assert [lsn for lsn, _ in Journal(root / "journals" / "s0", "os").replay()] == [1, 4]


def test_a_redis_journal_behind_a_snapshot_of_it_is_corrupt(compiled, request):
    url = f"{request.getfixturevalue('redis_server').url}?prefix={request.node.name}"
    s = shard(compiled, "s0", store=RedisStore(url), journal_policy="os")
    s.process([event("ana", "app_open", T0), event("ana", "app_open", T0 + 1)])
    s.snapshot([p_of("ana")])
    s.store.r.set(f"{request.node.name}:j:s0:last", 1)  # changed from outside
    with pytest.raises(StoreCorrupt, match="ends at LSN 1, but a snapshot covers it up to "
                                           "LSN 2"):
        shard(compiled, "s0", store=RedisStore(url), journal_policy="os").recover()
