"""The services open without a key (grpc.health, reflection) hold a bounded number of streams:
anyone could open Watch streams by the thousand (each a task and tens of KiB, for as long as
its caller stayed); past bounds.OPEN_STREAMS of a method, or settings.OPEN_STREAMS_PER_HOST
from one host (an IPv4 address, an IPv6 /64), a reflection stream is refused
RESOURCE_EXHAUSTED and a health Watch UNIMPLEMENTED, which a client's own health checking
takes as a healthy backend (any other refusal made a client configured as k8s/README.md says
lose the gateway, for a pool another host had filled),
but only while the gateway shows SERVING (UNIMPLEMENTED takes the connection off health checks
for its life: it kept a gateway that went NOT_SERVING),
while health's Check stays open to every caller (Kubernetes' probes carry no key). Each
connection carries every watch stream of the gateway and server.CALLS_PER_CONNECTION calls
more. Through gRPC to the in-process gateway, with API keys on; another host's calls come
through a relay whose connections leave from 127.0.0.2."""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections import Counter as Tally
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kairos.cluster.gateway import bounds, server, streams
from kairos.cluster.gateway.server import set_health
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support import inprocess_gateway
from tests.support.inprocess_gateway import serving
from tests.support.waiting import wait_until
from tests.unit.gateway.test_admin_deadlines import Context, answer

KEY = "secret-key-0123456789"
KEYS = f"keys:\n  - key: '{KEY}'\n    scopes: [decide, watch]\n"
SERVING = health_pb2.HealthCheckResponse.SERVING
ALONE = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
# a client as k8s/README.md configures one for the headless service
HEALTH_CHECKED = ALONE + [("grpc.service_config", json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}))]


class OtherHost:
    """A relay listening on 127.0.0.1 whose connections reach the gateway's `port` from
    127.0.0.2: the gateway sees their calls come from another host."""

    def __init__(self, port: int):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, args=(port,), daemon=True).start()

    def _accept(self, port: int) -> None:
        while True:
            try:
                inside, _ = self.listener.accept()
            except OSError:  # closed
                return
            outside = socket.create_connection(("127.0.0.1", port),
                                               source_address=("127.0.0.2", 0))
            self.sockets += [inside, outside]
            for source, sink in ((inside, outside), (outside, inside)):
                threading.Thread(target=_relay, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self.listener.close()
        for each in self.sockets:
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
            each.close()


def _relay(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def _channel(port: int, options=ALONE):
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        yield channel


@contextlib.contextmanager
def _from_other_host(port: int):
    """A channel to the gateway on `port` whose calls come from 127.0.0.2."""
    relay = OtherHost(port)
    try:
        with _channel(relay.port) as channel:
            yield channel
    finally:
        relay.close()


def _watch(channel: grpc.Channel):
    """A health Watch of the whole server, past its first answer."""
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(),
                                                      timeout=30)
    assert next(watch).status == SERVING
    return watch


def _check(channel: grpc.Channel, timeout: float = 10) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                     timeout=timeout).status


def _reflection(channel: grpc.Channel, done: threading.Event):
    """A reflection stream, past its first answer, open until `done`."""
    def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        done.wait(30)
    stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        requests(), timeout=30)
    assert next(stream).list_services_response.service
    return stream


def _decide(channel: grpc.Channel) -> pb.Decision:
    return DecisionServiceStub(channel).Decide(pb.DecideRequest(customer_id="alice",
                                                                channel="web"),
                                               timeout=10, metadata=[("x-api-key", KEY)])


def _refused(open_stream, code=grpc.StatusCode.RESOURCE_EXHAUSTED) -> str:
    with pytest.raises(grpc.RpcError) as refused:
        open_stream()
    assert refused.value.code() == code
    return refused.value.details()


def test_open_streams_are_bounded_and_checks_stay_open(monkeypatch):
    monkeypatch.setattr(bounds, "OPEN_STREAMS", 2)
    with serving(KEYS) as (_, channel):
        watches = [_watch(channel), _watch(channel)]
        assert "grpc.health.v1.Health/Watch streams" in _refused(
            lambda: _watch(channel), grpc.StatusCode.UNIMPLEMENTED)
        assert _check(channel) == SERVING
        done = threading.Event()
        streams = [_reflection(channel, done), _reflection(channel, done)]
        assert "ServerReflectionInfo streams" in _refused(lambda: _reflection(channel, done))
        watches.pop().cancel()  # its place is free again once the gateway sees it gone

        def watch_again() -> bool:
            try:
                watches.append(_watch(channel))
            except grpc.RpcError:
                return False
            return True
        wait_until(watch_again, 10, "a Watch in the place of the cancelled one")
        done.set()
        for stream in watches + streams:
            stream.cancel()


def test_a_client_with_health_checks_keeps_a_gateway_whose_watches_another_host_holds(
        monkeypatch):
    monkeypatch.setattr(bounds, "OPEN_STREAMS", 3)
    with serving(KEYS) as (gateway, _), _from_other_host(gateway.port) as hog:
        held = [_watch(hog) for _ in range(3)]
        with _channel(gateway.port, HEALTH_CHECKED) as client:
            assert _decide(client).decision_id  # its Watch was refused: the gateway is healthy
        for watch in held:
            watch.cancel()


