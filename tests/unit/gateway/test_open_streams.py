"""The services open without a key (grpc.health, reflection) hold a bounded number of streams:
anyone could open Watch streams by the thousand (each a task and tens of KiB, for as long as
its caller stayed); past bounds.OPEN_STREAMS of a method a stream is refused
RESOURCE_EXHAUSTED, while health's Check stays open to every caller (Kubernetes' probes carry
no key). Each connection carries at most server.STREAMS_PER_CONNECTION calls at once. Through
gRPC to the in-process gateway, with API keys on."""
from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kairos.cluster.gateway import bounds, server

from tests.support.inprocess_gateway import serving
from tests.support.waiting import wait_until

KEYS = "keys:\n  - key: 'secret-key-0123456789'\n    scopes: [decide]\n"
SERVING = health_pb2.HealthCheckResponse.SERVING
ALONE = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own


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


def _refused(open_stream) -> str:
    with pytest.raises(grpc.RpcError) as refused:
        open_stream()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    return refused.value.details()


def test_open_streams_are_bounded_and_checks_stay_open(monkeypatch):
    monkeypatch.setattr(bounds, "OPEN_STREAMS", 2)
    with serving(KEYS) as (_, channel):
        watches = [_watch(channel), _watch(channel)]
        assert "grpc.health.v1.Health/Watch streams" in _refused(lambda: _watch(channel))
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


def test_a_connection_carries_a_bounded_number_of_calls(monkeypatch):
    monkeypatch.setattr(server, "STREAMS_PER_CONNECTION", 2)
    with serving(KEYS) as (gateway, channel):
        watches = [_watch(channel), _watch(channel)]
        with pytest.raises(grpc.RpcError) as waited:  # it waits for one of them to end
            _check(channel, timeout=1)
        assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with grpc.insecure_channel(f"127.0.0.1:{gateway.port}", options=ALONE) as other:
            assert _check(other) == SERVING
        watches[0].cancel()
        assert _check(channel) == SERVING
        watches[1].cancel()
