"""A step starts once the system is settled; a gateway that shed goes on refusing a share of
new calls for most of a second after its overload ends (PIE's share decays), and three probes
in a row got through it: the next step's IngestStreams, opened at once, were refused as they
opened (issue 17). Settling waits for SETTLE_PROBES fast answers in a row, and once a probe
was refused, for SETTLE_QUIET_S without one."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import grpc
import pytest

from bench import loadgen
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

REFUSING_S = 0.5  # how long the server sheds after its first call


class StillShedding(decision_pb2_grpc.DecisionServiceServicer):
    """Refuses the Decides whose number (from 1) is `refused` for REFUSING_S from the first;
    when it did."""

    def __init__(self, refused: Callable[[int], bool]) -> None:
        self.refused = refused
        self.calls = 0
        self.first: float | None = None
        self.refusals: list[float] = []

    def Decide(self, request, context):  # noqa: N802  (the gRPC method's name)
        now = time.perf_counter()
        self.first = now if self.first is None else self.first
        self.calls += 1
        if now - self.first < REFUSING_S and self.refused(self.calls):
            self.refusals.append(now)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded: shedding")
        return pb.Decision(customer_id=request.customer_id)


# one in four from the first, three in a row getting through; one in six from the sixth,
# the first five getting through
@pytest.mark.parametrize("refused", [lambda n: n % 4 == 1, lambda n: n % 6 == 0],
                         ids=["first-refused", "first-five-through"])
def test_settling_waits_out_a_gateway_still_refusing_a_share_of_calls(refused):
    servicer = StillShedding(refused)
    server = grpc.server(ThreadPoolExecutor(2))
    decision_pb2_grpc.add_DecisionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        assert loadgen.settle(f"127.0.0.1:{port}") is not None
        settled = time.perf_counter()
    finally:
        server.stop(None)
    assert len(servicer.refusals) > 1  # it went on refusing after probes got through
    assert settled - servicer.refusals[-1] >= loadgen.SETTLE_QUIET_S


class PausesNow(decision_pb2_grpc.DecisionServiceServicer):
    """Refuses the first Decide; after it, answers one call every PAUSE_EVERY_S a pause
    (a GC pause, a housekeeping tick) late, the rest at once."""

    PAUSE_EVERY_S, PAUSE_S = 0.3, 0.03

    def __init__(self) -> None:
        self.calls = 0
        self.paused = time.perf_counter()
        self.refused: float | None = None

    def Decide(self, request, context):  # noqa: N802  (the gRPC method's name)
        self.calls += 1
        if self.calls == 1:
            self.refused = time.perf_counter()
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded: shedding")
        if time.perf_counter() - self.paused >= self.PAUSE_EVERY_S:
            self.paused = time.perf_counter()
            time.sleep(self.PAUSE_S)
        return pb.Decision(customer_id=request.customer_id)


def test_after_a_refusal_a_system_that_pauses_more_than_once_a_second_settles(monkeypatch):
    """The quiet time after a refusal is a time without refusals: it used to need an unbroken
    second of fast answers, which a steady system pausing every 0.3 s never gives, so every
    step after a refusal waited out SETTLE_TIMEOUT_S (120 s) and began unsettled."""
    monkeypatch.setattr(loadgen, "SETTLE_TIMEOUT_S", 5.0)
    servicer = PausesNow()
    server = grpc.server(ThreadPoolExecutor(2))
    decision_pb2_grpc.add_DecisionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        settled_s = loadgen.settle(f"127.0.0.1:{port}")
        settled = time.perf_counter()
    finally:
        server.stop(None)
    assert settled_s is not None and settled_s < 3.0
    assert settled - servicer.refused >= loadgen.SETTLE_QUIET_S
