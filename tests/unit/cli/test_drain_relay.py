"""Where `kairos drain` relays DrainNode when several workers leave together (their preStop
hooks at once: a Recreate, `kubectl delete pod -l ...`, a drain of several nodes): through the
controller's node's gateway first, never drained, and through the next gateway when a relay's
call is cut because that relay's own node drained and its gateway stopped."""
from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from concurrent import futures

import grpc
import pytest

from kairos.cluster.cli import operate
from kairos.cluster.cli.main import main
from kairos.cluster.cli.operate import relays
from kairos.cluster.gateway.admin import AdminService
from kairos.v1 import admin_pb2, admin_pb2_grpc

from tests.unit.control.test_nodes import Watched, started
from tests.unit.gateway.test_admin_deadlines import Context

HEAD, A, B = "ab" * 28, "cd" * 28, "ef" * 28
ADDRESS = {HEAD: "10.0.0.1", A: "10.0.0.2", B: "10.0.0.3"}


def node(node_id: str, address: str, port: int, serving: bool = True,
         controller: bool = False) -> admin_pb2.NodeStatus:
    return admin_pb2.NodeStatus(node_id=node_id, address=address, gateway_port=port,
                                serving=serving, controller=controller)


@pytest.mark.parametrize("order", list(itertools.permutations([HEAD, A, B])))
def test_two_leaving_workers_relay_through_the_head_not_through_each_other(order):
    """The review's case: both hooks read the status before either drain began, so both
    workers show serving; in node-id order each could pick the other, whose gateway stops
    once its own drain is done and cuts the call."""
    nodes = [node(n, ADDRESS[n], 50051, controller=n == HEAD) for n in order]
    a, b = (next(n for n in nodes if n.node_id == w) for w in (A, B))
    for leaving, other in ((a, b), (b, a)):
        through = relays("kairos-gateway:50051", leaving, nodes)
        assert through[0] == "10.0.0.1:50051"
        assert through == ["10.0.0.1:50051", f"{other.address}:50051", "kairos-gateway:50051"]


def test_the_status_marks_the_controllers_node():
    """cluster_status marks the node the controller runs on, and the gateway carries it."""
    async def status() -> admin_pb2.ClusterStatus:
        backend = Watched()
        ctl = await started(backend, home="node-b")
        service = AdminService(type("Gateway", (), {"backend": type(
            "Backend", (), {"controller": lambda self: ctl})(), "node": None})())
        return await service.GetClusterStatus(admin_pb2.ClusterStatusRequest(), Context(5))
    st = asyncio.run(status())
    assert {n.node_id: n.controller for n in st.node_status} == {
        "node-a": False, "node-b": True, "node-c": False}


class Gateway(admin_pb2_grpc.AdminServiceServicer):
    """A gateway's AdminService: the status it is given; DrainNode answered, recorded with
    the deadline it had left, or `cut` (this gateway's server stops during the call, as a
    leaving worker's gateway does once its own drain is done), or refused with `refuse`."""

    def __init__(self, nodes=(), cut: bool = False, refuse: grpc.StatusCode | None = None):
        self.nodes, self.cut, self.refuse = list(nodes), cut, refuse
        self.drained: list[tuple[str, float]] = []
        self.server: grpc.Server | None = None
        self.port = 0

    def GetClusterStatus(self, request, context):
        return admin_pb2.ClusterStatus(node_status=self.nodes)

    def DrainNode(self, request, context):
        self.drained.append((request.node_id, context.time_remaining()))
        if self.refuse is not None:
            context.abort(self.refuse, "refused")
        if self.cut:  # a second into the call, as a stopping gateway's grace period ends
            threading.Timer(1.0, self.server.stop, args=(0,)).start()
            threading.Event().wait(5)
        return admin_pb2.DrainNodeResponse(node_id=request.node_id, shards=["kairos-shard-0002"])


@pytest.fixture
def serve():
    servers = []

    def start(gateway: Gateway) -> int:
        gateway.server = server = grpc.server(futures.ThreadPoolExecutor(4))
        admin_pb2_grpc.add_AdminServiceServicer_to_server(gateway, server)
        gateway.port = port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return port
    yield start
    for server in servers:
        server.stop(None)


