"""IngestStreams whose callers stop reading their acks (issue 18): an event counts in the
gateway's calls in flight until its shard answers, not until its ack is read, so stalled
streams hold their windows and not the gateway's limit; one whose acks go unread for
INGEST_STREAM_STALL_S with its whole window unacked ends (RESOURCE_EXHAUSTED, after the acks
written) and frees its window and calls, and its place once its status is out; one read slowly
but steadily, or with fewer than STREAM_WINDOW events unacked, goes on (real gRPC on 127.0.0.1,
in-process backend).

The callers' channels turn off BDP probing, so their receive window stays at gRPC's 64 KiB: a
stream's acks are held after some 200 unread, not the megabytes a window grown by probing takes
on loopback; and each has a connection of its own, so that each stream's acks wait on that
stream's window alone (channels with the same options would share one connection)."""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Callable, Iterator

import grpc
import pytest

from kairos.cluster.gateway import calls, ingesting
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import serving
from tests.support.waiting import wait_until

KEYS = """keys:
  - {key: 'web-ingest-decide-0123456789', name: web, channel: web, scopes: [ingest, decide]}
  - {key: 'app-decide-key-0123456789ab', name: app, channel: app, scopes: [decide]}
"""
WEB = (("x-api-key", "web-ingest-decide-0123456789"),)
APP = (("x-api-key", "app-decide-key-0123456789ab"),)
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.use_local_subchannel_pool", 1)]


def _event(stream: int, n: int) -> pb.Event:
    """Event `n` of stream `stream`, of a customer of its own; its id, long (256 characters),
    makes its ack some 300 bytes, so a few hundred fill a caller's window."""
    key = f"s{stream}-e{n}"
    return pb.Event(customer_id=f"c{stream}-{n}", type="app_open", channel="web",
                    idempotency_key=key, event_id=key.ljust(256, "."))


def _endless(stream: int) -> Iterator[pb.Event]:
    n = 0
    while True:
        yield _event(stream, n)
        n += 1


@contextlib.contextmanager
def _unread(port: int, streams: int, metadata: tuple = ()) -> Iterator[list]:
    """`streams` IngestStreams, each on a channel of its own, without a deadline, sending
    events without end; their acks are the caller's to read (or not)."""
    with contextlib.ExitStack() as stack:
        held = []
        for s in range(streams):
            channel = stack.enter_context(
                grpc.insecure_channel(f"127.0.0.1:{port}", options=SMALL_WINDOW))
            held.append(DecisionServiceStub(channel).IngestStream(_endless(s),
                                                                  metadata=metadata))
            stack.callback(held[-1].cancel)
        yield held


def test_stalled_ingest_streams_of_one_key_do_not_lock_every_caller_out(monkeypatch):
    """The review's repro: LIMIT / (STREAM_WINDOW + 1) + 1 streams of one key whose acks go
    unread each kept STREAM_WINDOW + 1 events counted in flight for as long as their caller
    held them, and every other key's Decide was RESOURCE_EXHAUSTED; now their events count
    until their shard answers, and the Decide is served while the streams stay stalled."""
    monkeypatch.setattr(calls, "GATEWAY_INFLIGHT_LIMIT", 2000)  # 20,000: 20 streams
    monkeypatch.setattr(ingesting, "INGEST_STREAM_STALL_S", 600.0)  # none is ended meanwhile
    with serving(KEYS) as (gateway, _):
        [shard] = gateway.client.backend.shards.values()
        streams = 2000 // ingesting.STREAM_WINDOW + 1
        with _unread(gateway.port, streams, WEB):
            wait_until(_settled(lambda: len(shard.engine.table), streams * 200), 120,
                       "the streams held at their windows", poll_s=0.5)
            assert gateway.gateway.ingest_streams.open == streams  # stalled, not ended
            with grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as other:
                decision = DecisionServiceStub(other).Decide(
                    pb.DecideRequest(customer_id="victim", channel="app"), metadata=APP,
                    timeout=10)  # main: RESOURCE_EXHAUSTED "gateway g has 2000 calls..."
            assert decision.customer_id == "victim"
            wait_until(lambda: gateway.gateway.inflight == 0, 30,
                       "no call in flight once the shard answered")  # main: 2000


def _settled(count: Callable[[], int], least: int) -> Callable[[], bool]:
    """A condition that holds once `count()` is at least `least` and the same as at the look
    before: the streams' events applied (a customer each) stopped growing, as each stream is
    held at its caller's window with its own window of events read behind it."""
    seen = [-1]

    def settled() -> bool:
        before, seen[0] = seen[0], count()
        return seen[0] >= least and seen[0] == before
    return settled


def _ending(gateway) -> int:
    """The stalled streams whose status the gateway's loop is sending still."""
    async def ending() -> int:
        return sum(task.get_name() == ingesting.ENDING for task in asyncio.all_tasks())
    return gateway.run(ending())


