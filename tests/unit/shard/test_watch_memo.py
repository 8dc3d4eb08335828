"""A watch decides every watched view of each customer a round changes; only a decision pushed
gives its id out, so only those are remembered: the others would push out of a full memo the
decisions that clients may answer."""
from __future__ import annotations

from tests.unit.shard.test_shard import T0, decide, event, shard


def test_watch_decisions_not_pushed_leave_the_memo_as_it_was(compiled, monkeypatch):
    monkeypatch.setattr("kairos.core.engine.DECISION_CACHE_SIZE", 30)
    s = shard(compiled)
    s.watch_channel("orchestrator", "push", None)  # an outbound orchestrator's channel watch
    s.process([decide(f"p{i}", "push", "notification") for i in range(15)])
    s.process([decide(f"w{i}", "web", "hero") for i in range(15)])

    def memo() -> dict[str, tuple[str, str]]:
        return {d: (m.customer_id, compiled.channel_names[m.channel])
                for d, m in s.engine._remembered.items()}

    first = [s.process([event(f"e{i}", "page_view", T0, category="home")])[1]
             for i in range(6)]
    assert [len(pushes) for pushes in first] == [1] * 6  # each customer's first best action
    before = memo()
    assert len(before) == 30 and sorted(c for c, channel in before.values()
                                        if c.startswith("e")) == [f"e{i}" for i in range(6)]
    for r in range(1, 10):  # a web key's events: nothing changes, nothing is pushed
        for i in range(6):
            assert s.process([event(f"e{i}", "page_view", T0 + r, category="home")])[1] == []
    assert memo() == before
