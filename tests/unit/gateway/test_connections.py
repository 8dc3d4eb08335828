"""The gateway bounds the connections anyone may open before a key is asked for: how many at
once (KAIROS_GATEWAY_CONNECTIONS) and how long one may carry no call
(KAIROS_GATEWAY_CONNECTION_IDLE_S). A peer that sent the HTTP/2 preface and settings and then
nothing held its connection for good before (a review held 2,000 for 133 s)."""
from __future__ import annotations

import socket
import time

import grpc
import pytest

from kairos.cluster.gateway import server
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import serving
from tests.support.waiting import wait_until

KEY = "decide-key-9f3Kq2Lm7Xw4Rt8Zb1Nc"
KEYS = f"keys:\n  - {{key: '{KEY}', name: decide, scopes: [decide, watch]}}\n"
# a complete HTTP/2 client's start: the preface, empty SETTINGS, and the ACK of the server's
HELLO = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
         + b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")


def held(port: int, n: int) -> list[socket.socket]:
    connections = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall(HELLO)
        c.setblocking(False)
        connections.append(c)
    return connections


def still_open(connections: list[socket.socket]) -> int:
    """How many the gateway has not closed (read to their end: what it sent, then EOF)."""
    n = 0
    for c in connections:
        try:
            while c.recv(65536):
                pass
        except BlockingIOError:
            n += 1  # nothing more to read, no EOF: open
        except OSError:
            pass
    return n


@pytest.fixture
def bounded(monkeypatch):
    monkeypatch.setattr(server, "GATEWAY_CONNECTIONS", 4)
    monkeypatch.setattr(server, "GATEWAY_CONNECTION_IDLE_S", 1.0)


def test_connections_past_the_bound_are_closed_and_idle_ones_after_the_idle_limit(bounded):
    with serving(KEYS) as (gateway, _):
        connections = held(gateway.port, 8)
        try:
            wait_until(lambda: still_open(connections) <= 4, 10, "the connections past 4 closed")
            wait_until(lambda: still_open(connections) == 0, 10, "the idle connections closed")
            with grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
                decision = decision_pb2_grpc.DecisionServiceStub(channel).Decide(
                    pb.DecideRequest(customer_id="ana", channel="web"),
                    metadata=(("x-api-key", KEY),), timeout=10)
            assert decision.customer_id == "ana"
        finally:
            for c in connections:
                c.close()


def test_a_connection_carrying_a_call_is_not_idle(bounded):
    with serving(KEYS) as (gateway, channel):
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        watch = stub.WatchDecisions(pb.WatchRequest(customer_id="ana", channel="web"),
                                    metadata=(("x-api-key", KEY),), timeout=4)
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as ended:
            for _ in watch:
                pass
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - began > 3  # not cut at the 1 s idle limit
