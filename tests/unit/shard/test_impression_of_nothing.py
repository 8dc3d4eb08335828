"""A Decide that records its impressions makes a profile for a customer nobody has seen: its
history begins. One whose decision showed nothing recorded nothing, yet made a profile, kept
resident and then in a home that outlives restarts, for an id nobody was shown anything
(shard review). Only an impression recorded makes one now."""
from __future__ import annotations

from kairos.cluster.protocol import Missing

from tests.unit.shard.test_shard import N_PARTITIONS, Clock, decide, profile, shard

NOTHING = ("web", "sidebar")  # the default catalog's view that shows an unseen customer nothing


def test_recording_the_impressions_of_a_decision_that_showed_nothing_makes_no_profile(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock, idle_s=60.0)
    written = s.journal.last_lsn
    [shown], _ = s.process([decide("ghost", *NOTHING, record_impression=True)])
    assert shown.value.actions == ()
    assert s.journal.last_lsn == written
    assert "ghost" not in s.engine.table
    assert s.process([profile("ghost")])[0] == [Missing()]
    clock.now += 120
    s.passivate(clock.now)
    assert s.store.count(range(N_PARTITIONS)) == 0


def test_a_decision_that_showed_something_makes_the_profile_in_the_same_batch_too(compiled):
    """The customer's decision that showed nothing, then one that showed something, in one
    batch: the second's impressions are its history; a resident's empty one keeps it."""
    s = shard(compiled, clock=Clock())
    replies, _ = s.process([decide("ana", *NOTHING, record_impression=True),
                            decide("ana", record_impression=True),
                            decide("ana", *NOTHING, record_impression=True)])
    assert [bool(r.value.actions) for r in replies] == [False, True, False]
    history = s.process([profile("ana")])[0][0].value["history"]
    assert [h["action_id"] for h in history] == [a.action_id for a in replies[1].value.actions]
