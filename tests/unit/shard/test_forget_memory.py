"""ForgetCustomer removes the customer from memory at once (README). An outcome's idempotency
key looked up and never remembered (its outcome refused) stayed, with the customer's id, among
the lookups waiting for their remember until 2,048 more came; and the outcome rate kept the id
until later outcomes drained it (shard review). The lookups go with an evicted customer, and
the rate keeps customers by a keyed digest, not by id."""
from __future__ import annotations

from kairos.cluster.protocol import Invalid

from tests.unit.shard.test_shard import T0, Clock, event, forget, outcome, shard

GONE = "erin@example.com"


def test_a_forgotten_customers_id_and_keys_leave_the_shards_memory(compiled):
    clock = Clock()
    s = shard(compiled, clock=clock)
    s.process([event(GONE, "app_open", T0)._replace(idempotency_key="evt-1")])
    made_up = outcome(GONE, "service_menu", f"e-1.{int(T0):x}.AAAAAAAAAAAAAAAA")._replace(
        idempotency_key="order-991")
    [refused], _ = s.process([made_up])
    assert isinstance(refused, Invalid) and refused.field == "decision_id"
    assert len(s.customers._rate._times) == 1  # counted all the same
    s.process([forget(GONE)])
    assert [k for k in (*s.keys._pending, *s.labels._pending) if k[0] == GONE] == []
    assert GONE not in s.customers._rate._times
    assert not any(GONE.encode() in named for named in s.customers._rate._times)
