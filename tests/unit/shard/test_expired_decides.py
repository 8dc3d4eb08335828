"""A Decide the shard reaches after its caller stopped waiting (`expires`, the gateway's
deadline) is not decided: the gateway had answered its caller with the fallback, yet the shard
recorded the impressions of a decision nobody saw and logged it as evidence (review rev42
gateway finding 2)."""
from __future__ import annotations

import time

from kairos.cluster.protocol import EXPIRED, Ok, Unavailable
from kairos.cluster.settings import SHARD_CLOCK_SKEW_S
from kairos.cluster.storage.memory_store import MemoryStore

from tests.unit.shard.test_decision_log import logged
from tests.unit.shard.test_shard import T0, decide, shard


def test_a_decide_past_its_expiry_answers_expired_and_records_nothing(compiled):
    s = shard(compiled, store=MemoryStore())
    late = decide("ana", now=T0, record_impression=True)._replace(
        expires=time.time() - SHARD_CLOCK_SKEW_S - 0.05)
    [reply], _ = s.process([late])
    assert reply == Unavailable(reason=EXPIRED)
    assert "ana" not in s.engine.table  # no profile: no impression recorded
    assert s.counts["decisions"] == 0 and s.counts["outcomes"] == 0
    assert logged(s.store) == ([], [])


def test_a_decide_within_its_expiry_or_without_one_is_decided(compiled):
    s = shard(compiled, store=MemoryStore())
    replies, _ = s.process([
        decide("ana", now=T0, record_impression=True)._replace(expires=time.time() + 60),
        decide("bob", now=T0),
        # past it by the shard's clock, but within how far that may run ahead of the gateway's
        decide("cy", now=T0)._replace(expires=time.time() - SHARD_CLOCK_SKEW_S / 2)])
    assert all(type(r) is Ok for r in replies)
    shown = [a.action_id for a in replies[0].value.actions]
    assert [h["action_id"] for h in s.engine.history("ana")] == shown[::-1]
    decisions, outcomes = logged(s.store)
    assert len(decisions) == 3 and len(outcomes) == len(shown)
