"""The floor: what a Decide costs with nothing to decide.

- `EmptyDecisions`: a gRPC server whose Decide answers an empty Decision at once (the gRPC
  round trip and protobuf work alone).
- `RayHopDecisions`: the same, but each Decide first awaits an empty call to a Ray actor, from
  a server inside a Ray actor: the transport Kairos cannot avoid (gateway actor → shard actor).
  In three-node mode the two actors sit on different nodes.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray

from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

REFERENCE_CALLS = 500  # sequential empty actor calls for the closed-loop reference figure


class EmptyDecisions(decision_pb2_grpc.DecisionServiceServicer):
    async def Decide(self, request: pb.DecideRequest, context) -> pb.Decision:
        return pb.Decision(customer_id=request.customer_id, channel=request.channel)


@ray.remote(num_cpus=0)
class EmptyActor:
    """Async, as a Kairos shard is: the call is admitted on the actor's event loop."""

    async def noop(self) -> None:
        return None


class RayHopDecisions(decision_pb2_grpc.DecisionServiceServicer):
    def __init__(self, actor: Any):
        self.actor = actor

    async def Decide(self, request: pb.DecideRequest, context) -> pb.Decision:
        await self.actor.noop.remote()
        return pb.Decision(customer_id=request.customer_id, channel=request.channel)


def actor_call_reference(actor: Any, calls: int = REFERENCE_CALLS) -> dict[str, float]:
    """Closed-loop sequential empty calls from the driver (a reference point, not a load
    test): p50 and p99 in ms."""
    ray.get(actor.noop.remote())
    took = []
    for _ in range(calls):
        start = time.perf_counter()
        ray.get(actor.noop.remote())
        took.append((time.perf_counter() - start) * 1e3)
    return {"calls": calls, "p50_ms": round(float(np.percentile(took, 50)), 3),
            "p99_ms": round(float(np.percentile(took, 99)), 3)}
