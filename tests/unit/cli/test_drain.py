"""`kairos drain` sends DrainNode to a gateway on another node, reached where it listens."""
from __future__ import annotations

from kairos.cluster.cli.operate import _another_gateway
from kairos.v1 import admin_pb2


def node(node_id: str, address: str, port: int, serving: bool = True) -> admin_pb2.NodeStatus:
    return admin_pb2.NodeStatus(node_id=node_id, address=address, gateway_port=port,
                                serving=serving)


def test_on_kubernetes_every_gateway_has_port_50051_and_an_address_of_its_own():
    leaving = node("aa", "10.0.0.5", 50051)
    nodes = [leaving, node("bb", "10.0.0.6", 50051, serving=False), node("cc", "10.0.0.7", 50051)]
    # preStop names its own gateway on loopback: the drain must go to another pod
    assert _another_gateway("127.0.0.1:50051", leaving, nodes) == "10.0.0.7:50051"


def test_nodes_of_one_machine_are_reached_on_the_targets_loopback_host():
    leaving = node("aa", "192.0.2.2", 50052)
    nodes = [node("bb", "192.0.2.2", 50051), leaving]
    assert _another_gateway("127.0.0.1:50052", leaving, nodes) == "127.0.0.1:50051"
    assert _another_gateway("192.0.2.2:50052", leaving, nodes) == "192.0.2.2:50051"


def test_with_no_other_serving_gateway_the_target_is_used():
    leaving = node("aa", "10.0.0.5", 50051)
    assert _another_gateway("10.0.0.5:50051", leaving, [leaving]) == "10.0.0.5:50051"
