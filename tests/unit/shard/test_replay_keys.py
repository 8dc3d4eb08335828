"""Replay applies every journaled event and outcome again: a record exists only for one that
was applied, so a key it carries is no reason to skip it, even when the key was applied twice
(its window had closed in between) and replay re-remembers it at the recovery's clock."""
from __future__ import annotations

from kairos.cluster.protocol import EventAck, Ok
from kairos.core.decision import Learned

from .test_outcome_keys import converted
from .test_shard import T0, Clock, keyed, shard


def test_a_key_applied_again_after_its_window_is_applied_twice_on_replay(compiled, monkeypatch):
    monkeypatch.setattr("kairos.cluster.shard.keys.KEY_RETENTION_S", 30.0)
    clock = Clock()
    s = shard(compiled, clock=clock)
    first = [keyed("ana", "K", T0), converted("ana", "O", T0)]
    assert s.process(first)[0] == [EventAck(sequence=1), Ok(value=Learned.PROFILE_NO_DECISION)]
    clock.now += 31  # both windows closed: the same keys apply again (as documented)
    again = [keyed("ana", "K", T0 + 31), converted("ana", "O", T0 + 31)]
    assert s.process(again)[0] == [EventAck(sequence=2), Ok(value=Learned.PROFILE_NO_DECISION)]
    rebuilt = shard(compiled, clock=clock, store=s.store)
    rebuilt.recover()
    assert rebuilt.engine.table.applied[rebuilt.engine.table.index["ana"]] == 2
    assert [h["outcome"] for h in rebuilt.engine.history("ana")] == ["convert", "convert"]
    # and the keys are remembered again: a retry now is a duplicate
    assert rebuilt.process(again)[0] == \
        [EventAck(sequence=2, duplicate=True), Ok(value=Learned.DUPLICATE)]