def _tasks(gateway) -> int:
    async def tasks() -> int:
        return len(asyncio.all_tasks())
    return gateway.run(tasks())


def _read_to_its_end(stream, setting: str, sent: int) -> tuple[list, grpc.RpcError]:
    """Reads an ended stream of the events _event(sent, n): the acks the gateway wrote, each
    in the order sent, then RESOURCE_EXHAUSTED naming `setting`. The acks and the error."""
    acks = []
    with pytest.raises(grpc.RpcError) as ended:
        for ack in stream:
            acks.append(ack)
    assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert setting in ended.value.details()
    assert [ack.event_id for ack in acks] == [
        _event(sent, n).event_id for n in range(len(acks))]
    return acks, ended.value


def test_a_stream_whose_acks_go_unread_ends_and_frees_what_it_held(monkeypatch):
    """Past INGEST_STREAM_STALL_S with its window unacked, a stream ends: its calls are freed
    while its caller still reads nothing, its place once the caller reads its status; reading,
    the caller gets every ack the gateway wrote, in order, then RESOURCE_EXHAUSTED naming the
    setting; the events acked stay applied (sent again with their keys: duplicates)."""
    monkeypatch.setattr(ingesting, "INGEST_STREAM_STALL_S", 1.0)
    with serving() as (gateway, channel):
        with _unread(gateway.port, 1) as [stalled]:
            wait_until(lambda: _ending(gateway), 30, "the stalled stream ended")
            wait_until(lambda: gateway.gateway.inflight == 0, 10, "its calls released")
            assert gateway.gateway.ingest_streams.open == 1  # 9fed142: 0, its status unsent
            acks, ended = _read_to_its_end(stalled, "KAIROS_INGEST_STREAM_STALL_S", 0)
            wait_until(lambda: not gateway.gateway.ingest_streams.open, 10, "its place freed")
        assert "read no ack" in ended.details()
        assert len(acks) > 100  # what its caller's window held
        again = DecisionServiceStub(channel).IngestStream(
            iter([_event(0, 0), _event(0, len(acks) - 1)]), timeout=30)
        assert [ack.duplicate for ack in again] == [True, True]


def test_streams_ended_stalled_hold_their_key_places_until_their_callers_leave(monkeypatch):
    """A stalled stream ended keeps its call open (its HTTP/2 stream, grpc's tasks, the status
    queued behind the held acks) until its caller reads or leaves: it keeps its place too, so
    a key's callers cannot pile up more of them than INGEST_STREAMS_PER_KEY (9fed142 freed it
    at the stall: 200 so ended held 400 tasks and 150 MB). Once they leave, all is freed."""
    monkeypatch.setattr(ingesting, "INGEST_STREAM_STALL_S", 1.0)
    monkeypatch.setattr(calls, "INGEST_STREAMS_PER_KEY", 3)
    with serving(KEYS) as (gateway, channel):
        sent = DecisionServiceStub(channel).IngestStream(iter([_event(8, 0)]), metadata=WEB)
        assert [ack.duplicate for ack in sent] == [False]  # the client's lanes at work
        before = _tasks(gateway)
        with _unread(gateway.port, 3, WEB):
            wait_until(lambda: _ending(gateway) == 3, 60, "the 3 stalled streams ended")
            wait_until(lambda: gateway.gateway.inflight == 0, 10, "their calls released")
            with pytest.raises(grpc.RpcError) as refused:
                list(DecisionServiceStub(channel).IngestStream(
                    iter([_event(9, 0)]), metadata=WEB, timeout=10))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "KAIROS_INGEST_STREAMS_PER_KEY" in refused.value.details()
        wait_until(lambda: not gateway.gateway.ingest_streams.open, 10, "their places freed")
        wait_until(lambda: _tasks(gateway) <= before, 10, "their tasks gone")
        assert [ack.duplicate for ack in DecisionServiceStub(channel).IngestStream(
            iter([_event(9, 0)]), metadata=WEB, timeout=10)] == [False]


def test_a_caller_within_its_window_is_not_cut_however_long_its_acks_go_unread(monkeypatch):
    """Fewer than STREAM_WINDOW events unacked, a caller is never cut: its acks' writes wait
    on flow control (some 200 fit its HTTP/2 window) for many times INGEST_STREAM_STALL_S, yet
    the window it was given is not full; reading at last, it gets every ack, in order."""
    monkeypatch.setattr(ingesting, "INGEST_STREAM_STALL_S", 1.0)
    with serving() as (gateway, _):
        [shard] = gateway.client.backend.shards.values()
        count = ingesting.STREAM_WINDOW - 24
        with grpc.insecure_channel(f"127.0.0.1:{gateway.port}", options=SMALL_WINDOW) as held:
            acks = DecisionServiceStub(held).IngestStream(
                (_event(0, n) for n in range(count)), timeout=60)
            wait_until(lambda: len(shard.engine.table) == count, 30, "every event applied")
            time.sleep(3.0)  # its acks' writes held three stall times (9fed142: cut)
            got = [ack.event_id for ack in acks]
        assert got == [_event(0, n).event_id for n in range(count)]


