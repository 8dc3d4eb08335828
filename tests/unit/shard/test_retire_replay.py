"""A Retire replayed from the journal: one of format 4 (before a forget's last, `finished`
Retire existed: its forget left no alias resolving to the customer) retires the alias for good;
a newer one keeps the time it happened, so a restart does not restart TOMBSTONE_S."""
from __future__ import annotations

from kairos.cluster.identity import alias_key, anonymous_id, link_id
from kairos.cluster.protocol import Link, Resolve, Retire
from kairos.cluster.settings import TOMBSTONE_S
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.frames import frame
from kairos.cluster.storage.memory_store import MemoryStore
from tests.unit.shard.test_shard import Clock, p_of, shard

KEY = alias_key("cookie", "a")


def for_forget(key: str) -> Resolve:
    return Resolve(partition=p_of(key), key=key, for_forget=True)


def test_a_format_4_retire_replays_as_its_forget_finished(compiled, tmp_path):
    link = Link(partition=p_of(KEY), key=KEY, customer_id="ana")
    retire = Retire(partition=p_of(KEY), key=KEY, customer_id="ana")
    journal = tmp_path / "journals" / "s0"
    journal.mkdir(parents=True)
    (journal / f"{1:020d}.log").write_bytes(
        frame(1, [list(link), list(retire)[:4]], journal_format=4))
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=Clock())
    s.recover()
    assert s.process([for_forget(KEY)])[0][0].value == anonymous_id(KEY)
    assert not any(s.directory.retiring.values())
    assert s.directory.is_buried(p_of(KEY), link_id(KEY, "ana"), s.ctx.clock())
    assert s.process([link])[0][0].status == "conflict"  # the link's late step 1


def test_a_replayed_retire_keeps_its_time(compiled):
    store, clock = MemoryStore(shared=True), Clock()
    s = shard(compiled, store=store, clock=clock)
    s.process([Retire(partition=p_of(KEY), key=KEY, customer_id="ana")])
    clock.now += TOMBSTONE_S - 10
    s.close()
    s = shard(compiled, store=store, clock=clock)
    s.recover()  # from the journal
    assert s.process([for_forget(KEY)])[0][0].value == "ana"
    clock.now += 20  # TOMBSTONE_S after the Retire, not after the restart
    assert s.process([for_forget(KEY)])[0][0].value == anonymous_id(KEY)
    assert not s.directory.is_buried(p_of(KEY), link_id(KEY, "ana"), clock.now)
