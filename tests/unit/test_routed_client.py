"""The routed client (cluster/routed.py) against plain gRPC servers standing in for a gateway and
two shard endpoints: routes that do not hold together never replace good ones nor crash a
call, and no call waits for a routes refresh once routes are known."""
from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc
import pytest

from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc as pbg

from kairos.cluster.control.partitions import partition_of
from kairos.cluster import routed as routed_module
from kairos.cluster.routed import RoutedClient

from tests.support.waiting import wait_until

P = 8
OWNERS = [0] * 4 + [1] * 4


class Service(pbg.DecisionServiceServicer):
    def __init__(self, name: str):
        self.name = name
        self.routes = pb.Routes()
        self.fetches = 0

    def GetRoutes(self, request, context):
        self.fetches += 1
        return self.routes

    def Decide(self, request, context):
        return pb.Decision(decision_id=self.name, customer_id=request.customer_id)


@pytest.fixture
def cluster():
    servers, services, addresses = [], [], []
    for name in ("gateway", "e1", "e2"):
        server = grpc.server(futures.ThreadPoolExecutor(4))
        service = Service(name)
        pbg.add_DecisionServiceServicer_to_server(service, server)
        addresses.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
        server.start()
        servers.append(server)
        services.append(service)
    gateway = services[0]
    gateway.routes = pb.Routes(version=1, partitions=P, endpoints=addresses[1:], owners=OWNERS)
    yield gateway, addresses
    for server in servers:
        server.stop(0)


def customer_of(owner: int) -> str:
    return next(c for c in (f"c{i}" for i in range(1000))
                if OWNERS[partition_of(c, P)] == owner)


def decided_by(client: RoutedClient, customer: str) -> str:
    return client.Decide(pb.DecideRequest(customer_id=customer, channel="web"),
                         timeout=10).decision_id


def fetched(client: RoutedClient, gateway: Service, fetches: int) -> None:
    wait_until(lambda: gateway.fetches >= fetches and not client._fetching.locked(), 10,
               f"routes fetch {fetches} done")


MALFORMED = {
    "owners shorter than partitions": lambda endpoints: pb.Routes(
        version=2, partitions=P, endpoints=endpoints[:1], owners=[0]),
    "owner index past endpoints": lambda endpoints: pb.Routes(
        version=2, partitions=P, endpoints=endpoints[:1], owners=[0] * 4 + [5] * 4),
    "partitions with no endpoints": lambda endpoints: pb.Routes(version=2, partitions=P),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_routes_send_calls_to_the_gateway_before_any_good_ones(cluster, case):
    gateway, addresses = cluster
    gateway.routes = MALFORMED[case](addresses[1:])
    client = RoutedClient(addresses[0], refresh_s=3600)
    try:
        assert decided_by(client, customer_of(0)) == "gateway"
        assert decided_by(client, customer_of(1)) == "gateway"
        assert client.stub_for(customer_of(1)) is client._gateway
    finally:
        client.close()


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_routes_leave_the_good_ones_in_place_and_are_logged_once(cluster, case,
                                                                          caplog):
    gateway, addresses = cluster
    client = RoutedClient(addresses[0], refresh_s=0)  # every call has the routes fetched
    try:
        assert decided_by(client, customer_of(1)) == "e2"
        gateway.routes = MALFORMED[case](addresses[1:])
        with caplog.at_level(logging.WARNING, logger="kairos.cluster.routed"):
            for fetches in (2, 3):
                decided_by(client, customer_of(1))  # starts fetch `fetches`
                fetched(client, gateway, fetches)
                assert decided_by(client, customer_of(1)) == "e2"
                assert decided_by(client, customer_of(0)) == "e1"
        assert client._current().version == 1
        assert len([r for r in caplog.records if "do not hold together" in r.message]) == 1
    finally:
        client.close()


def test_no_call_waits_for_a_routes_refresh_once_routes_are_known(cluster):
    gateway, addresses = cluster
    client = RoutedClient(addresses[0], refresh_s=0)
    release = threading.Event()
    refreshing = threading.Event()
    answered = threading.Event()
    decided = []
    try:
        assert decided_by(client, customer_of(0)) == "e1"  # the first fetch, waited for
        fetch = client._gateway.GetRoutes

        def stalled(*args, **kwargs):  # a gateway that answers only once let
            refreshing.set()
            release.wait(30)
            return fetch(*args, **kwargs)
        client._gateway.GetRoutes = stalled

        def calls() -> None:  # the one that starts the refresh, then one to a new endpoint
            decided.append(decided_by(client, customer_of(0)))
            decided.append(decided_by(client, customer_of(1)))
            answered.set()
        threading.Thread(target=calls, daemon=True).start()
        assert answered.wait(10), "a call waited for the routes refresh"
        assert refreshing.is_set() and not release.is_set()
        assert decided == ["e1", "e2"]
    finally:
        release.set()
        client.close()



def test_the_retry_after_an_endpoint_went_away_goes_where_the_new_routes_say(cluster,
                                                                            monkeypatch):
    """Review rev42 d-plane finding 2: with refreshes in the background, the retry that the
    UNAVAILABLE made the routes due for still went to the endpoint gone (by the old routes),
    failing once more."""
    gateway, addresses = cluster
    monkeypatch.setattr(routed_module, "RETRY_ROUTES_S", 0.0)
    gone = customer_of(0)
    client = RoutedClient(addresses[0], refresh_s=60)
    try:
        assert decided_by(client, gone) == "e1"
        gateway.routes = pb.Routes(version=2, partitions=P, endpoints=addresses[1:],
                                   owners=[1] * P)  # e1's shard left: e2 owns all
        dead = client._stub(addresses[1])
        monkeypatch.setattr(dead, "Decide", Refusing())
        with pytest.raises(grpc.RpcError):
            decided_by(client, gone)
        assert decided_by(client, gone) == "e2"
    finally:
        client.close()


class Refusing:
    """A stub method answering UNAVAILABLE, as an endpoint whose shard left does."""

    def with_call(self, *args, **kwargs):
        raise Unavailable()


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def trailing_metadata(self) -> tuple:
        return ()