def test_past_the_bound_a_not_serving_gateway_refuses_a_watch_and_its_clients_leave(
        monkeypatch):
    """Answered UNIMPLEMENTED, a client's channel takes its connection off health checks for
    the connection's life, and kept a gateway that went NOT_SERVING (a drain, a lost map):
    refused otherwise, it leaves the gateway, as one whose Watch answered NOT_SERVING."""
    shown = {}

    async def keeping_health(*args, **kwargs):
        served = shown["served"] = await server.serve(*args, **kwargs)
        return served
    monkeypatch.setattr(inprocess_gateway, "serve", keeping_health)
    monkeypatch.setattr(bounds, "OPEN_STREAMS", 2)
    with serving(KEYS) as (gateway, channel):
        held = [_watch(channel), _watch(channel)]
        gateway.run(set_health(shown["served"][1], False))
        assert "try again in a moment" in _refused(lambda: _watch(channel))
        with _channel(gateway.port, HEALTH_CHECKED) as client:
            with pytest.raises(grpc.RpcError) as left:
                _decide(client)
            assert left.value.code() == grpc.StatusCode.UNAVAILABLE
        refused = gateway.gateway.watches_refused
        assert refused["resource_exhausted"] >= 2 and not refused["unimplemented"]
        for watch in held:
            watch.cancel()


def test_one_host_holds_a_bounded_share_of_the_watches(monkeypatch):
    monkeypatch.setattr(bounds, "OPEN_STREAMS_PER_HOST", 2)
    with serving(KEYS) as (gateway, channel):
        held = [_watch(channel), _watch(channel)]
        assert "Watch streams of 127.0.0.1 at once" in _refused(
            lambda: _watch(channel), grpc.StatusCode.UNIMPLEMENTED)
        with _from_other_host(gateway.port) as other:
            held.append(_watch(other))  # another host's place is its own
        with _channel(gateway.port, HEALTH_CHECKED) as client:  # this host's, past its bound
            assert _decide(client).decision_id
        for watch in held:
            watch.cancel()


class FromPeer(Context):
    def __init__(self, peer: str):
        super().__init__(None)
        self._peer = peer

    def peer(self) -> str:
        return self._peer


def test_ipv6_callers_count_as_their_64(monkeypatch):
    """A host is given a /64 at least and picks addresses from it at will: counted by
    address, one host held any number of places."""
    monkeypatch.setattr(bounds, "OPEN_STREAMS_PER_HOST", 1)
    limits = bounds.Bounds(SimpleNamespace(name="g", watches_refused=Tally()), None)
    method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

    async def main():
        await limits._enter(method, FromPeer("ipv6:%5B2001:db8:0:7::1%5D:40000"))
        refused = await answer(limits._enter(method,
                                             FromPeer("ipv6:%5B2001:db8:0:7:ff::2%5D:40001")))
        assert "ServerReflectionInfo streams of 2001:db8:0:7::/64 at once" in refused.details
        await limits._enter(method, FromPeer("ipv6:%5B2001:db8:0:8::1%5D:40000"))  # another
        # an IPv4 client reaching an IPv6 socket counts as its IPv4 address
        await limits._enter(method, FromPeer("ipv6:%5B::ffff:10.0.0.7%5D:40000"))
        assert "streams of 10.0.0.7 at once" in (await answer(
            limits._enter(method, FromPeer("ipv4:10.0.0.7:40001")))).details
    asyncio.run(main())


def test_a_connection_carries_every_watch_stream_and_a_bounded_number_of_calls_more(
        monkeypatch):
    """A push service may watch all of its customers on one channel: with 4,096 calls per
    connection and 10,000 watch streams per gateway, its Decides on that channel waited
    silently until their deadlines once it watched 4,096."""
    monkeypatch.setattr(streams, "WATCH_STREAMS", 2)
    monkeypatch.setattr(server, "CALLS_PER_CONNECTION", 1)
    with serving(KEYS) as (gateway, channel):
        stub = DecisionServiceStub(channel)
        pushes = [stub.WatchDecisions(pb.WatchRequest(customer_id=c, channel="web"),
                                      timeout=30, metadata=[("x-api-key", KEY)])
                  for c in ("a", "b")]
        for push in pushes:
            push.initial_metadata()  # the watch is in place
        assert _decide(channel).decision_id  # beside every watch stream the gateway serves
        held = _watch(channel)  # the one call more
        with pytest.raises(grpc.RpcError) as waited:  # it waits for one of them to end
            _check(channel, timeout=1)
        assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with grpc.insecure_channel(f"127.0.0.1:{gateway.port}", options=ALONE) as other:
            assert _check(other) == SERVING
        held.cancel()
        assert _check(channel) == SERVING
        for push in pushes:
            push.cancel()
