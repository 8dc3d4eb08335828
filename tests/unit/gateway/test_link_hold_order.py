"""A held event among the customer's own in one IngestStream or IngestBatch (issue 18,
cluster/shard/linkhold.py): the visitor's event by alias, held back while a link of the alias
is under way, is not overtaken by the customer's later events of the same call, however they
are spaced; those before it, and other customers', are applied. From the review rev46/d-link's
probe_stream.py and probe_batch.py."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from kairos.v1 import decision_pb2 as pb

from tests.unit.gateway.test_ingest_order import Aborted, Context, _service
from tests.support.local_backend import LocalBackend

HELD = "LinkIdentity of the alias"
C1 = pb.Alias(type="cookie", value="c1")


def ev(key: str, **who) -> pb.Event:
    return pb.Event(event_id=key, type="app_open", channel="web", idempotency_key=key, **who)


async def _linking(backend: LocalBackend):
    """The service, with the visitor's event applied and a link of its alias into ana cut
    after its step 1 (Claim, Link: the alias names ana, the Merge not done)."""
    service, client = await _service(backend)
    await service.Ingest(ev("v1", alias=C1), Context())
    steps = client.link_steps("cookie:c1", "ana")
    for _ in range(2):
        await steps.__anext__()
    await steps.aclose()
    return service, client


async def _applied(client, customer: str) -> int | None:
    profile = await client.profile(customer)
    return profile and profile["events_applied"]


@pytest.mark.parametrize("gap", [0.0, 0.002, 0.05])
def test_a_stream_stops_at_its_held_event(gap):
    async def main():
        service, client = await _linking(LocalBackend())
        try:
            await service.Ingest(ev("a0", customer_id="ana"), Context())

            async def events():
                yield ev("v1", alias=C1)
                for i in range(5):
                    await asyncio.sleep(gap)
                    yield ev(f"a{i + 1}", customer_id="ana")

            acks = []
            with pytest.raises(Aborted, match=HELD) as held:
                async for ack in service.IngestStream(events(), Context()):
                    acks.append(ack)
            assert held.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert acks == []
            await asyncio.sleep(0.1)  # any of the stream's events still on their way land
            assert await _applied(client, "ana") == 1  # a0 only
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize("batch, ana, bob", [
    (["a1", "v1", "a2"], 1, None),  # a1 before the held one applied, a2 behind it not
    (["v1", "b1", "a2"], None, 1),  # another customer's applied
])
def test_a_batch_applies_nothing_of_the_customer_behind_its_held_event(batch, ana, bob):
    who = {"a": {"customer_id": "ana"}, "b": {"customer_id": "bob"}, "v": {"alias": C1}}

    async def main():
        service, client = await _linking(LocalBackend())
        try:
            with pytest.raises(Aborted, match=HELD):
                await service.IngestBatch(
                    pb.EventBatch(events=[ev(key, **who[key[0]]) for key in batch]), Context())
            await asyncio.sleep(0.1)
            assert (await _applied(client, "ana"), await _applied(client, "bob")) == (ana, bob)
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(main(), 30))