def cluster(serve, worker_b: Gateway) -> tuple[Gateway, int]:
    """Worker A leaving; worker B's gateway `worker_b`, on A's machine (reached at the
    target's loopback host, as under `kairos up --nodes N`); the head's gateway not serving
    (the control loop restarts it), so B's comes before the Service's. The Service (the
    target) reaches a gateway that answers."""
    service = Gateway()
    port = serve(service)
    b_port = serve(worker_b)
    service.nodes = [node(HEAD, "127.0.0.1", 0, serving=False, controller=True),
                     node(A, "192.0.2.9", 50051), node(B, "192.0.2.9", b_port)]
    return service, port


def test_a_drain_cut_by_its_relays_own_stop_is_sent_again_within_the_deadline_left(serve,
                                                                                   capsys):
    worker_b = Gateway(cut=True)
    service, port = cluster(serve, worker_b)
    assert main(["--target", f"127.0.0.1:{port}", "drain", A[:8], "--if-present",
                 "--timeout", "30"]) == 0
    assert [n for n, _ in worker_b.drained] == [A]
    assert [n for n, _ in service.drained] == [A]
    (_, first), (_, again) = worker_b.drained[0], service.drained[0]
    assert again < first - 0.5  # the deadline left, not a new one
    err = capsys.readouterr()
    assert (f"DrainNode through 127.0.0.1:{worker_b.port} ended" in err.err
            and f"sent again through 127.0.0.1:{port}" in err.err)
    assert f"node {A[:8]} (192.0.2.9) is drained in" in err.out


def test_a_drain_refused_by_the_relay_is_not_sent_again(serve, capsys):
    worker_b = Gateway(refuse=grpc.StatusCode.FAILED_PRECONDITION)
    service, port = cluster(serve, worker_b)
    assert main(["--target", f"127.0.0.1:{port}", "drain", A[:8]]) == 1
    assert [n for n, _ in worker_b.drained] == [A] and service.drained == []
    assert "FAILED_PRECONDITION" in capsys.readouterr().err


def test_a_cut_drain_with_too_little_time_left_is_not_sent_again(serve, monkeypatch):
    monkeypatch.setattr(operate, "MIN_RELAY_S", 60.0)
    worker_b = Gateway(cut=True)
    service, port = cluster(serve, worker_b)
    assert main(["--target", f"127.0.0.1:{port}", "drain", A[:8], "--timeout",
                 "30"]) == 1
    assert service.drained == []


@pytest.mark.parametrize("status", ["slow", "failing"])
def test_a_cut_drain_is_sent_again_whatever_the_next_gateways_status_does(serve, status):
    """The review's case: the status read before a resend failed the drain when it was slow
    (a shard's health hangs on a node just killed) or failed, though the resend would have
    worked. The controller answers a drain sent again with the first one's result (the
    control tests of drains.py), so the CLI reads no status before it."""
    class Status(Gateway):
        def GetClusterStatus(self, request, context):
            if status == "slow":
                time.sleep(3)
            context.abort(grpc.StatusCode.INTERNAL, "status failed")
    first, second = Gateway(cut=True), Status()
    through = [f"127.0.0.1:{serve(first)}", f"127.0.0.1:{serve(second)}"]
    began = time.monotonic()
    done = operate._relayed_drain(through, A, 30.0)
    assert done.shards == ["kairos-shard-0002"] and [n for n, _ in second.drained] == [A]
    assert time.monotonic() - began < 2.5  # the cut's second, and no status read


@pytest.fixture
def silent():
    """Listeners that accept connections and never answer (a pod IP whose packets are
    dropped costs gRPC its 20 s connect timeout the same way)."""
    sockets = []

    def listener() -> str:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        sockets.append(s)
        return f"127.0.0.1:{s.getsockname()[1]}"
    yield listener
    for s in sockets:
        s.close()


def test_a_relay_that_does_not_connect_is_passed_over_after_a_short_wait(serve, silent,
                                                                         monkeypatch, capsys):
    monkeypatch.setattr(operate, "CONNECT_S", 0.5)
    target = Gateway()
    through = [silent(), silent(), f"127.0.0.1:{serve(target)}"]
    began = time.monotonic()
    done = operate._relayed_drain(through, A, 30.0)
    assert time.monotonic() - began < 5.0  # not 2 x 20 s
    assert done.shards == ["kairos-shard-0002"] and [n for n, _ in target.drained] == [A]
    (_, left), = target.drained
    assert 25.0 < left < 29.5  # the deadline left, less the relays' waits
    err = capsys.readouterr().err
    assert f"DrainNode through {through[0]}: no connection in 0.5 s; sent through " \
           f"{through[1]}" in err


