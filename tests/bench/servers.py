"""gRPC servers the load generators' tests send to: Decide only, no Ray (bench.peers.serving
runs one in a process of its own)."""
from __future__ import annotations

import asyncio
import json
import time

import grpc

from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

ARRIVALS = "arrivals?"  # the customer whose Decide asks the server for its arrival times
ANSWER_S = 0.7  # Slow's, within the generators' deadline (loadgen.DEADLINE_S)


class Answering(decision_pb2_grpc.DecisionServiceServicer):
    """Answers every Decide at once."""

    async def Decide(self, request, context):  # noqa: N802  (the gRPC method's name)
        return pb.Decision(customer_id=request.customer_id, channel=request.channel)


class Slow(decision_pb2_grpc.DecisionServiceServicer):
    """Records the generators' Decides (they name a placement) and answers them `answer_s`
    later; the harness's settle probes (no placement) at once."""

    def __init__(self, answer_s: float = ANSWER_S) -> None:
        self.answer_s = answer_s
        self.arrivals: list[float] = []

    async def Decide(self, request, context):  # noqa: N802  (the gRPC method's name)
        if request.customer_id == ARRIVALS:
            return pb.Decision(decision_id=json.dumps(self.arrivals))
        if request.placement:
            self.arrivals.append(time.time())
            await asyncio.sleep(self.answer_s)
        return pb.Decision(customer_id=request.customer_id, channel=request.channel)


def arrivals(target: str) -> list[float]:
    """When the Slow server at `target` received the generators' Decides (epoch seconds)."""
    with grpc.insecure_channel(target) as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        return json.loads(stub.Decide(pb.DecideRequest(customer_id=ARRIVALS),
                                      timeout=10).decision_id)
