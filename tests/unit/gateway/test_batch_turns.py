"""A large IngestBatch gives the event loop's other calls their turns while it checks its events
and builds their acks, ingesting.CHUNK events at a time: 9,000 checked in one pass held the
loop for 70-130 ms, and their acks for 30-60 ms more, while Decides with short deadlines
waited. A task that counts the loop's turns runs beside the batch; each event's check and each
ack notes the count, and no turn may see more than CHUNK of either. The handler is called
directly over the in-process backend."""
from __future__ import annotations

import asyncio
from collections import Counter

from kairos.cluster.gateway import ingesting, requests
from kairos.v1 import decision_pb2 as pb

from tests.unit.gateway.test_ingest_order import Context, _service
from tests.support.local_backend import LocalBackend

EVENTS = 2_000


def test_a_large_batch_checks_and_acks_its_events_a_chunk_per_turn(monkeypatch):
    turns = 0
    checked: Counter[int] = Counter()  # events checked, by the loop's turn
    acked: Counter[int] = Counter()
    event_request, ack_into = requests.event_request, ingesting._ack_into

    def counted_check(*args):
        checked[turns] += 1
        return event_request(*args)

    def counted_ack(*args):
        acked[turns] += 1
        return ack_into(*args)

    monkeypatch.setattr(requests, "event_request", counted_check)
    monkeypatch.setattr(ingesting, "_ack_into", counted_ack)

    async def count_turns():
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def main():
        service, client = await _service(LocalBackend())
        counting = asyncio.ensure_future(count_turns())
        batch = pb.EventBatch(events=[pb.Event(customer_id=f"crm-{i}", type="app_open",
                                               channel="web") for i in range(EVENTS)])
        acks = (await service.IngestBatch(batch, Context())).acks
        counting.cancel()
        await client.close()
        return acks

    acks = asyncio.run(main())
    assert len(acks) == EVENTS and {ack.sequence for ack in acks} == {1}
    assert sum(checked.values()) == sum(acked.values()) == EVENTS
    assert max(checked.values()) <= ingesting.CHUNK
    assert max(acked.values()) <= ingesting.CHUNK
