"""An IngestStream lane whose stream ends before its schedule does (the server returns, or
aborts, or refuses it as it opens) fails the events that stream did not ack, with the end's
code, and opens another, as an IngestStream client would: before, it failed (or, earlier
still, silently stopped sending) its whole remaining schedule, so one refusal made a stream
step's errors incomparable with a unary one's. A stream refused at open has its code lost
to grpc.aio when a write races the end ("Internal error from Core"): that is not labelled
INTERNAL, which reads as a server fault (issue 17)."""
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


class EndsFirst(decision_pb2_grpc.DecisionServiceServicer):
    """Acks the first ACKED events of the first stream, then ends it: OK, or with `code`;
    acks every event of the streams after it."""

    def __init__(self, code: grpc.StatusCode | None) -> None:
        self.code = code
        self.streams = 0

    async def IngestStream(self, request_iterator, context):  # noqa: N802  (gRPC's name)
        self.streams += 1
        first, acked = self.streams == 1, 0
        async for event in request_iterator:
            yield pb.IngestAck(event_id=event.event_id)
            acked += 1
            if first and acked == ACKED:
                break
        if first and self.code is not None:
            await context.abort(self.code, "ended early")


class RefusesAtOpen(decision_pb2_grpc.DecisionServiceServicer):
    """A gateway that sheds every IngestStream as it opens."""

    async def IngestStream(self, request_iterator, context):  # noqa: N802  (gRPC's name)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded: shedding")
        yield pb.IngestAck()


async def lanes(servicer: decision_pb2_grpc.DecisionServiceServicer, rate: float,
                measure_s: float, count: int = 1) -> tuple[loadgen.Recorder, int]:
    """`count` stream lanes of one process against `servicer`: what they recorded, and how
    many sends their schedules held."""
    server = grpc.aio.server()
    decision_pb2_grpc.add_DecisionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            recorder = loadgen.Recorder(seconds=measure_s)
            schedules = [loadgen._Schedule(rate, 0.0, measure_s, random.Random(3 + k), recorder)
                         for k in range(count)]

            async def ready() -> float:
                return time.time()

            start = loadgen._Start(ready, schedules)
            await asyncio.gather(*(
                loadgen._stream(loadgen._Calls(channel), schedule,
                                Journeys(load_default_catalog(), 100, k), recorder, start)
                for k, schedule in enumerate(schedules)))
            return recorder, sum(len(schedule) for schedule in schedules)
    finally:
        await server.stop(None)


@pytest.mark.parametrize("code, label", [(None, loadgen.STREAM_ENDED),
                                         (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")])
def test_a_lane_whose_stream_ends_early_opens_another(code, label):
    started = time.perf_counter()
    recorder, scheduled = asyncio.run(lanes(EndsFirst(code), RATE, MEASURE_S))
    events = recorder.kinds[EVENT]
    assert scheduled > 2 * ACKED
    # every send the schedule held is answered once: what the first stream had in flight
    # failed with its code (or, a write racing the end, without it), the rest acked on the
    # stream opened after it
    assert recorder.sent == events.latency.get_total_count() == scheduled
    assert set(events.errors) <= {label, loadgen.STATUS_LOST}
    assert events.ok + sum(events.errors.values()) == scheduled
    assert events.ok > scheduled - 10
    summary = recorder.summary()
    assert summary["streams_ended"] == 1
    # open loop: the lane kept to its schedule
    assert time.perf_counter() - started >= MEASURE_S * 0.9
    assert summary["offered_rate"] > RATE * 0.7


def test_streams_refused_at_open_fail_each_send_when_due_with_the_refusal():
    """500/s a lane, four lanes, a few trials: the write racing the refusal happens in most
    (the review saw INTERNAL in 11 of 15 trials of one stream a lane)."""
    rate, measure_s, count = 500.0, 1.0, 4
    for _ in range(3):
        started = time.perf_counter()
        recorder, scheduled = asyncio.run(lanes(RefusesAtOpen(), rate, measure_s, count))
        events = recorder.kinds[EVENT]
        assert events.ok == 0
        assert recorder.sent == events.latency.get_total_count() == scheduled
        assert set(events.errors) <= {"RESOURCE_EXHAUSTED", loadgen.STATUS_LOST}, \
            dict(events.errors)
        # each failed as it came due, a back-off and an open late; failed at the window's end,
        # the median would be half the window. The median, not a tail: a CI machine's
        # workers starve a tail (p99 256 ms against a 250 ms bound in one run)
        assert events.refused.get_value_at_percentile(50) / 1e6 < measure_s / 4
        assert time.perf_counter() - started >= measure_s * 0.9
        # the lanes reopened, at most once a back-off
        ended = recorder.summary()["streams_ended"]
        assert 2 * count <= ended <= count * (measure_s / loadgen.REOPEN_BACKOFF_S + 2)


def test_the_streams_ended_add_up_over_processes_and_show_in_the_report():
    from bench import report

    merged = loadgen.Recorder()
    for ended in (2, 3):
        recorder = loadgen.Recorder(streams_ended=ended)
        recorder.kind(EVENT)
        merged.add(recorder.encode())
    step = merged.summary()
    assert step["streams_ended"] == 5
    assert "streams ended 5" in report._errors(step, EVENT, one_kind=False)
    assert "streams_ended" not in loadgen.Recorder().summary()  # not a stream step