def test_a_caller_reading_its_acks_slowly_but_steadily_is_not_cut(monkeypatch):
    """A caller that reads slower than the gateway acks keeps the stream at its window for many
    times INGEST_STREAM_STALL_S, each ack's write waiting for its reads (flow control hands
    acks on some 30 KB at a time): reading, it is never cut, and gets every ack in order."""
    monkeypatch.setattr(ingesting, "INGEST_STREAM_STALL_S", 2.0)
    with serving() as (gateway, _):
        with grpc.insecure_channel(f"127.0.0.1:{gateway.port}", options=SMALL_WINDOW) as slow:
            count = 3000
            acks = DecisionServiceStub(slow).IngestStream(
                (_event(0, n) for n in range(count)), timeout=120)
            time.sleep(0.5)  # its window fills meanwhile, within the stall limit
            got = []
            for ack in acks:
                got.append(ack.event_id)
                time.sleep(0.001)  # ~3 s in all: slower than the gateway acks
        assert got == [_event(0, n).event_id for n in range(count)]
        wait_until(lambda: not gateway.gateway.ingest_streams.open, 10, "the stream ended")
        assert gateway.gateway.inflight == 0


def test_a_caller_that_neither_sends_nor_reads_is_ended_after_the_idle_time(monkeypatch):
    """A hung client keeping its connection: it sent fewer events than its window and then
    neither sent nor read, so the stall clock (a whole window unacked) never ran, and the idle
    limit's end of the reader never reached the handler, parked at a held write: the stream
    was held for as long as the connection lived. Once the reader reads no more, a held write
    is timed for INGEST_STREAM_IDLE_S; the caller then reads the acks written and the status."""
    monkeypatch.setattr(ingesting, "INGEST_STREAM_STALL_S", 600.0)
    monkeypatch.setattr(ingesting, "INGEST_STREAM_IDLE_S", 1.0)
    hung = threading.Event()

    def sent_then_hung() -> Iterator[pb.Event]:
        yield from (_event(0, n) for n in range(600))  # past what its HTTP/2 window holds
        hung.wait(60)  # neither sends nor closes

    with serving() as (gateway, _):
        with grpc.insecure_channel(f"127.0.0.1:{gateway.port}", options=SMALL_WINDOW) as held:
            stream = DecisionServiceStub(held).IngestStream(sent_then_hung())
            try:
                wait_until(lambda: _ending(gateway), 30, "the hung caller's stream ended")
                _read_to_its_end(stream, "KAIROS_INGEST_STREAM_IDLE_S", 0)
            finally:
                hung.set()


def test_a_caller_that_half_closes_with_its_window_unacked_is_ended_after_the_stall_time(
        monkeypatch):
    """Review LOW (last stop): a caller that sent exactly what fills its window and then
    half-closed, reading nothing, had the reader's wait to put the stream's end into the full
    window timed as a caller's that stopped sending, for INGEST_STREAM_IDLE_S, not for
    INGEST_STREAM_STALL_S as if it had kept the stream open: half-closing lengthened it. A
    first stream, kept open, finds how many events a stream reads before its reader waits for
    room (the acks its caller's HTTP/2 window takes, the one held at a write, STREAM_WINDOW
    waiting, and the one read that waits); the second sends one fewer, then half-closes."""
    monkeypatch.setattr(ingesting, "INGEST_STREAM_STALL_S", 600.0)  # the first is not ended
    monkeypatch.setattr(ingesting, "INGEST_STREAM_IDLE_S", 600.0)
    with serving() as (gateway, _):
        [shard] = gateway.client.backend.shards.values()
        with _unread(gateway.port, 1):
            wait_until(_settled(lambda: len(shard.engine.table), ingesting.STREAM_WINDOW), 60,
                       "the kept-open stream held at its window", poll_s=0.5)
            count = len(shard.engine.table) - 1  # the last it read waits for room
        wait_until(lambda: not gateway.gateway.ingest_streams.open, 10, "its place freed")
        monkeypatch.setattr(ingesting, "INGEST_STREAM_STALL_S", 1.0)
        with grpc.insecure_channel(f"127.0.0.1:{gateway.port}", options=SMALL_WINDOW) as held:
            stream = DecisionServiceStub(held).IngestStream(_event(1, n) for n in range(count))
            try:
                wait_until(lambda: len(shard.engine.table) == 2 * count + 1, 30,
                           "every event of the half-closed stream read")
                wait_until(lambda: _ending(gateway), 30,  # main: after the 600 s idle time
                           "the half-closed stream with its window unacked ended")
                _read_to_its_end(stream, "KAIROS_INGEST_STREAM_STALL_S", 1)
            finally:
                stream.cancel()
