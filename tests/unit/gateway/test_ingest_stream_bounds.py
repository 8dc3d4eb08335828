"""IngestStreams are bounded as watch streams are: a gateway serves at most INGEST_STREAMS
(past it, RESOURCE_EXHAUSTED), and ends one whose caller sent nothing for INGEST_STREAM_IDLE_S
(DEADLINE_EXCEEDED, naming the setting), which frees its place (real gRPC on 127.0.0.1,
in-process backend)."""
from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys

import grpc
import pytest

from kairos.cluster.gateway import calls, ingesting
from kairos.cluster.gateway.streambounds import IdleLimit, WaitLimit
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import serving
from tests.support.waiting import wait_until


def _event(key: str) -> pb.Event:
    return pb.Event(customer_id="ivy", type="app_open", channel="web", idempotency_key=key)


def test_past_its_most_ingest_streams_a_gateway_refuses_new_ones(monkeypatch):
    monkeypatch.setattr(calls, "INGEST_STREAMS", 1)
    with serving() as (gateway, channel):
        stub = DecisionServiceStub(channel)
        sent: queue.Queue = queue.Queue()
        first = stub.IngestStream(iter(sent.get, None), timeout=30)
        sent.put(_event("a"))
        assert next(first).sequence  # it holds the gateway's one place
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.IngestStream(iter([_event("b")]), timeout=30))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "KAIROS_INGEST_STREAMS" in refused.value.details()
        sent.put(None)
        assert list(first) == []
        wait_until(lambda: not gateway.gateway.ingest_streams.open, 10, "the place freed")
        assert next(stub.IngestStream(iter([_event("c")]), timeout=30)).sequence


def test_an_idle_ingest_stream_is_ended_and_frees_its_place(monkeypatch):
    monkeypatch.setattr(ingesting, "INGEST_STREAM_IDLE_S", 0.5)
    with serving() as (gateway, channel):
        sent: queue.Queue = queue.Queue()
        acks = DecisionServiceStub(channel).IngestStream(iter(sent.get, None))  # no deadline
        try:
            sent.put(_event("a"))
            assert next(acks).sequence
            with pytest.raises(grpc.RpcError) as ended:
                next(acks)  # nothing more is sent
            assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "KAIROS_INGEST_STREAM_IDLE_S" in ended.value.details()
            wait_until(lambda: not gateway.gateway.ingest_streams.open, 10, "the place freed")
        finally:
            sent.put(None)


def test_only_a_wait_for_the_next_item_counts_as_idle():
    """Items coming within the limit, and time spent elsewhere (acks awaited, the window
    full) between reads, end nothing, however long the stream lasts in all."""
    async def main() -> list[int]:
        async def items():
            for n in range(6):
                await asyncio.sleep(0.05)
                yield n
            await asyncio.sleep(1)
            yield 6
        idle = IdleLimit(0.12, "idle")
        got, source = [], items()
        try:
            while (item := await idle.next(source)) is not None:
                got.append(item)
                await asyncio.sleep(0.2 if item == 2 else 0)  # busy, not waiting: not idle
        except TimeoutError as exc:
            assert str(exc) == "idle"
        finally:
            idle.close()
        return got
    assert asyncio.run(main()) == [0, 1, 2, 3, 4, 5]


def test_a_wait_limit_restarted_shorter_ends_a_wait_at_the_new_limit():
    """`restart` re-arms the timer from now: a wait timed against a limit cut from 600 s to
    0.1 s ends once the new limit has passed, not when the old timer would have looked."""
    async def main() -> bool:
        expired = asyncio.Event()
        limit = WaitLimit(600.0, expired.set)
        try:
            limit.since = asyncio.get_running_loop().time()
            limit.restart(0.1)
            await asyncio.wait_for(expired.wait(), 30)  # the old timer: 600 s
            return limit.expired
        finally:
            limit.close()
    assert asyncio.run(main())


@pytest.mark.parametrize("idle_s, stall_s, refused", [("20", "30", True), ("30", "30", False)])
def test_an_idle_time_shorter_than_the_stall_time_stops_the_settings_import(idle_s, stall_s,
                                                                             refused):
    """A caller holding its whole window unacked would be cut later than one that holds less
    (or sends nothing): the settings refuse the pair, naming both variables and their values."""
    env = {**os.environ, "KAIROS_INGEST_STREAM_IDLE_S": idle_s,
           "KAIROS_INGEST_STREAM_STALL_S": stall_s}
    done = subprocess.run([sys.executable, "-c", "import kairos.cluster.settings"], env=env,
                          capture_output=True, text=True)
    assert (done.returncode != 0) == refused, done.stderr
    if refused:
        assert "ValueError: KAIROS_INGEST_STREAM_IDLE_S (20) must be at least " \
               "KAIROS_INGEST_STREAM_STALL_S (30)" in done.stderr
