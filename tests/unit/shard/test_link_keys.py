"""A link folds the anonymous visitor's idempotency keys into the customer's, as the
customer's own (README: keys are best unique per event): a retry of the visitor's event,
now sent for the customer (the gateway resolves the alias to it), is answered duplicate."""
from __future__ import annotations

from kairos.cluster.identity import anonymous_id
from kairos.cluster.protocol import EventAck

from .test_shard import T0, Clock, event, link_steps, shard


def test_a_visitors_keys_are_the_customers_after_a_link(compiled):
    s = shard(compiled, clock=Clock())
    visit = event(anonymous_id("cookie:c1"), "page_view", T0, category="home")
    assert s.process([visit._replace(idempotency_key="evt-1")])[0] == [EventAck(sequence=1)]
    link_steps(s, s, s, "cookie:c1", "ana")
    retried = visit._replace(customer_id="ana", idempotency_key="evt-1")
    assert s.process([retried])[0] == [EventAck(sequence=1, duplicate=True)]
    assert s.engine.table.applied[s.engine.table.index["ana"]] == 1
