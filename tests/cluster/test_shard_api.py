"""Shard endpoints (shard/api.py), end to end on a real local Ray, started as `kairos up
--shard-endpoint-ports` starts them (the controller, from the gateways' spec: each on the
first free port of the range): GetRoutes at a
gateway names each partition's owner's endpoint, by the hash the proto documents; a client
that routes is answered by the owner in its own process, without the data plane; a call to a
shard that does not own the customer is sent on and served, with the map's version in a
trailer that has a routing client fetch its routes again; keys and scopes hold as at a
gateway; after Ray restarts a shard its endpoint serves again, on its port; health answers
SERVING while a shard owns partitions, and NOT_SERVING once it was scaled away."""
from __future__ import annotations

import hashlib
import os
import signal

import grpc
import pytest
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kairos.cluster.control import runtime
from kairos.cluster.control.nodes import GatewaySpec
from kairos.cluster.gateway.wire import value_out
from kairos.cluster.routed import ROUTES_VERSION_KEY, RoutedClient
from kairos.cluster.settings import NAMESPACE
from kairos.cluster.storage.redis_server import free_port
from kairos.v1 import admin_pb2, admin_pb2_grpc
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.waiting import wait_until

WEB = "web-key-0123456789"
KEYS = f"keys:\n  - {{key: {WEB}, name: web, channel: web, scopes: [decide, ingest]}}\n"
AUTH = (("x-api-key", WEB),)
LOW = min(free_port(), 65535 - 15)
PORTS = (LOW, LOW + 15)  # `--shard-endpoint-ports`: each endpoint binds the first free one


@pytest.fixture(scope="module")
def gateway(ray_cluster, tmp_path_factory) -> str:
    ray_cluster(nodes=1, cpus_per_node=2)
    keys_file = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys_file.write_text(KEYS)
    keys_file.chmod(0o600)
    runtime.start(n_shards=2, n_partitions=64, gateways=GatewaySpec(
        "127.0.0.1", 0, keys_file=str(keys_file), shard_endpoints=True, shard_ports=PORTS))
    nodes = ray.get(runtime.controller().status.remote())["node_status"]
    yield f"127.0.0.1:{nodes[0]['gateway_port']}"
    runtime.stop()


@pytest.fixture(scope="module")
def routes(gateway) -> pb.Routes:
    with grpc.insecure_channel(gateway) as channel:
        return decision_pb2_grpc.DecisionServiceStub(channel).GetRoutes(
            pb.RoutesRequest(), metadata=AUTH, timeout=10)


def partition(customer: str, partitions: int) -> int:
    """As the proto documents it (not the runtime's own function)."""
    digest = hashlib.blake2b(customer.encode(), digest_size=8).digest()
    return int.from_bytes(digest[:8], "little") % partitions


def owner(routes: pb.Routes, customer: str) -> str:
    return routes.endpoints[routes.owners[partition(customer, routes.partitions)]]


def call(endpoint: str, method: str, request, metadata=AUTH):
    with grpc.insecure_channel(endpoint) as channel:
        return getattr(decision_pb2_grpc.DecisionServiceStub(channel), method)(
            request, metadata=metadata, timeout=10)


def trailer(endpoint: str, customer: str) -> dict[str, str]:
    with grpc.insecure_channel(endpoint) as channel:
        _, answered = decision_pb2_grpc.DecisionServiceStub(channel).Decide.with_call(
            pb.DecideRequest(customer_id=customer, channel="web"), metadata=AUTH, timeout=10)
        return dict(answered.trailing_metadata() or ())


def health(endpoint: str) -> int:
    with grpc.insecure_channel(endpoint) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(
            service="kairos.v1.DecisionService"), timeout=10).status


def decide(endpoint: str, customer: str, metadata=AUTH) -> pb.Decision:
    return call(endpoint, "Decide", pb.DecideRequest(customer_id=customer, channel="web"),
                metadata)


def in_process(endpoint: str, routes: pb.Routes) -> int:
    """Batches the shard behind `endpoint` answered from its endpoint without the data plane."""
    shard = ray.get(runtime.controller().get_map.remote(-1, 0.0))["shards"][
        list(routes.endpoints).index(endpoint)]
    return ray.get(ray.get_actor(shard, namespace=NAMESPACE).api_batches_in_process.remote())


def test_routes_name_every_shard_s_endpoint_and_every_partition_s_owner(routes):
    assert routes.version >= 1 and routes.partitions == 64
    assert len(routes.endpoints) == 2 and all(e.startswith("127.0.0.1:") for e in
                                              routes.endpoints)
    ports = {int(e.rpartition(":")[2]) for e in routes.endpoints}
    assert len(ports) == 2 and all(PORTS[0] <= p <= PORTS[1] for p in ports), ports
    assert len(routes.owners) == 64 and set(routes.owners) == {0, 1}


