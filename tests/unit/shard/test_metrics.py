"""What a shard's tallies become as metrics."""
from __future__ import annotations

from collections import Counter as Tally

from kairos.cluster.metrics import ShardMetrics
from kairos.cluster.shard.context import LEARNED_COUNT

from tests.support.metrics import Recorder


def test_outcomes_are_counted_by_what_they_taught_from():
    shard = ShardMetrics("s1")
    shard.learned = Recorder()
    for decided, offline in ((2, 0), (2, 1), (5, 1)):
        shard.flush(Tally({LEARNED_COUNT + "decision": decided,
                           LEARNED_COUNT + "profile_no_decision": offline}),
                    Tally(), Tally(), 0, 0, 0, 0.0, 0)
    assert shard.learned.calls == [
        (2, {"shard": "s1", "learned_from": "decision"}),
        (1, {"shard": "s1", "learned_from": "profile_no_decision"}),
        (3, {"shard": "s1", "learned_from": "decision"})]
