"""Load shedding (gateway/admission.py): PIE's share of refused calls follows the event loop's
lag, and a gateway whose loop is starved refuses new calls at once with RESOURCE_EXHAUSTED,
then serves everything again once the loop is free (real gRPC on 127.0.0.1, in-process
backend)."""
from __future__ import annotations

import threading
import time

import grpc
import pytest

from kairos.cluster.gateway.admission import Shedder
from kairos.cluster.gateway.auth import Auth
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import InProcessGateway
from tests.support.waiting import wait_until

TARGET_S = 0.015


def shedder(draws=(0.5,)) -> Shedder:
    values = iter(draws * 1000)
    return Shedder(TARGET_S, 0.015, draw=lambda: next(values))


def test_a_delay_held_over_the_target_raises_the_share_and_its_end_lowers_it():
    s = shedder()
    for _ in range(200):
        s.update(10 * TARGET_S)
    assert s.shed_share > 0.5 and not s.admits()  # 0.5 drawn: refused
    assert s.refused == 1
    for _ in range(400):
        s.update(0.1 * TARGET_S)
    assert s.shed_share < 0.01 and s.admits()


def test_a_short_burst_sheds_nothing():
    s = shedder(draws=(0.0,))  # the draw that a share above 0 would refuse
    s.update(5 * TARGET_S)  # one slow turn of the loop (a collection, a large message)
    for _ in range(3):
        s.update(0.1 * TARGET_S)
    assert s.shed_share < 0.2 and s.admits()


def test_the_share_stays_a_probability():
    s = shedder()
    for delay in [100.0] * 50 + [0.0] * 5000:
        s.update(delay)
        assert 0.0 <= s.shed_share <= 1.0


@pytest.fixture
def gateway():
    g = InProcessGateway(Auth.load(None))
    yield g
    g.close()


def _starve(g: InProcessGateway, until: threading.Event) -> None:
    """Keep the gateway's loop busy: a callback that holds it 40 ms, again and again."""
    def hog():
        time.sleep(0.04)
        if not until.is_set():
            g.loop.call_soon(hog)
    g.loop.call_soon_threadsafe(hog)


def test_a_starved_gateway_refuses_new_calls_at_once_and_recovers(gateway):
    stop = threading.Event()
    codes: list = []
    with grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)

        def decide() -> grpc.StatusCode:
            try:
                stub.Decide(pb.DecideRequest(customer_id="c", channel="web"), timeout=5)
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                assert "overloaded" in exc.details()
                return exc.code()

        _starve(gateway, stop)
        try:
            wait_until(lambda: gateway.gateway.shedder.shed_share > 0.5, 20,
                       "the share shed to rise while the loop is starved")
            codes = [decide() for _ in range(40)]
        finally:
            stop.set()
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        wait_until(lambda: gateway.gateway.shedder.shed_share < 0.01, 30,
                   "the share to decay once the loop is free")
        assert [decide() for _ in range(20)] == [grpc.StatusCode.OK] * 20
    assert gateway.gateway.shedder.refused == codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
