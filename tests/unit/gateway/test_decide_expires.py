"""The gateway's part of a Decide's `expires` (protocol.Decide; review rev42 gateway finding
2): the wall-clock time it stops waiting for the shard, and a shard's EXPIRED reply, which
answers the fallback as the deadline does (the shard skipped a Decide its caller no longer
waited for)."""
from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from kairos.cluster.gateway.calls import Gateway
from kairos.cluster.protocol import EXPIRED
from kairos.cluster.settings import DEADLINE_MARGIN_S
from kairos.cluster.transport.client import ShardUnavailable
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import serving
from tests.support.local_backend import DecidesLate, LocalBackend


class Context:
    def __init__(self, remaining: float):
        self.remaining = remaining

    def time_remaining(self) -> float:
        return self.remaining


def _gateway() -> Gateway:
    return Gateway("g", None, None)


def test_a_decide_expires_when_the_gateway_stops_waiting_for_it():
    gateway, context = _gateway(), Context(2.0)
    before = time.time()
    expires = gateway.expires(context)
    assert before + gateway.timeout(context) <= expires <= time.time() + gateway.timeout(context)
    assert expires < before + 2.0 - DEADLINE_MARGIN_S / 2  # the margin is kept to answer


def test_an_expired_reply_answers_the_fallback_counted_apart():
    gateway = _gateway()

    async def expired():
        raise ShardUnavailable(EXPIRED)

    async def failed():
        raise ShardUnavailable("the shard failed")

    async def both():
        return [await gateway.call(Context(2.0), work(), fallback=lambda: "fallback")
                for work in (expired, failed)]
    assert asyncio.run(both()) == ["fallback", "fallback"]
    assert gateway.fallbacks == {"expired": 1, "unavailable": 1}


class _Queued(LocalBackend):
    """A shard that reaches requests `delay` seconds after they are sent (a queue ahead)."""

    delay = 0.0

    async def send(self, name, session, seq, requests, routed):
        await asyncio.sleep(self.delay)
        return await super().send(name, session, seq, requests, routed)


def test_a_decide_answered_with_the_fallback_records_nothing_on_a_shard_that_reaches_it_late(
        roomy_answer_margin):
    """End to end: the caller was shown the fallback; the shard, reaching the Decide well past
    its expiry, decides nothing, so no impression of a decision nobody saw is recorded."""
    backend = _Queued()
    with serving(backend=backend) as (_, channel):
        stub = DecisionServiceStub(channel)
        stub.Ingest(pb.Event(customer_id="imp", type="app_open", channel="web"), timeout=10)
        backend.delay = 1.0
        shown = stub.Decide(pb.DecideRequest(customer_id="imp", channel="web",
                                             record_impression=True), timeout=0.5)
        assert shown.fallback
        time.sleep(1.2)  # the shard has reached it
        backend.delay = 0.0
        profile = stub.GetProfile(pb.ProfileRequest(customer_id="imp"), timeout=10)
        assert profile.events_applied == 1 and not profile.history


def test_a_profile_read_past_its_deadline_logs_no_decision_its_caller_never_got():
    """Review rev42 d-gateway finding 1: GetProfile's logged Decide (the channel its caller
    shows) carried no expiry, so a shard reaching it late logged it as evidence."""
    backend = DecidesLate()
    with serving(backend=backend) as (_, channel):
        stub = DecisionServiceStub(channel)
        stub.Ingest(pb.Event(customer_id="prof", type="app_open", channel="web"), timeout=10)
        backend.delay = 1.0
        with pytest.raises(grpc.RpcError) as late:
            stub.GetProfile(pb.ProfileRequest(customer_id="prof", shown_channel="web"),
                            timeout=0.3)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(1.2)  # the shard has reached its Decides
        assert sum(s.counts["decisions"] for s in backend.shards.values() if s) == 0
