"""The floor: what a Decide, or an ingested event, costs with nothing to decide or apply.

- `EmptyDecisions`: a gRPC server whose Decide answers an empty Decision at once, and whose
  IngestStream and IngestBatch acknowledge each event with its id and a sequence number and
  nothing else (the gRPC round trip, or the stream's message, and protobuf work alone).
- `RayHopDecisions`: the same, but each Decide first awaits an empty call to a Ray actor, from
  a server inside a Ray actor: the transport Kairos cannot avoid (gateway actor → shard actor).
  In three-node mode the two actors sit on different nodes.
"""
from __future__ import annotations

import time
from typing import Any, AsyncIterator

import numpy as np
import ray

from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

REFERENCE_CALLS = 500  # sequential empty actor calls for the closed-loop reference figure


class EmptyDecisions(decision_pb2_grpc.DecisionServiceServicer):
    def __init__(self) -> None:
        self.sequence = 0

    async def Decide(self, request: pb.DecideRequest, context) -> pb.Decision:
        return pb.Decision(customer_id=request.customer_id, channel=request.channel)

    async def IngestStream(self, request_iterator, context) -> AsyncIterator[pb.IngestAck]:
        async for event in request_iterator:
            yield self._ack(event)

    async def IngestBatch(self, request: pb.EventBatch, context) -> pb.EventBatchAck:
        return pb.EventBatchAck(acks=[self._ack(event) for event in request.events])

    def _ack(self, event: pb.Event) -> pb.IngestAck:
        self.sequence += 1
        return pb.IngestAck(event_id=event.event_id, sequence=self.sequence)


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
