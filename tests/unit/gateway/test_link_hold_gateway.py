"""The gateway's side of a link's hold (issue 18, cluster/shard/linkhold.py): an event or a
Respond by an alias that names a customer carries the alias's anonymous id (`via`), so that
while a link of the alias is under way a visitor's retry is refused RESOURCE_EXHAUSTED (nothing
applied), and once the link merged it is a duplicate, applied once. Ingest, IngestBatch and
IngestStream, and Respond, called directly over the in-process backend."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from kairos.v1 import decision_pb2 as pb

from tests.unit.gateway.test_ingest_order import Aborted, Context, _events, _service
from tests.support.local_backend import LocalBackend

HELD = "LinkIdentity of the alias"


def visit() -> pb.Event:
    return pb.Event(event_id="v1", type="app_open", channel="web", idempotency_key="evt-1",
                    alias=pb.Alias(type="cookie", value="c1"))


def test_a_visitors_retries_by_alias_are_held_during_a_link_then_duplicates():
    async def main():
        service, client = await _service(LocalBackend())
        try:
            assert (await service.Ingest(visit(), Context())).sequence == 1
            steps = client.link_steps("cookie:c1", "ana")
            for _ in range(2):  # Claim, Link; then the caller gave up
                await steps.__anext__()
            await steps.aclose()
            tries = [lambda: service.Ingest(visit(), Context()),
                     lambda: service.IngestBatch(pb.EventBatch(events=[visit()]), Context()),
                     lambda: _first(service.IngestStream(_events([visit()]), Context()))]
            for attempt in tries:
                with pytest.raises(Aborted, match=HELD) as held:
                    await attempt()
                assert held.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            respond = pb.Outcome(alias=pb.Alias(type="cookie", value="c1"),
                                 action_id="service_menu", channel="web", offline=True,
                                 outcome=pb.CONVERT, idempotency_key="crm-1")
            with pytest.raises(Aborted, match=HELD):
                await service.Respond(respond, Context())
            assert await client.link("cookie", "c1", "ana") is True
            again = await service.Ingest(visit(), Context())
            assert (again.sequence, again.duplicate) == (1, True)
            assert (await client.profile("ana"))["events_applied"] == 1
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(main(), 30))


async def _first(stream):
    async for ack in stream:
        return ack
