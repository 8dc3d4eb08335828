"""The gRPC contract served by the shards' own processes (shard/api.py), end to end on a real
local Ray: a client that routes calls the owner of each customer and is answered without the
data plane; a call to a shard that does not own the customer is sent on and served; keys and
scopes hold as at a gateway; the API serves again, on its port, after Ray restarts the shard."""
from __future__ import annotations

import os
import signal

import grpc
import pytest
import ray

from kairos.cluster.control import runtime
from kairos.cluster.gateway.wire import value_out
from kairos.cluster.settings import NAMESPACE
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.waiting import wait_until

WEB = "web-key-0123456789"
KEYS = f"keys:\n  - {{key: {WEB}, name: web, channel: web, scopes: [decide, ingest]}}\n"
AUTH = (("x-api-key", WEB),)


@pytest.fixture(scope="module")
def shards(ray_cluster, tmp_path_factory):
    """{shard name: (its actor, the port its API serves on)} and a client of the runtime."""
    ray_cluster(nodes=1, cpus_per_node=2)
    names = runtime.start(n_shards=2, n_partitions=64)["shards"]
    keys_file = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys_file.write_text(KEYS)
    keys_file.chmod(0o600)
    served = {}
    for name in names:
        actor = ray.get_actor(name, namespace=NAMESPACE)
        served[name] = actor, ray.get(actor.serve_api.remote("127.0.0.1", 0, str(keys_file)))
    client = runtime.connect()
    yield served, client
    client.close()
    runtime.stop()


def decide(port: int, customer: str, metadata=AUTH) -> pb.Decision:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return decision_pb2_grpc.DecisionServiceStub(channel).Decide(
            pb.DecideRequest(customer_id=customer, channel="web"), metadata=metadata,
            timeout=10)


def customers_of(client, owner: str, n: int) -> list[str]:
    return [c for c in (f"api-{i}" for i in range(1000)) if client.owner(c) == owner][:n]


def test_the_owner_answers_in_process_and_another_shard_sends_the_call_on(shards):
    served, client = shards
    (a, (actor_a, port_a)), (b, (actor_b, port_b)) = served.items()
    before_a, before_b = (ray.get(x.api_batches_in_process.remote()) for x in (actor_a, actor_b))
    for customer in customers_of(client, a, 5):
        assert decide(port_a, customer).customer_id == customer
    after_a = ray.get(actor_a.api_batches_in_process.remote())
    assert after_a - before_a >= 5  # every one in process (a batch may hold more than one)
    for customer in customers_of(client, a, 5):
        decision = decide(port_b, customer)  # b does not own them: sent on to a
        assert decision.customer_id == customer and not decision.fallback
    assert ray.get(actor_b.api_batches_in_process.remote()) == before_b
    ingested = pb.Event(customer_id=customers_of(client, b, 1)[0], type="page_view",
                        channel="web")
    ingested.attributes["category"].CopyFrom(value_out("home"))
    with grpc.insecure_channel(f"127.0.0.1:{port_b}") as channel:
        ack = decision_pb2_grpc.DecisionServiceStub(channel).Ingest(ingested, metadata=AUTH,
                                                                    timeout=10)
    assert ack.sequence >= 1


def test_keys_and_scopes_hold_as_at_a_gateway(shards):
    served, _ = shards
    port = next(iter(served.values()))[1]
    with pytest.raises(grpc.RpcError) as no_key:
        decide(port, "api-0", metadata=())
    assert no_key.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as other_channel, \
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        decision_pb2_grpc.DecisionServiceStub(channel).Decide(
            pb.DecideRequest(customer_id="api-0", channel="call_center"), metadata=AUTH,
            timeout=10)
    assert other_channel.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_restarted_shard_serves_its_api_again_on_the_same_port(shards):
    served, client = shards
    name, (actor, port) = next(iter(served.items()))
    pid = ray.get(actor.health.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    customer = customers_of(client, name, 1)[0]

    def served_again() -> bool:
        try:
            return decide(port, customer).customer_id == customer
        except grpc.RpcError:
            return False
    wait_until(served_again, 60, "the restarted shard's API to answer on its port")
    assert ray.get(actor.health.remote())["pid"] != pid
