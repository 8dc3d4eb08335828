"""Only a Decide whose `log` is False is a preview: any other value (a peer's None, 0 or
"false" over the data plane) is logged and counted, as a Decide is by default. It was read by
truthiness, so 0 or None made a decision nobody's evidence."""
from __future__ import annotations

from kairos.cluster.storage.memory_store import MemoryStore

from tests.unit.shard.test_decision_log import logged
from tests.unit.shard.test_shard import T0, Clock, decide, event, shard


def test_a_decide_is_a_preview_only_when_log_is_false(compiled):
    s = shard(compiled, store=MemoryStore(), clock=Clock(T0))
    s.process([event("kei", "complaint", T0 - 60, topic="delivery", severity="high")])
    odd = [decide("kei", "web", None)._replace(log=v) for v in (None, 0, "false", "")]
    replies, _ = s.process(odd + [decide("kei", "web", None)._replace(log=False)])
    decisions, _ = logged(s.store)
    assert [d.decision_id for d in decisions] == [r.value.decision_id for r in replies[:4]]
    assert s.by_channel == {"web": 4}
