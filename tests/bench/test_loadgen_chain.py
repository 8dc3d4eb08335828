"""Continuous traffic (bench.drain, bench.soak) is steps chained one after another: a chained
step neither probes the system until it settles nor waits a start delay, so the load does not
pause when the system is slow. No Ray: a gRPC server in a process of its own."""
from __future__ import annotations

import grpc

from bench.loadgen import GeneratorPool, Step
from bench.peers.serving import in_process
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

COUNT = "settle-probes?"  # the customer whose Decide asks the server for its count


class CountingProbes(decision_pb2_grpc.DecisionServiceServicer):
    """Answers at once, and counts the settle probes: the generators' Decides all name a
    placement, the harness's probes none."""

    def __init__(self) -> None:
        self.probes = 0

    async def Decide(self, request, context):  # noqa: N802  (the gRPC method's name)
        if request.customer_id == COUNT:
            return pb.Decision(decision_id=str(self.probes))
        self.probes += not request.placement
        return pb.Decision(customer_id=request.customer_id, channel=request.channel)


def probes(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        return int(stub.Decide(pb.DecideRequest(customer_id=COUNT), timeout=10).decision_id)


def test_a_chained_step_starts_where_the_last_ended_without_settling():
    pool = GeneratorPool(1)
    try:
        with in_process(CountingProbes) as target:
            first = pool.run(Step(target, "decide", 50.0, 0.0, 1.0, 100, 1))
            settling = probes(target)
            second = pool.run(Step(target, "decide", 50.0, 0.0, 1.0, 100, 2), after=first)
            assert probes(target) == settling  # no probe before the chained step
    finally:
        pool.close()
    assert settling >= 3 and first["settled_s"] is not None and not first["chained"]
    assert second["chained"] and second["settled_s"] is None
    assert second["started_at"] == first["ended_at"]  # no gap in the schedule
    assert second["ended_at"] == second["started_at"] + 1.0
    assert second["kinds"]["decide"]["count"] == second["sent"] > 0
