"""A request keyed for an anonymous visitor, re-sent to the customer by a MERGED reply after a
link, meets the visitor's keys (a retry of an event the visitor had applied is a duplicate),
and the customer's own requests under the same key text apply (LocalBackend, no Ray)."""
from __future__ import annotations

import asyncio

from kairos.cluster.protocol import EventAck

from tests.unit.transport.test_routing import T0, runtime


def test_a_visitors_retry_after_the_link_is_a_duplicate_and_the_customers_own_key_applies():
    async def main():
        backend, ctl, client = await runtime(2)
        anon = await client.resolve("cookie", "c1")
        assert await client.ingest_ack(anon, "app_open", T0, {}, "evt-1") == \
            EventAck(sequence=1)
        assert await client.link("cookie", "c1", "ana") is True
        # the visitor's answer was lost; its retry goes to the anonymous id, MERGED to ana
        assert await client.ingest_ack(anon, "app_open", T0, {}, "evt-1") == \
            EventAck(sequence=1, duplicate=True)
        assert await client.ingest_ack("ana", "app_open", T0 + 5, {}, "evt-1") == \
            EventAck(sequence=2)
        assert (await client.profile("ana", T0 + 10))["events_applied"] == 2
        await client.close()
    asyncio.run(main())