def test_the_owner_answers_in_process_and_another_shard_sends_the_call_on(routes):
    a, b = routes.endpoints
    mine = [c for c in (f"api-{i}" for i in range(200)) if owner(routes, c) == a][:5]
    before_a, before_b = in_process(a, routes), in_process(b, routes)
    for customer in mine:
        assert decide(a, customer).customer_id == customer
    assert in_process(a, routes) - before_a >= 1  # in process (a batch may hold several)
    for customer in mine:
        decision = decide(b, customer)  # b does not own them: sent on to a
        assert decision.customer_id == customer and not decision.fallback
    assert in_process(b, routes) == before_b
    assert trailer(b, mine[0]) == {ROUTES_VERSION_KEY: str(routes.version)}  # a stale route
    assert ROUTES_VERSION_KEY not in trailer(a, mine[0])
    with pytest.raises(grpc.RpcError) as refused:  # an error answer says it too
        call(b, "Decide", pb.DecideRequest(customer_id=mine[0], channel="web",
                                           placement="nowhere"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(refused.value.trailing_metadata()) == {ROUTES_VERSION_KEY: str(routes.version)}
    event = pb.Event(customer_id=mine[0], type="page_view", channel="web")
    event.attributes["category"].CopyFrom(value_out("home"))
    assert call(a, "Ingest", event).sequence >= 1


def test_the_routed_client_calls_each_owner_and_the_gateway_for_the_rest(gateway, routes):
    client = RoutedClient(gateway, AUTH)
    try:
        customers = [f"routed-{i}" for i in range(20)]
        before = {e: in_process(e, routes) for e in routes.endpoints}
        for customer in customers:
            assert client.stub_for(customer) is client._stub(owner(routes, customer))
            assert client.Decide(pb.DecideRequest(customer_id=customer, channel="web"),
                                 timeout=10).customer_id == customer
        assert all(in_process(e, routes) > before[e] for e in routes.endpoints)
        by_alias = pb.DecideRequest(alias=pb.Alias(type="cookie", value="routed-c"),
                                    channel="web")
        assert client.stub_for(by_alias.customer_id) is client._gateway
        assert client.Decide(by_alias, timeout=10).customer_id.startswith("~cookie:")
        assert client.GetRoutes(pb.RoutesRequest(), timeout=10) == routes  # via the gateway
    finally:
        client.close()


def test_a_stale_route_has_the_routed_client_fetch_the_routes_again(gateway, routes):
    client = RoutedClient(gateway, AUTH, refresh_s=3600)
    try:
        assert client.stub_for("anyone") is not client._gateway  # the routes, fetched
        stale = pb.Routes(version=routes.version - 1, partitions=routes.partitions,
                          endpoints=routes.endpoints, owners=[1 - o for o in routes.owners])
        client._routes = stale  # as if each partition had moved since
        customer = "stale-0"
        assert client.stub_for(customer) is client._stub(routes.endpoints[1 - routes.owners[
            partition(customer, routes.partitions)]])
        assert client.Decide(pb.DecideRequest(customer_id=customer, channel="web"),
                             timeout=10).customer_id == customer  # sent on, and hinted
        wait_until(lambda: client._current() == routes, 10, "the routes fetched again")
        assert client.stub_for(customer) is client._stub(owner(routes, customer))
    finally:
        client.close()


def test_keys_and_scopes_hold_as_at_a_gateway(routes):
    endpoint = routes.endpoints[0]
    with pytest.raises(grpc.RpcError) as no_key:
        decide(endpoint, "api-0", metadata=())
    assert no_key.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as other_channel:
        call(endpoint, "Decide", pb.DecideRequest(customer_id="api-0", channel="call_center"))
    assert other_channel.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with grpc.insecure_channel(endpoint) as channel:  # operators' calls belong to gateways
        with pytest.raises(grpc.RpcError) as admin:
            admin_pb2_grpc.AdminServiceStub(channel).GetClusterStatus(
                admin_pb2.ClusterStatusRequest(), metadata=AUTH, timeout=10)
    assert admin.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_restarted_shard_serves_its_endpoint_again_on_the_same_port(gateway, routes):
    endpoint = routes.endpoints[0]
    shard = ray.get(runtime.controller().get_map.remote(-1, 0.0))["shards"][0]
    actor = ray.get_actor(shard, namespace=NAMESPACE)
    pid = ray.get(actor.health.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    customer = next(c for c in (f"api-{i}" for i in range(200)) if owner(routes, c) == endpoint)

    client = RoutedClient(gateway, AUTH)
    codes = []

    def served_again() -> bool:  # a client that routes, retrying as the .proto says
        try:
            decision = client.Decide(pb.DecideRequest(customer_id=customer, channel="web"),
                                     timeout=10)
        except grpc.RpcError as exc:
            codes.append(exc.code())
            return False
        return decision.customer_id == customer and not decision.fallback
    try:
        wait_until(served_again, 60, "the restarted shard's endpoint to answer on its port")
    finally:
        client.close()
    assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}, codes
    # the same port, served once the start is through (the routed client may have been served
    # through the gateway before: the shard answers its data plane first)
    wait_until(lambda: decide(endpoint, customer).customer_id == customer, 60,
               "the restarted shard's endpoint on its port")
    assert ray.get(actor.health.remote())["pid"] != pid


def test_health_serves_while_a_shard_owns_partitions_and_not_once_it_was_scaled_away(routes):
    serving = health_pb2.HealthCheckResponse.SERVING
    for endpoint in routes.endpoints:
        wait_until(lambda: health(endpoint) == serving, 30, f"{endpoint} serving")
    scaled = runtime.controller().scale.remote(1)  # moves, then a grace, then the stop
    try:
        wait_until(lambda: {health(e) for e in routes.endpoints} ==
                   {health_pb2.HealthCheckResponse.NOT_SERVING, serving}, 30,
                   "the shard scaled away out of health while it still answers")
    finally:
        ray.get(scaled)
