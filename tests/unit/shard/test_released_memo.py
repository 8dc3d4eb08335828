"""A partition handed over takes its customers' decision memo entries with it: the previous
owner keeps no id nor decision input of a customer its new owner may be asked to forget."""
from __future__ import annotations

from kairos.cluster.storage.memory_store import MemoryStore
from tests.unit.shard.test_shard import T0, decide, event, forget, p_of, shard


def test_a_released_partitions_customers_leave_the_previous_owners_memo(compiled):
    store = MemoryStore(shared=True)
    a = shard(compiled, "a", store=store)
    bob = next(c for c in (f"b{i}" for i in range(500)) if p_of(c) != p_of("ana"))
    a.process([event("ana", "app_open", T0), event(bob, "app_open", T0)])
    a.process([decide("ana"), decide(bob)])
    b = shard(compiled, "b", partitions=[], store=store)
    p = p_of("ana")
    b.adopt(a.freeze([p], 2), 2)
    a.release([p], 2)
    assert b.process([forget("ana")], [2])[0][0].existed
    remembered = {m.customer_id for m in a.engine._remembered.values()}
    assert "ana" not in remembered and bob in remembered  # the partitions it kept keep theirs


def test_a_release_drops_its_customers_decisions_on_every_channel(compiled, monkeypatch):
    """Their decisions on each channel go, the kept partitions' stay on each, and a web flood
    after pushes out web's, leaving the other channels theirs (under their floor, 30 // 12)."""
    monkeypatch.setattr("kairos.core.engine.DECISION_CACHE_SIZE", 30)
    store = MemoryStore(shared=True)
    a = shard(compiled, "a", store=store)
    bob = next(c for c in (f"b{i}" for i in range(500)) if p_of(c) != p_of("ana"))
    channels = [("web", "hero"), ("app", "home"), ("push", "notification")]
    a.process([decide(who, *where) for who in ("ana", bob) for where in channels])

    def held() -> list[tuple[str, str]]:  # (customer, channel) of each remembered decision
        return sorted((m.customer_id, compiled.channel_names[m.channel])
                      for m in a.engine._remembered.values())

    assert held() == sorted((who, c) for who in ("ana", bob) for c, _ in channels)
    b = shard(compiled, "b", partitions=[], store=store)
    p = p_of("ana")
    b.adopt(a.freeze([p], 2), 2)
    a.release([p], 2)
    assert held() == [(bob, "app"), (bob, "push"), (bob, "web")]
    flood = [c for c in (f"w{i}" for i in range(500)) if p_of(c) != p][:60]
    a.process([decide(c) for c in flood])
    assert a.engine.remembered == 30
    assert [c for who, c in held() if who == bob] == ["app", "push"]  # web's oldest went