def test_through_a_loopback_target_no_pod_address_is_sent_the_drain(serve, capsys,
                                                                    monkeypatch):
    """The review's case: through a port-forward, the nodes' addresses (here in TEST-NET,
    reaching nothing) may be other hosts', which must not get the admin key: the drain goes
    through the target, at once."""
    monkeypatch.setattr(operate, "_here", lambda address: False)  # whatever this machine is
    service = Gateway([node(HEAD, "192.0.2.1", 50051, controller=True),
                       node(A, "192.0.2.2", 50051)])
    port = serve(service)
    began = time.monotonic()
    assert main(["--target", f"127.0.0.1:{port}", "drain", A[:8]]) == 0
    assert time.monotonic() - began < operate.CONNECT_S  # no connection tried elsewhere
    assert [n for n, _ in service.drained] == [A]
    assert "192.0.2.1" not in capsys.readouterr().err


def test_a_loopback_target_on_a_node_drains_it_through_another_nodes_gateway(monkeypatch):
    """The review's case: on a worker (`kubectl exec`, `kairos start` on each machine) the
    target is the worker's own gateway, which does not drain its node: the head's, at its
    address on the cluster's network, is tried first, as before the port-forward rule."""
    nodes = [node(HEAD, "192.0.2.1", 50051, controller=True), node(A, "192.0.2.2", 50051)]
    monkeypatch.setattr(operate, "_here", lambda address: address == "192.0.2.2")
    assert relays("127.0.0.1:50051", nodes[1], nodes) == ["192.0.2.1:50051", "127.0.0.1:50051"]
    monkeypatch.setattr(operate, "_here", lambda address: False)  # a port-forward
    assert relays("127.0.0.1:50051", nodes[1], nodes) == ["127.0.0.1:50051"]


def test_this_machines_addresses_are_here():
    assert operate._here("127.0.0.1") and not operate._here("198.51.100.77")


def test_a_relay_plaintext_may_not_reach_is_passed_over(serve, capsys, monkeypatch):
    """The review's case: on a node of a plaintext cluster without KAIROS_INSECURE, the first
    relay (another node's address) was refused with SystemExit and the drain died, though the
    loopback target was allowed."""
    monkeypatch.delenv("KAIROS_INSECURE", raising=False)
    monkeypatch.delenv("KAIROS_TLS_CA", raising=False)
    target = Gateway()
    through = ["198.51.100.9:50051", f"127.0.0.1:{serve(target)}"]
    done = operate._relayed_drain(through, A, 30.0)
    assert done.shards == ["kairos-shard-0002"] and [n for n, _ in target.drained] == [A]
    assert "DrainNode through 198.51.100.9:50051: passed over" in capsys.readouterr().err


@pytest.mark.parametrize("code", [grpc.StatusCode.PERMISSION_DENIED,
                                  grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL])
def test_a_relay_that_is_no_gateway_of_the_cluster_is_passed_over(serve, capsys, code):
    """The review's case: a host answering at a node's address with an error of its own ended
    the drain, which the target would have done."""
    stranger, target = Gateway(refuse=code), Gateway()
    through = [f"127.0.0.1:{serve(stranger)}", f"127.0.0.1:{serve(target)}"]
    done = operate._relayed_drain(through, A, 30.0)
    assert done.shards == ["kairos-shard-0002"] and [n for n, _ in target.drained] == [A]
    assert f"DrainNode through {through[0]} ended {code.name}" in capsys.readouterr().err


def test_the_drains_error_names_the_gateway_that_answered(serve, capsys):
    worker_b = Gateway(refuse=grpc.StatusCode.FAILED_PRECONDITION)
    service, port = cluster(serve, worker_b)
    assert main(["--target", f"127.0.0.1:{port}", "drain", A[:8]]) == 1
    assert capsys.readouterr().err.startswith(
        f"error: 127.0.0.1:{worker_b.port}: FAILED_PRECONDITION: refused")
