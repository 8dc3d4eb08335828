"""`kairos drain` sends DrainNode to a gateway on another node, reached where it listens,
leaves a node that is drained already as it is, and with --if-present (the workers' preStop
hook) takes a node that is no longer alive as done."""
from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from kairos.cluster.cli.main import main
from kairos.cluster.cli import operate
from kairos.cluster.cli.operate import drained, relays
from kairos.v1 import admin_pb2, admin_pb2_grpc


def node(node_id: str, address: str, port: int, serving: bool = True) -> admin_pb2.NodeStatus:
    return admin_pb2.NodeStatus(node_id=node_id, address=address, gateway_port=port,
                                serving=serving)


def test_on_kubernetes_every_gateway_has_port_50051_and_an_address_of_its_own():
    leaving = node("aa", "10.0.0.5", 50051)
    nodes = [leaving, node("bb", "10.0.0.6", 50051, serving=False), node("cc", "10.0.0.7", 50051)]
    # whatever gateway the target reaches (preStop: Service kairos-gateway), the drain goes
    # to another pod's
    assert relays("kairos-gateway:50051", leaving, nodes)[0] == "10.0.0.7:50051"


def test_through_a_port_forward_the_admin_key_goes_to_no_pod_address(monkeypatch):
    """The review's case: from an operator's machine, a pod's address may be another host's
    (an office network overlapping the pod CIDR), which would get the admin key; the
    port-forward on loopback is the only relay."""
    monkeypatch.setattr(operate, "_here", lambda address: False)  # whatever this machine is
    leaving = node("aa", "10.0.0.5", 50051)
    nodes = [leaving, node("cc", "10.0.0.7", 50051), node("dd", "127.0.0.1", 50052)]
    assert relays("127.0.0.1:50051", leaving, nodes) == ["127.0.0.1:50052", "127.0.0.1:50051"]
    assert relays("localhost:50051", leaving, nodes) == ["127.0.0.1:50052", "localhost:50051"]


def test_nodes_of_one_machine_are_reached_on_the_targets_loopback_host():
    leaving = node("aa", "192.0.2.2", 50052)
    nodes = [node("bb", "192.0.2.2", 50051), leaving]
    assert relays("127.0.0.1:50052", leaving, nodes)[0] == "127.0.0.1:50051"
    assert relays("192.0.2.2:50052", leaving, nodes)[0] == "192.0.2.2:50051"
    assert relays("dns:///127.0.0.1:50052", leaving, nodes)[0] == "127.0.0.1:50051"
    assert relays("ipv6:[::1]:50052", leaving, nodes)[0] == "[::1]:50051"


def test_with_no_other_serving_gateway_the_target_is_used():
    leaving = node("aa", "10.0.0.5", 50051)
    assert relays("10.0.0.5:50051", leaving, [leaving]) == ["10.0.0.5:50051"]


def test_a_node_is_drained_once_it_is_marked_and_holds_no_gateway_and_no_shard():
    assert drained(admin_pb2.NodeStatus(node_id="aa", draining=True))
    assert not drained(admin_pb2.NodeStatus(node_id="aa", draining=True, gateway_port=50051))
    assert not drained(admin_pb2.NodeStatus(node_id="aa", draining=True, shards=["s1"]))
    assert not drained(admin_pb2.NodeStatus(node_id="aa", gateway_port=0))


class Admin(admin_pb2_grpc.AdminServiceServicer):
    """A gateway's AdminService over a fixed cluster: `nodes` alive, and DrainNode answering
    NOT_FOUND for the ids in `gone` (nodes that left Ray after the status call)."""

    def __init__(self, nodes: list[admin_pb2.NodeStatus], gone: tuple[str, ...] = ()):
        self.nodes, self.gone, self.drained = nodes, gone, []

    def GetClusterStatus(self, request, context):
        return admin_pb2.ClusterStatus(node_status=self.nodes)

    def DrainNode(self, request, context):
        if request.node_id in self.gone:
            context.abort(grpc.StatusCode.NOT_FOUND, f"node_id: {request.node_id} is not an "
                                                     f"alive node of this cluster")
        self.drained.append(request.node_id)
        return admin_pb2.DrainNodeResponse(node_id=request.node_id, shards=["kairos-shard-0001"])


@pytest.fixture
def serve():
    servers = []

    def start(admin: Admin) -> int:
        server = grpc.server(futures.ThreadPoolExecutor(2))
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return port
    yield start
    for server in servers:
        server.stop(None)


HEAD = "ab" * 28
WORKER = "cd" * 28


def test_a_node_rays_autoscaler_removed_already_is_done_for_the_prestop_hook(serve, capsys):
    """Ray's autoscaler (v1) de-registers an idle worker from the GCS before KubeRay deletes
    its pod: the pod's address names no alive node when its preStop hook runs."""
    port = serve(Admin([node(HEAD, "10.0.0.1", 50051)]))
    drain = ["--target", f"127.0.0.1:{port}", "drain", "10.0.0.9"]
    assert main(drain + ["--if-present"]) == 0
    # said as no match, not as done: an operator's mistyped name is noticed
    assert "'10.0.0.9' matches no alive node's id or address: nothing drained (alive: " \
        in capsys.readouterr().err
    assert main(drain) == 2  # named by hand, a node that is not there is a mistake
    assert "names no alive node" in capsys.readouterr().err


def test_a_node_that_leaves_between_the_status_and_the_drain_is_done_too(serve, capsys):
    admin = Admin([], gone=(WORKER,))
    port = serve(admin)
    admin.nodes = [node(HEAD, "127.0.0.1", port), node(WORKER, "10.0.0.9", 50051)]
    drain = ["--target", f"127.0.0.1:{port}", "drain", "10.0.0.9"]
    assert main(drain + ["--if-present"]) == 0
    assert f"node {WORKER[:8]} (10.0.0.9) is no longer alive" in capsys.readouterr().out
    assert main(drain) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_a_node_that_is_there_is_drained_with_the_flag_as_without(serve, capsys):
    admin = Admin([])
    port = serve(admin)
    admin.nodes = [node(HEAD, "127.0.0.1", port), node(WORKER, "10.0.0.9", 50051)]
    assert main(["--target", f"127.0.0.1:{port}", "drain", "10.0.0.9", "--if-present"]) == 0
    assert admin.drained == [WORKER]
    assert f"node {WORKER[:8]} (10.0.0.9) is drained in" in capsys.readouterr().out


def test_an_address_is_matched_however_it_is_written_and_an_empty_name_is_refused(serve,
                                                                                  capsys):
    """An alive node named in another spelling of its address is drained, not taken for one
    gone (the preStop would drain nothing and say nothing); an empty name names nothing."""
    admin = Admin([])
    port = serve(admin)
    admin.nodes = [node(HEAD, "127.0.0.1", port), node(WORKER, "fd00::9", 50051)]
    target = ["--target", f"127.0.0.1:{port}", "drain"]
    assert main(target + ["[fd00:0:0::9]", "--if-present"]) == 0
    assert admin.drained == [WORKER]
    assert main(target + ["", "--if-present"]) == 2
    assert "name the node to drain" in capsys.readouterr().err
