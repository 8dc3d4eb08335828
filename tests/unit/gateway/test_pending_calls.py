"""A burst of calls larger than grpc-core's own queue of calls not yet taken by the server
(1,000 by default) reaches the gateway's admission: each is answered by the gateway, none
cancelled by grpc-core before any interceptor saw it (server.py `pending_options`). The burst
comes while the gateway's event loop is held, as a loaded gateway's is, so that it piles up
in grpc-core whatever this machine's speed."""
from __future__ import annotations

import time
from collections import Counter

import grpc
import pytest

from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import serving

pytestmark = pytest.mark.unit

KEYS = """keys:
  - {key: 'web-decide-0123456789abcdef', name: web, channel: web, scopes: [decide]}
"""
WEB = (("x-api-key", "web-decide-0123456789abcdef"),)
BURST = 2500  # past grpc-core's default of 1,000 pending calls, well under the in-flight limit
HELD_S = 2.0  # the loop's hold: the burst is sent well within it


def test_a_burst_past_grpcs_pending_queue_is_answered_by_the_gateway_not_cancelled():
    with serving(KEYS) as (gateway, channel):
        stub = DecisionServiceStub(channel)
        stub.Decide(pb.DecideRequest(customer_id="warm", channel="web"), metadata=WEB)
        gateway.loop.call_soon_threadsafe(time.sleep, HELD_S)
        calls = [stub.Decide.future(pb.DecideRequest(customer_id=f"c{i}", channel="web"),
                                    metadata=WEB, timeout=120) for i in range(BURST)]
        codes = Counter()
        for call in calls:
            try:
                call.result()
                codes["OK"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
    assert codes == {"OK": BURST}
