"""An IngestStream lane whose stream ends before its schedule does (the server returns, or
aborts while every event sent was acked) fails every send it still had, with the end's code:
it had stopped sending unseen, every event it sent acked and no error, so the step's rate
and CPU per event were of a fraction of its load and nothing said so."""
from __future__ import annotations

import asyncio
import random
import time

import grpc
import pytest

from bench import loadgen
from bench.journeys import EVENT, Journeys
from kairos.core.catalog import load_default_catalog
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

RATE, MEASURE_S, ACKED = 200.0, 1.0, 20


class EndsEarly(decision_pb2_grpc.DecisionServiceServicer):
    """Acks the first ACKED events of a stream, then ends it: OK, or with `code`."""

    def __init__(self, code: grpc.StatusCode | None) -> None:
        self.code = code

    async def IngestStream(self, request_iterator, context):  # noqa: N802  (gRPC's name)
        acked = 0
        async for event in request_iterator:
            yield pb.IngestAck(event_id=event.event_id)
            acked += 1
            if acked == ACKED:
                break
        if self.code is not None:
            await context.abort(self.code, "ended early")


async def lane(code: grpc.StatusCode | None) -> tuple[loadgen.Recorder, int]:
    """One stream lane against a server that ends its stream early: what it recorded, and
    how many sends its schedule held."""
    server = grpc.aio.server()
    decision_pb2_grpc.add_DecisionServiceServicer_to_server(EndsEarly(code), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            recorder = loadgen.Recorder(seconds=MEASURE_S)
            schedule = loadgen._Schedule(RATE, 0.0, MEASURE_S, random.Random(3), recorder)

            async def ready() -> float:
                return time.time()

            await loadgen._stream(loadgen._Calls(channel), schedule,
                                  Journeys(load_default_catalog(), 100, 1), recorder,
                                  loadgen._Start(ready, [schedule]))
            return recorder, len(schedule)
    finally:
        await server.stop(None)


@pytest.mark.parametrize("code, label", [(None, loadgen.STREAM_ENDED),
                                         (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")])
def test_a_stream_that_ends_early_fails_the_rest_of_its_schedule(code, label):
    started = time.perf_counter()
    recorder, scheduled = asyncio.run(lane(code))
    events = recorder.kinds[EVENT]
    assert scheduled > 2 * ACKED
    assert events.ok == ACKED
    # every send the schedule held is counted, and every one not acked failed with the code
    assert recorder.sent == events.latency.get_total_count() == scheduled
    assert dict(events.errors) == {label: scheduled - ACKED}
    # open loop: the lane kept to its schedule, failing the sends as they came due
    assert time.perf_counter() - started >= MEASURE_S * 0.9
    summary = recorder.summary()
    assert summary["offered_rate"] > RATE * 0.7
