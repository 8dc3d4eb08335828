"""Two incarnations of one shard name on one store (a second cluster that resumed from a
controller's lapsed claim; Ray restarting a shard whose node it declared dead while the old
process runs on): the journal's owner is the one started last, so the old one writes nothing
more (no append, snapshot, home or truncation) and its rebuild stays down, and no snapshot
older than the newest of its journal lands (an acknowledged event was lost so: review rev41
storage finding 1). A snapshot that is older all the same (an older Kairos wrote it, a copy
restored) stops recovery as corrupt rather than losing what the journal no longer holds
(finding 2)."""
from __future__ import annotations

import asyncio
import math

import pytest

from kairos.cluster.protocol import EventAck
from kairos.cluster.shard.host import ShardHost
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.redis_store import RedisStore
from kairos.cluster.storage.store import JournalFenced, StoreCorrupt

from tests.unit.storage.conftest import redis_server  # noqa: F401 (a fixture)

from .test_shard import N_PARTITIONS, T0, event, p_of, profile, shard

EVERY = {p: 0 for p in range(N_PARTITIONS)}


def opener(kind: str, tmp_path, request):
    """Opens a new store object on the same data each call (as each shard process does)."""
    if kind == "redis":
        url = f"{request.getfixturevalue('redis_server').url}?prefix={request.node.name}"
        return lambda: RedisStore(url)
    if kind == "directory":
        return lambda: DirectoryStore(tmp_path)
    memory = MemoryStore(shared=True)
    return lambda: memory


def applied(s, customer: str, t: float = T0 + 100) -> int:
    return s.process([profile(customer, t)])[0][0].value["events_applied"]


def owned_by(open_store, owner: str, claim: bool = True):
    store = open_store()
    store.own_journal("s0", owner, claim=claim)
    return store


@pytest.mark.parametrize("kind", ["directory", "redis"])
def test_the_old_incarnation_of_a_shard_name_writes_nothing_once_a_new_one_started(
        compiled, tmp_path, request, kind):
    """The review's probe with owners: the new incarnation claims the journal at its start,
    acknowledges a second event and checkpoints (its snapshot, then the journal truncated);
    the old one's checkpoint, rounds and rebuild are refused, and a later recovery has both
    events."""
    open_store = opener(kind, tmp_path, request)
    old = shard(compiled, "s0", store=owned_by(open_store, "old"))
    assert old.process([event("ana", "app_open", T0)])[0] == [EventAck(sequence=1)]
    new = shard(compiled, "s0", store=owned_by(open_store, "new"))
    new.recover()
    assert new.process([event("ana", "app_open", T0 + 1)])[0] == [EventAck(sequence=2)]
    new.checkpoint(math.inf, N_PARTITIONS)
    with pytest.raises(JournalFenced, match="another incarnation"):
        old.checkpoint(math.inf, N_PARTITIONS)
    with pytest.raises(JournalFenced, match="another incarnation"):
        old.snapshot([p_of("ana")])
    with pytest.raises(JournalFenced, match="another incarnation"):
        old.store.put(p_of("ana"), "ana", b"stale", unless_fenced="s0")
    with pytest.raises(Exception, match="another incarnation"):
        old.process([event("bob", "app_open", T0 + 2)])
    with pytest.raises(JournalFenced, match="another incarnation"):
        owned_by(open_store, "old", claim=False)  # its rebuild stays down
    assert new.process([event("ana", "app_open", T0 + 3)])[0] == [EventAck(sequence=3)]
    fresh = shard(compiled, "s0", store=owned_by(open_store, "new", claim=False))
    fresh.recover()
    assert applied(fresh, "ana") == 3
    assert type(fresh.process([profile("bob", T0 + 100)])[0][0]).__name__ == "Missing"


