"""A Forget replayed after its customer's id was made again and that new profile passivated
(its home stamped past the Forget): replay keeps the new home, but the forget's tombstones,
its decision-log erasure and its journal erasure are done all the same (durability.py's
`_forget_beside`), after a crash as after a rebuild from a failed erase."""
from __future__ import annotations

from pathlib import Path

from kairos.cluster.protocol import INVALID, Outcome
from kairos.cluster.shard.shard import Shard
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.store import StoreUnavailable
from tests.unit.shard.test_erasure_order import files_holding
from tests.unit.shard.test_shard import T0, Clock, decide, event, forget, p_of, profile, shard

C = "ana-7f3e"


def remade(compiled, root: Path, crash: bool) -> tuple[Shard, Outcome]:
    """Ana decided for, forgotten, made again by an event and passivated (the shard thrown
    away and recovered, if `crash`); and an outcome of the decision issued before the forget."""
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(root), clock=clock)
    s.recover()
    shown = s.process([event(C, "app_open", T0), decide(C)])[0][1].value
    assert s.process([forget(C)])[0][0].existed
    clock.now += 1
    s.process([event(C, "app_open", clock.now)])
    assert s.passivate(clock.now + 10**6) == 1
    if crash:
        s = shard(compiled, store=DirectoryStore(root), clock=clock)
        s.recover()
    clock.now += 1
    return s, Outcome(partition=p_of(C), customer_id=C, action_id=shown.actions[0].action_id,
                      channel="web", outcome="accept", when=clock.now,
                      decision_id=shown.decision_id)


def test_a_crash_keeps_the_forgets_tombstone_and_the_new_profile(compiled, tmp_path):
    control, late = remade(compiled, tmp_path / "control", crash=False)
    crashed, _ = remade(compiled, tmp_path / "crashed", crash=True)
    p = p_of(C)
    # the tombstones are keyed by a hash under each store's own secret
    assert {**crashed.directory.export([p]), "forgotten": None} == \
        {**control.directory.export([p]), "forgotten": None}
    assert crashed.directory.forgotten_at(p, C) == control.directory.forgotten_at(p, C) == T0
    for s in (control, crashed):
        assert s.process([late])[0][0].status == INVALID
    now = late.when
    assert crashed.process([profile(C, now)]) == control.process([profile(C, now)])
    assert crashed.process([profile(C, now)])[0][0].value["history"] == []


def test_a_crash_still_erases_the_forgotten_records(compiled, tmp_path):
    s, _ = remade(compiled, tmp_path, crash=True)
    s.tick()
    assert [f for f in files_holding(tmp_path, C)
            if f.startswith(("journals", "decisions"))] == []


def test_a_rebuild_after_a_failed_erase_keeps_the_tombstone(compiled, tmp_path):
    """The tick passivates the new profile (a limit of one resident), then its erase's
    snapshot fails (a full disk): the shard rebuilt from the store replays the forget."""
    clock = Clock()
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock, resident_limit=1)
    s.recover()
    shown = s.process([event(C, "app_open", T0), decide(C)])[0][1].value
    s.process([forget(C)])
    clock.now += 1
    s.process([event(C, "app_open", clock.now), event("bob", "app_open", clock.now + 1)])

    def full(*args, **kwargs):
        raise StoreUnavailable("writing snapshots: [Errno 28] No space left on device")
    s.store.put_snapshots = full
    try:
        s.tick()
    except StoreUnavailable:
        pass
    else:
        raise AssertionError("the erase's snapshot was expected to fail")
    assert s.counts["passivations"] >= 1
    s = shard(compiled, store=DirectoryStore(tmp_path), clock=clock, resident_limit=1)
    s.recover()
    late = Outcome(partition=p_of(C), customer_id=C, action_id=shown.actions[0].action_id,
                   channel="web", outcome="accept", when=clock.now + 2,
                   decision_id=shown.decision_id)
    assert s.process([late])[0][0].status == INVALID
