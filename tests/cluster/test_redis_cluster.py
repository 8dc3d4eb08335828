"""Production-shaped durability: three Ray nodes on this machine, the Redis store on a real
redis-server, a gRPC gateway. A node dies and its partitions recover on the other nodes;
Redis restarts and the shards rebuild; meanwhile Decide answers with the fallback."""
from __future__ import annotations

import time

import grpc
import pytest
import ray

from kairos.cluster.control import runtime
from kairos.cluster.gateway.actor import GatewayActor
from kairos.cluster.transport.backend import Unavailable
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from kairos.cluster.storage.redis_server import RedisServer
from .stream import T0, AckedStream

TUNING = {"KAIROS_RETIRE_GRACE_S": "0.5", "KAIROS_SNAPSHOT_AFTER_S": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_cluster):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    cluster = ray_cluster(nodes=3, env=TUNING)
    runtime.start(n_shards=4, n_partitions=256, store=server.url)
    head = ray.get_runtime_context().get_node_id()
    gateway = runtime.gateway_actor(GatewayActor, 0, head, host="127.0.0.1", port=0)
    port = ray.get(gateway.start.remote())
    client = runtime.connect(timeout_s=120)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield cluster, server, client, decision_pb2_grpc.DecisionServiceStub(channel)
    channel.close()
    client.close()
    runtime.stop()
    server.stop()


def status() -> dict:
    return ray.get(runtime.controller().status.remote())


def wait_for(condition, what: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def test_a_dead_nodes_partitions_recover_on_the_other_nodes(setup):
    cluster, _, client, _ = setup
    stream = AckedStream(client, [f"n{i}" for i in range(32)]).start()
    wait_for(lambda: stream.total() > 300, "a first stretch of acknowledged events")
    shards = status()["shards"]
    victim = next(n for n in cluster.worker_nodes
                  if any(s.get("node") == n.node_id for s in shards))
    lost = {s["shard"] for s in shards if s.get("node") == victim.node_id}
    cluster.remove_node(victim)

    def replaced():
        st = status()
        names = {s["shard"] for s in st["shards"]}
        return not names & lost and len(names) == len(shards) and \
            all(s.get("started") for s in st["shards"]) and st
    st = wait_for(replaced, "the dead node's shards to be replaced")
    heirs = [s for s in st["shards"] if set(s.get("recovery", {}).get("journals", ())) & lost]
    assert heirs and all(s["node"] != victim.node_id for s in heirs)
    acked = stream.total()
    wait_for(lambda: stream.total() > acked + 300, "events acknowledged after the recovery")
    stream.stop()
    stream.check()


def test_redis_restarts_under_traffic_and_nothing_acknowledged_is_lost(setup):
    _, server, client, stub = setup
    stream = AckedStream(client, [f"r{i}" for i in range(32)]).start()
    wait_for(lambda: stream.total() > 300, "a first stretch of acknowledged events")
    server.stop()
    with pytest.raises(Unavailable):
        for i in range(100):  # the shards learn of the outage at their next write
            client.ingest("r-probe", "app_open", T0 + i)
            time.sleep(0.05)
    decision = stub.Decide(pb.DecideRequest(customer_id="r0", channel="web"), timeout=5)
    assert decision.fallback  # while its shard rebuilds, Decide still answers
    refused = stream.refused
    time.sleep(1.0)
    assert stream.refused > refused  # the stream's events are refused, not lost
    server.start()
    acked = stream.total()
    wait_for(lambda: stream.total() > acked + 300, "events acknowledged after Redis came back")
    stream.stop()
    stream.check()
    assert not stub.Decide(pb.DecideRequest(customer_id="r0", channel="web"),
                           timeout=5).fallback
