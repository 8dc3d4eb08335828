"""GetProfile's decisions per channel are previews (protocol.Decide's `log` False): the shard
answers them sealed, as any decision, but logs none of them and counts none in its decisions
per channel and group, so replay, `kairos uplift` and the metrics see only what a channel
showed."""
from __future__ import annotations

from kairos.cluster.protocol import Ok
from kairos.cluster.storage.memory_store import MemoryStore

from tests.unit.shard.test_decision_log import logged, respond
from tests.unit.shard.test_shard import T0, Clock, decide, event, shard


def test_previews_are_neither_logged_nor_counted_and_an_agent_may_answer_one(compiled):
    s = shard(compiled, store=MemoryStore(), clock=Clock(T0))
    s.process([event("kei", "complaint", T0 - 60, topic="delivery", severity="high")])
    previews = [decide("kei", channel, None)._replace(log=False)
                for channel in ("web", "call_center") for _ in range(3)]
    replies, _ = s.process(previews)
    [real], _ = s.process([decide("kei", "web", None)])
    decisions, _ = logged(s.store)
    assert [d.decision_id for d in decisions] == [real.value.decision_id]
    assert s.by_channel == {"web": 1}
    assert sum(s.by_group.values()) == len(real.value.actions)
    # the console's agent answers the preview of its own channel: a real outcome
    offered = replies[3].value
    assert offered.channel == "call_center" and offered.actions
    assert s.process([respond("kei", offered)])[0] == [Ok(value="decision")]
