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
from kairos.cluster.transport.client import Busy
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from kairos.cluster.storage.redis_server import RedisServer
from tests.support.waiting import wait_until

from .stream import T0, AckedStream

TUNING = {"KAIROS_RETIRE_GRACE_S": "0.5", "KAIROS_SNAPSHOT_AFTER_S": "1"}
STREAM_WAIT_S = 60.0
POLL_S = 0.25  # a poll may ask the controller, which asks every shard


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


def test_a_dead_nodes_partitions_recover_on_the_other_nodes(setup):
    cluster, _, client, _ = setup
    stream = AckedStream(client, [f"n{i}" for i in range(32)]).start()
    wait_until(lambda: stream.total() > 300, STREAM_WAIT_S,
               "a first stretch of acknowledged events", poll_s=POLL_S)
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
    st = wait_until(replaced, STREAM_WAIT_S, "the dead node's shards to be replaced", poll_s=POLL_S)
    heirs = [s for s in st["shards"] if set(s.get("recovery", {}).get("journals", ())) & lost]
    assert heirs and all(s["node"] != victim.node_id for s in heirs)
    acked = stream.total()
    wait_until(lambda: stream.total() > acked + 300, STREAM_WAIT_S,
               "events acknowledged after the recovery", poll_s=POLL_S)
    stream.stop()
    stream.check()


def test_redis_restarts_under_traffic_and_nothing_acknowledged_is_lost(setup):
    _, server, client, stub = setup
    stream = AckedStream(client, [f"r{i}" for i in range(32)]).start()
    wait_until(lambda: stream.total() > 300, STREAM_WAIT_S,
               "a first stretch of acknowledged events", poll_s=POLL_S)
    server.stop()
    # UNAVAILABLE, or BUSY where the shard refused an earlier request of this client's (the
    # stream's) and keeps this one from overtaking it
    with pytest.raises((Unavailable, Busy)):
        for i in range(100):  # the shards learn of the outage at their next write
            client.ingest("r-probe", "app_open", T0 + i)
            time.sleep(0.05)
    decision = stub.Decide(pb.DecideRequest(customer_id="r0", channel="web"), timeout=5)
    assert decision.fallback  # while its shard rebuilds, Decide still answers
    refused = stream.refused  # the stream's events are refused, not lost
    wait_until(lambda: stream.refused > refused, 10, "the stream's events refused",
               poll_s=POLL_S)
    server.start()
    acked = stream.total()
    wait_until(lambda: stream.total() > acked + 300, STREAM_WAIT_S,
               "events acknowledged after Redis came back", poll_s=POLL_S)
    stream.stop()
    stream.check()
    assert not stub.Decide(pb.DecideRequest(customer_id="r0", channel="web"),
                           timeout=5).fallback
