"""Nodes that join and leave under traffic, on a real Ray cluster on this machine.

The controller keeps a gateway on every node (GatewaySpec): a node that joins serves kairos.v1
and takes its share of partitions without anyone calling the CLI; DrainNode empties a node
while traffic flows. The traffic is what a client balancing per call sends: gRPC's
round_robin over every gateway with client-side health checking, so a gateway that turns
NOT_SERVING is taken out by the client, as a Kubernetes readiness probe takes a pod out.
Throughout, no call fails, no decision is a fallback, and every acknowledged event is applied
exactly once, in order.
"""
from __future__ import annotations

import grpc
import pytest
import ray

from kairos.cluster.cli.main import main
from kairos.cluster.control import runtime
from kairos.cluster.control.nodes import GatewaySpec
from kairos.v1 import admin_pb2, admin_pb2_grpc
from kairos.v1 import decision_pb2_grpc

from tests.support.ray_nodes import started
from tests.support.waiting import wait_until

from .traffic import UNSHED, Traffic

TUNING = {"KAIROS_RETIRE_GRACE_S": "1", "KAIROS_DRAIN_UNREADY_S": "2",
          "KAIROS_CONTROL_LOOP_S": "0.5", **UNSHED}
JOIN_S = 30.0  # the bound: a node that joins serves, with shards, within this


@pytest.fixture(scope="module")
def cluster(ray_cluster, tmp_path_factory):
    c = ray_cluster(nodes=2, env=TUNING)
    runtime.start(n_shards=2, n_partitions=256, store=str(tmp_path_factory.mktemp("store")),
                  gateways=GatewaySpec("127.0.0.1", 0), shards_per_cpu=1.0)
    yield c
    runtime.stop()


def node_status() -> list[dict]:
    return ray.get(runtime.controller().status.remote())["node_status"]


def join(cluster) -> dict:
    """Add a Ray node; its status once it serves (its gateway, and partitions on its
    shards), which must be within JOIN_S of Ray counting it alive. On this loaded 2-core machine
    Ray's own start of a node now and then fails (its raylet exits before it registers with the
    GCS, with nothing in its logs, or registers after Ray's 30 s, or dies once alive: the
    actors started on it then end with the core worker's "Broken pipe" to its raylet): that
    node is removed and another one started."""
    for _ in range(3):
        node = started(lambda: cluster.add_node(num_cpus=1, object_store_memory=128 * 2**20,
                                                dashboard_agent_listen_port=0))
        try:
            wait_until(lambda: alive(node.node_id), 20, "the new node alive in Ray", poll_s=0.5)
        except AssertionError:
            cluster.remove_node(node, allow_graceful=False)
            continue

        def serves_or_died():
            if not alive(node.node_id):
                return "died"
            new = [n for n in node_status() if n["node"] == node.node_id]
            return new and new[0]["serving"] and new[0]["partitions"] > 0 and new[0]
        new = wait_until(serves_or_died, JOIN_S, "the joined node's gateway and shards",
                         poll_s=0.5)
        if new == "died":
            cluster.remove_node(node, allow_graceful=False)
            continue
        return new
    raise AssertionError("Ray could not start a node that stayed up three times")


def alive(node_id: str) -> bool:
    return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())


def gateways(nodes: list[dict]) -> list[str]:
    return [f"127.0.0.1:{n['gateway_port']}" for n in nodes if n["serving"]]


def test_a_node_joins_then_nodes_are_drained_under_traffic_without_a_failed_call(cluster,
                                                                                capsys):
    head = ray.get_runtime_context().get_node_id()
    start = node_status()
    assert len(start) == 2 and all(n["serving"] and n["shards"] for n in start)
    admin_channel = grpc.insecure_channel(
        f"127.0.0.1:{next(n['gateway_port'] for n in start if n['node'] == head)}")
    admin = admin_pb2_grpc.AdminServiceStub(admin_channel)
    decisions = decision_pb2_grpc.DecisionServiceStub(admin_channel)
    traffic = Traffic(16).start(gateways(start))
    wait_until(lambda: traffic.total() > 100, 60, "a first stretch of traffic")

    new = join(cluster)
    assert len(new["shards"]) == 1  # one CPU, one shard per CPU
    traffic.targets = gateways(node_status())
    acked = traffic.total()
    wait_until(lambda: traffic.total() > acked + 100, 60, "traffic through three gateways")

    with grpc.insecure_channel(f"127.0.0.1:{new['gateway_port']}") as own:
        with pytest.raises(grpc.RpcError) as refused:  # it would stop under its own call
            admin_pb2_grpc.AdminServiceStub(own).DrainNode(
                admin_pb2.DrainNodeRequest(node_id=new["node"]), timeout=30)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "another node" in refused.value.details()

    def holds_nothing_and_traffic_goes_on(node: str) -> None:
        drained = next(n for n in node_status() if n["node"] == node)
        assert drained["draining"] and not drained["serving"] and not drained["shards"]
        assert drained["partitions"] == 0
        traffic.targets = gateways(node_status())
        acked = traffic.total()
        wait_until(lambda: traffic.total() > acked + 50, 60, "traffic after the drain")

    # the joined node through the RPC
    done = admin.DrainNode(admin_pb2.DrainNodeRequest(node_id=new["node"]), timeout=300)
    assert done.moved > 0 and list(done.shards) == new["shards"]
    holds_nothing_and_traffic_goes_on(new["node"])
    # then a node that was there at start, with `kairos drain` by an id prefix, pointed at
    # that node's own gateway (the CLI sends the drain to a gateway on another node)
    worker = next(n for n in start if n["node"] != head)
    assert main(["drain", worker["node"][:12],
                 "--target", f"127.0.0.1:{worker['gateway_port']}"]) == 0
    assert "is drained" in capsys.readouterr().out
    holds_nothing_and_traffic_goes_on(worker["node"])
    traffic.stop()
    traffic.check(decisions)
    assert traffic.decided > 300
    admin_channel.close()


def test_drain_node_refuses_what_it_cannot_do(cluster):
    head = ray.get_runtime_context().get_node_id()
    port = next(n["gateway_port"] for n in node_status() if n["node"] == head)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        for node_id, code in (("f" * 56, grpc.StatusCode.NOT_FOUND),
                              ("not hex!", grpc.StatusCode.INVALID_ARGUMENT),
                              (head, grpc.StatusCode.FAILED_PRECONDITION)):  # the last one
            with pytest.raises(grpc.RpcError) as refused:
                admin.DrainNode(admin_pb2.DrainNodeRequest(node_id=node_id), timeout=30)
            assert refused.value.code() == code, refused.value.details()
