"""Continuous traffic (bench.drain, bench.soak) is one schedule cut into steps: the load does
not pause between steps, however slowly the server answers. The server records when each
request arrives and answers it ANSWER_S later. No Ray: a gRPC server in a process of its own.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time

import grpc
import pytest

from bench.loadgen import STOP_NOTICE_S, GeneratorPool, Step
from bench.peers.serving import in_process
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

ARRIVALS = "arrivals?"  # the customer whose Decide asks the server for its arrival times
ANSWER_S = 0.7  # within the generators' deadline (loadgen.DEADLINE_S)
RATE, STEP_S = 200.0, 2.0
# The longest pause in arrivals allowed: 50 mean inter-arrival times (Poisson arrivals leave
# such a gap about once in e^50), a third of the pause waiting for the last answers makes
GAP_S = 0.25


class Slow(decision_pb2_grpc.DecisionServiceServicer):
    """Records the generators' Decides (they name a placement) and answers them ANSWER_S
    later; the harness's settle probes (no placement) at once."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []

    async def Decide(self, request, context):  # noqa: N802  (the gRPC method's name)
        if request.customer_id == ARRIVALS:
            return pb.Decision(decision_id=json.dumps(self.arrivals))
        if request.placement:
            self.arrivals.append(time.time())
            await asyncio.sleep(ANSWER_S)
        return pb.Decision(customer_id=request.customer_id, channel=request.channel)


def arrivals(target: str) -> list[float]:
    with grpc.insecure_channel(target) as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        return json.loads(stub.Decide(pb.DecideRequest(customer_id=ARRIVALS),
                                      timeout=10).decision_id)


def test_requests_keep_arriving_across_a_step_boundary_while_the_server_is_slow():
    pool = GeneratorPool(1)
    try:
        with in_process(Slow) as target:
            first, second = pool.traffic(Step(target, "decide", RATE, 0.0, STEP_S, 1000),
                                         2).results()
            seen = arrivals(target)
    finally:
        pool.close()
    assert not first["chained"] and first["settled_s"] is not None
    assert second["chained"] and second["settled_s"] is None
    assert second["started_at"] == first["ended_at"]
    # every request arrived, and belongs to one step; each was answered
    assert len(seen) == first["sent"] + second["sent"]
    assert all(s["kinds"]["decide"]["count"] == s["sent"] > 0 for s in (first, second))
    # the second step's requests arrive from the first's end to its own, with no pause while
    # the first's last answers were awaited
    during = [first["ended_at"]] + [t for t in seen if first["ended_at"] <= t
                                    <= second["ended_at"]] + [second["ended_at"]]
    gaps = [b - a for a, b in zip(during, during[1:])]
    widest = max(range(len(gaps)), key=gaps.__getitem__)
    assert gaps[widest] <= GAP_S, (gaps[widest], "s from", during[widest] - first["ended_at"],
                                   "s after the boundary")


class Answering(decision_pb2_grpc.DecisionServiceServicer):
    async def Decide(self, request, context):  # noqa: N802  (the gRPC method's name)
        return pb.Decision(customer_id=request.customer_id, channel=request.channel)


def test_stopped_traffic_ends_with_the_step_under_way():
    pool = GeneratorPool(2)
    try:
        with in_process(Answering) as target:
            with pool.traffic(Step(target, "decide", RATE, 0.5, 1.0, 1000)) as traffic:
                time.sleep(max(traffic.measured_at + 1.5 - time.time(), 0.0))
                stopped = time.time()
                steps = traffic.stop()
    finally:
        pool.close()
    assert len(steps) >= 2
    assert steps[0]["started_at"] == traffic.started_at
    assert steps[0]["ended_at"] == traffic.measured_at + 1.0
    for before, step in zip(steps, steps[1:]):
        assert step["chained"] and step["started_at"] == before["ended_at"]
    assert all(s["kinds"]["decide"]["count"] == s["sent"] > 0 for s in steps)
    # the last step is the one under way STOP_NOTICE_S after stop()
    assert steps[-1]["started_at"] <= stopped + STOP_NOTICE_S < steps[-1]["ended_at"]


def test_traffic_that_fails_to_start_stops_its_cpu_samplers(monkeypatch):
    pool = GeneratorPool(1)
    running = set(threading.enumerate())

    def refused(*args: object) -> None:
        raise RuntimeError("cannot schedule new futures after shutdown")

    try:
        with in_process(Answering) as target:
            monkeypatch.setattr(pool._pool, "submit", refused)  # as a pool shut down does
            with pytest.raises(RuntimeError):
                pool.traffic(Step(target, "decide", RATE, 0.5, 1.0, 1000))
    finally:
        pool.close()
    assert set(threading.enumerate()) <= running  # no sampler thread left
