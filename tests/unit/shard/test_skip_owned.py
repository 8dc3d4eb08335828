"""Moving a journal past a lost tail (`skip_past`) is a write: under the owner check, from the
journal's end as it is on disk (review rev41 d-fence round 2, finding 1). A disowned
incarnation's recovery wrote a `.lost` marker and a new segment into the live owner's journal,
which then gave out LSNs twice and failed its next replay."""
from __future__ import annotations

import pytest

from kairos.cluster.protocol import EventAck
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.journal import Journal
from kairos.cluster.storage.store import JournalDisowned

from .test_same_name import applied
from .test_shard import T0, event, p_of, shard


def opened(root, incarnation: str) -> DirectoryStore:
    store = DirectoryStore(root)
    store.own_journal("s0", incarnation, claim=True)
    return store


def overtaken(compiled, root):
    """Z opened the journal, then L claimed it, served six events and snapshotted at 4."""
    z = shard(compiled, "s0", store=opened(root, "Z"), journal_policy="os")
    live = shard(compiled, "s0", store=opened(root, "L"), journal_policy="os")
    live.recover()
    for i in range(4):
        live.process([event("ana", "app_open", T0 + i)])
    live.snapshot([p_of("ana")])
    for i in range(4, 6):
        live.process([event("ana", "app_open", T0 + i)])
    return z, live


def test_a_disowned_incarnation_skips_nothing_in_the_owner_s_journal(compiled, tmp_path):
    root = tmp_path / "store"
    z, live = overtaken(compiled, root)
    with pytest.raises(JournalDisowned):
        z.recover()  # the snapshot at 4 is past what z read (0)
    journal = root / "journals" / "s0"
    assert [p.name for p in journal.rglob("*") if p.suffix in (".log", ".lost")] == \
        ["00000000000000000001.log"]
    assert live.process([event("ana", "app_open", T0 + 6)])[0] == [EventAck(sequence=7)]
    live.journal.close()
    assert [lsn for lsn, _ in Journal(journal, "os").replay()] == list(range(1, 8))


def test_an_incarnation_that_claimed_its_journal_back_skips_from_the_end_on_disk(compiled,
                                                                                 tmp_path):
    """Z's view (LSN 0) is older than the journal it owns again: it goes on after L's 6."""
    root = tmp_path / "store"
    z, live = overtaken(compiled, root)
    live.journal.close()
    z.store.own_journal("s0", "Z", claim=True)
    z.recover()
    assert z.journal.last_lsn == 6 and not (root / "journals" / "s0" / "quarantine").exists()
    assert z.process([event("ana", "app_open", T0 + 6)])[0] == [EventAck(sequence=7)]
    z.journal.close()
    assert [lsn for lsn, _ in Journal(root / "journals" / "s0", "os").replay()] == \
        list(range(1, 8))
    rebuilt = shard(compiled, "s0", store=opened(root, "R"), journal_policy="os")
    rebuilt.recover()
    assert applied(rebuilt, "ana") == 7
