"""Continuous traffic (bench.drain, bench.soak) is one schedule cut into steps: the load does
not pause between steps, however slowly the server answers. The server records when each
request arrives and answers it ANSWER_S later. No Ray: a gRPC server in a process of its own.
"""
from __future__ import annotations

import threading
import time

import pytest

from bench.loadgen import STOP_NOTICE_S, GeneratorPool, Step
from bench.peers.serving import in_process
from tests.bench.servers import Answering, Slow, arrivals

RATE, STEP_S = 200.0, 2.0
# The longest pause in arrivals allowed: 100 mean inter-arrival times (Poisson arrivals leave
# such a gap about once in e^100), two thirds of the 0.75 s the load paused for the first
# step's last answers when a step's traffic waited for them
GAP_S = 0.5


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
