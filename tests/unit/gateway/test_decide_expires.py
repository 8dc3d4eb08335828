"""The gateway's part of a Decide's `expires` (protocol.Decide; review rev42 gateway finding
2): the wall-clock time it stops waiting for the shard, and a shard's EXPIRED reply, which
answers the fallback as the deadline does (the shard skipped a Decide its caller no longer
waited for)."""
from __future__ import annotations

import asyncio
import time

from kairos.cluster.gateway.calls import Gateway
from kairos.cluster.protocol import EXPIRED
from kairos.cluster.settings import DEADLINE_MARGIN_S
from kairos.cluster.transport.client import ShardUnavailable


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


def test_an_expired_reply_answers_the_fallback_counted_as_the_deadline():
    gateway = _gateway()

    async def expired():
        raise ShardUnavailable(EXPIRED)

    async def failed():
        raise ShardUnavailable("the shard failed")

    async def both():
        return [await gateway.call(Context(2.0), work(), fallback=lambda: "fallback")
                for work in (expired, failed)]
    assert asyncio.run(both()) == ["fallback", "fallback"]
    assert gateway.fallbacks == {"deadline": 1, "unavailable": 1}