@pytest.mark.parametrize("kind", ["directory", "redis"])  # memory: one journal object
def test_a_snapshot_older_than_the_newest_of_its_journal_is_refused(
        compiled, tmp_path, request, kind):
    """The review's probe as it was (no owners, as a caller that claims none): the old
    incarnation's snapshot, at an LSN below the one the new incarnation wrote, is refused, so
    a recovery has both events."""
    open_store = opener(kind, tmp_path, request)
    old = shard(compiled, "s0", store=open_store())
    old.process([event("ana", "app_open", T0)])
    new = shard(compiled, "s0", store=open_store())
    new.recover()
    new.process([event("ana", "app_open", T0 + 1)])
    new.checkpoint(math.inf, N_PARTITIONS)
    with pytest.raises(JournalFenced, match="at LSN 1 is refused: one at LSN 2"):
        old.checkpoint(math.inf, N_PARTITIONS)
    fresh = shard(compiled, "s0", store=open_store())
    fresh.recover()
    assert applied(fresh, "ana") == 2


@pytest.mark.parametrize("kind", ["directory", "redis", "memory"])
def test_a_snapshot_written_over_a_newer_one_of_its_journal_stops_recovery_as_corrupt(
        compiled, tmp_path, request, kind):
    """A partition's snapshot older than the newest written of its journal (an older Kairos
    wrote it over, or a copy was restored), the journal truncated behind the newer one: the
    recovery is StoreCorrupt, not one that silently lacks an acknowledged event. A quiet
    partition's snapshot, older than the truncation point, is no alarm."""
    open_store = opener(kind, tmp_path, request)
    s = shard(compiled, "s0", store=open_store())
    s.process([event("bob", "app_open", T0), event("ana", "app_open", T0)])
    s.checkpoint(math.inf, N_PARTITIONS)
    older = s.store.get_snapshot(p_of("ana"))
    s.process([event("ana", "app_open", T0 + 1)])
    s.checkpoint(math.inf, N_PARTITIONS)  # ana's snapshot at LSN 3; bob's stays at 2
    quiet = shard(compiled, "s0", store=open_store())
    quiet.recover()
    assert (applied(quiet, "ana"), applied(quiet, "bob")) == (2, 1)
    s.store.put_snapshots({p_of("ana"): older})  # written over, checking nothing
    with pytest.raises(StoreCorrupt, match=f"partition {p_of('ana')} .* up to LSN 2, but one "
                                           f"up to LSN 3"):
        shard(compiled, "s0", store=open_store()).recover()


@pytest.mark.parametrize("kind", ["directory", "redis"])
def test_a_shard_started_again_elsewhere_owns_its_journal_and_the_old_one_stays_down(
        compiled, tmp_path, request, kind):
    """ShardHost: a start claims the journal for the host's incarnation, a rebuild does not.
    The old host's next round answers UNAVAILABLE and its rebuild stays down; the new one
    serves both events."""
    open_store = opener(kind, tmp_path, request)

    def host() -> ShardHost:
        return ShardHost("s0", N_PARTITIONS, 0, open_store, "fsync", tick_s=3600.0)

    async def main():
        old = host()
        await old.start(compiled, EVERY, [])
        assert await old.handle("a", 0, [event("ana", "app_open", T0)], [0]) == \
            [EventAck(sequence=1)]
        new = host()
        await new.start(compiled, EVERY, [])
        assert new.shard is not None, new.recovery
        assert await new.handle("b", 0, [event("ana", "app_open", T0 + 1)], [0]) == \
            [EventAck(sequence=2)]
        late, = await old.handle("a", 1, [event("ana", "app_open", T0 + 2)], [0])
        assert late.status == "unavailable" and "another incarnation" in late.reason
        await asyncio.sleep(0.5)  # it rebuilds, and retries: the journal stays the new one's
        assert old.shard is None and old.recovery["disowned"]  # the controller knows new
        old.stop()
        await new.run(lambda s: s.checkpoint(math.inf, N_PARTITIONS))
        reads = await new.handle("b", 1, [profile("ana", T0 + 3)], [0])
        assert reads[0].value["events_applied"] == 2
        new.stop()
        new.shard.close()
    asyncio.run(asyncio.wait_for(main(), 30))
