"""`kairos drain` sends DrainNode to a gateway on another node, reached where it listens, and
leaves a node that is drained already as it is."""
from __future__ import annotations

from kairos.cluster.cli.operate import _another_gateway, drained
from kairos.v1 import admin_pb2


def node(node_id: str, address: str, port: int, serving: bool = True) -> admin_pb2.NodeStatus:
    return admin_pb2.NodeStatus(node_id=node_id, address=address, gateway_port=port,
                                serving=serving)


def test_on_kubernetes_every_gateway_has_port_50051_and_an_address_of_its_own():
    leaving = node("aa", "10.0.0.5", 50051)
    nodes = [leaving, node("bb", "10.0.0.6", 50051, serving=False), node("cc", "10.0.0.7", 50051)]
    # whatever gateway the target reaches (preStop: Service kairos-gateway), the drain goes
    # to another pod's
    assert _another_gateway("kairos-gateway:50051", leaving, nodes) == "10.0.0.7:50051"
    assert _another_gateway("127.0.0.1:50051", leaving, nodes) == "10.0.0.7:50051"


def test_nodes_of_one_machine_are_reached_on_the_targets_loopback_host():
    leaving = node("aa", "192.0.2.2", 50052)
    nodes = [node("bb", "192.0.2.2", 50051), leaving]
    assert _another_gateway("127.0.0.1:50052", leaving, nodes) == "127.0.0.1:50051"
    assert _another_gateway("192.0.2.2:50052", leaving, nodes) == "192.0.2.2:50051"


def test_with_no_other_serving_gateway_the_target_is_used():
    leaving = node("aa", "10.0.0.5", 50051)
    assert _another_gateway("10.0.0.5:50051", leaving, [leaving]) == "10.0.0.5:50051"


def test_a_node_is_drained_once_it_is_marked_and_holds_no_gateway_and_no_shard():
    assert drained(admin_pb2.NodeStatus(node_id="aa", draining=True))
    assert not drained(admin_pb2.NodeStatus(node_id="aa", draining=True, gateway_port=50051))
    assert not drained(admin_pb2.NodeStatus(node_id="aa", draining=True, shards=["s1"]))
    assert not drained(admin_pb2.NodeStatus(node_id="aa", gateway_port=0))
