"""The load generators are open loop: a server that stalls makes every request sent during the
stall wait, and that wait is in their latency (measured from each request's intended send
time), not hidden by a generator that stopped sending while it waited (coordinated
omission). No Ray: a gRPC server in a process of its own, stalling its event loop."""
from __future__ import annotations

import time

from bench.loadgen import GeneratorPool, Step
from bench.peers.serving import in_process
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

STALL_S, EVERY_S = 0.2, 1.0
RATE, MEASURE_S = 200.0, 4.0


class Stalling(decision_pb2_grpc.DecisionServiceServicer):
    """Answers at once, but blocks its event loop STALL_S once every EVERY_S."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    async def Decide(self, request, context):  # noqa: N802  (the gRPC method's name)
        now = time.monotonic()
        if now - self.last > EVERY_S:
            self.last = now
            time.sleep(STALL_S)  # blocking on purpose: every call behind it waits
        return pb.Decision(customer_id=request.customer_id, channel=request.channel)


def test_a_stalling_server_shows_its_stall_in_the_tail():
    pool = GeneratorPool(2)
    try:
        with in_process(Stalling) as target:
            step = pool.run(Step(target, "decide", RATE, 1.0, MEASURE_S, 100, 1))
    finally:
        pool.close()
    decide = step["kinds"]["decide"]
    # about a fifth of each second's requests arrive during a stall; the p99 is one of them
    assert decide["p99_ms"] >= STALL_S * 1e3 / 2, decide
    assert decide["max_ms"] >= STALL_S * 1e3 * 0.75, decide
    assert decide["p50_ms"] < STALL_S * 1e3 / 4, decide  # the rest are answered at once
    assert not step["generator"]["behind"]  # the generators kept sending through the stalls
