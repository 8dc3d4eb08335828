"""API keys at the gateway, over real gRPC on 127.0.0.1 and the in-process backend (no Ray).

Table-driven over the rules themselves: every RPC of kairos.v1 must have a rule, and every rule
is tried with no key, an unknown key, a key lacking the scope and a key with it; every rule
that names a channel is tried with a key bound to another channel and to the right one.
"""
from __future__ import annotations

import asyncio
import contextvars
import threading

import grpc
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kairos.cluster.gateway.auth import (RULES, SCOPES, ApiKey, Auth, AuthInterceptor, Denied,
                                         check_channel)
from kairos.cluster.gateway.calls import Gateway
from kairos.cluster.gateway.server import serve
from kairos.cluster.settings import GATEWAY_INFLIGHT_LIMIT
from kairos.cluster.transport.client import KairosClient
from kairos.v1 import admin_pb2, decision_pb2
from kairos.v1 import decision_pb2 as pb

from tests.support.local_backend import LocalBackend

METHODS = {f"/{service.full_name}/{method.name}": method
           for module in (decision_pb2, admin_pb2)
           for service in module.DESCRIPTOR.services_by_name.values()
           for method in service.methods}
UNKNOWN_KEY = "not-a-key-at-all-0000"


def secret(scope: str, channel: str | None = None) -> str:
    return f"{scope}-{channel or 'any'}-key-0123456789"


KEYS = "keys:\n" + "".join(
    f"  - {{key: '{secret(scope, channel)}', name: {scope}-{channel or 'any'}, "
    f"scopes: ['{scope}']" + (f", channel: {channel}" if channel else "") + "}\n"
    for scope in SCOPES for channel in (None, "web"))
DENIED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
# what a call that got past auth may answer with the requests below (empty ones, or ones that
# only name a channel): it was checked, and refused for its content, or served
SERVED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
          grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.DEADLINE_EXCEEDED}


class InProcessGateway:
    """A gateway over LocalBackend, served from its own event-loop thread."""

    def __init__(self, auth: Auth):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = self.run(self._start(auth))

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    async def _start(self, auth: Auth) -> int:
        backend = LocalBackend()
        await backend.start_runtime(1, n_partitions=16)
        self.client = await KairosClient(backend).connect()
        self.gateway = Gateway("g", self.client, backend)
        await self.gateway.refresh_catalog()
        self.server, _, port = await serve(self.gateway, auth, "127.0.0.1", 0)
        return port

    async def _stop(self) -> None:
        await self.server.stop(0)
        await self.client.close()

    def close(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def served():
    gateway = InProcessGateway(Auth.load(KEYS))
    channel = grpc.insecure_channel(f"127.0.0.1:{gateway.port}")
    yield gateway, channel
    channel.close()
    gateway.close()


def request_for(method: str, channel: str | None = None):
    """An empty request of the method's type; with `channel`, naming it where the rule says."""
    message = message_factory.GetMessageClass(METHODS[method].input_type)()
    field = RULES[method].channel
    if channel is not None and field == "events.channel":
        message.events.add(channel=channel)
    elif channel is not None:
        setattr(message, field, channel)
    return message


def status_of(channel: grpc.Channel, method: str, request, key: str | None) -> grpc.StatusCode:
    """Call `method` with `request` (streamed as one message where the method streams)."""
    desc = METHODS[method]
    stub = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}[
        desc.client_streaming, desc.server_streaming](
        method, request_serializer=type(request).SerializeToString,
        response_deserializer=message_factory.GetMessageClass(desc.output_type).FromString)
    metadata = (("x-api-key", key),) if key is not None else ()
    try:
        answer = stub(iter([request]) if desc.client_streaming else request, timeout=2,
                      metadata=metadata)
        if desc.server_streaming:
            list(answer)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_every_rpc_has_a_rule_and_every_rule_an_rpc():
    assert set(RULES) == set(METHODS)
    assert {rule.scope for rule in RULES.values()} <= set(SCOPES)
    for method, rule in RULES.items():
        if rule.channel is not None:
            assert request_for(method, "web") != request_for(method), method


@pytest.mark.parametrize("method", sorted(RULES))
def test_a_call_needs_a_known_key_with_its_scope(served, method):
    _, channel = served
    scope = RULES[method].scope
    other = next(s for s in SCOPES if s != scope)
    request = request_for(method)
    assert status_of(channel, method, request, None) == grpc.StatusCode.UNAUTHENTICATED
    assert status_of(channel, method, request, UNKNOWN_KEY) == grpc.StatusCode.UNAUTHENTICATED
    assert status_of(channel, method, request, secret(other)) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert status_of(channel, method, request, secret(scope)) in SERVED


@pytest.mark.parametrize("method", sorted(m for m, rule in RULES.items() if rule.channel))
def test_a_channel_bound_key_acts_on_its_channel_only(served, method):
    _, channel = served
    key = secret(RULES[method].scope, "web")
    assert status_of(channel, method, request_for(method, "app"), key) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert status_of(channel, method, request_for(method, "web"), key) in SERVED
    assert status_of(channel, method, request_for(method, "app"),
                     secret(RULES[method].scope)) in SERVED


def test_the_refusal_names_the_missing_scope_or_channel(served):
    _, channel = served
    decide = channel.unary_unary("/kairos.v1.DecisionService/Decide",
                                 request_serializer=pb.DecideRequest.SerializeToString,
                                 response_deserializer=pb.Decision.FromString)
    for key, details in ((secret("ingest"), "key 'ingest-any' lacks the 'decide' scope"),
                         (secret("decide", "web"), "key 'decide-web' is for channel 'web', "
                                                   "not 'app'"),
                         (None, "missing or unknown API key (send it as 'x-api-key')")):
        with pytest.raises(grpc.RpcError) as err:
            decide(pb.DecideRequest(customer_id="c", channel="app"), timeout=5,
                   metadata=(("x-api-key", key),) if key else ())
        assert err.value.details() == details


def test_keys_are_checked_before_the_request_is_parsed(served):
    _, channel = served
    decide = channel.unary_unary("/kairos.v1.DecisionService/Decide")  # bytes as they are
    with pytest.raises(grpc.RpcError) as err:
        decide(b"\xff\xff not a DecideRequest", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_stream_stops_at_the_first_event_of_another_channel(served):
    _, channel = served
    stream = channel.stream_stream("/kairos.v1.DecisionService/IngestStream",
                                   request_serializer=pb.Event.SerializeToString,
                                   response_deserializer=pb.IngestAck.FromString)
    events = [pb.Event(customer_id="s", type="app_open", channel="web"),
              pb.Event(customer_id="s", type="app_open", channel="app")]
    acks = stream(iter(events), timeout=5, metadata=(("x-api-key", secret("ingest", "web")),))
    assert next(acks).sequence == 1
    with pytest.raises(grpc.RpcError) as err:
        next(acks)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_health_is_open_and_calls_past_the_inflight_limit_are_refused(served):
    gateway, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="kairos.v1.DecisionService"),
                        timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    gateway.gateway.inflight += GATEWAY_INFLIGHT_LIMIT
    try:
        method = "/kairos.v1.DecisionService/Decide"
        assert status_of(channel, method, request_for(method), secret("decide")) == \
            grpc.StatusCode.RESOURCE_EXHAUSTED
        assert status_of(channel, method, request_for(method), None) == \
            grpc.StatusCode.UNAUTHENTICATED  # keys first, as before
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
    finally:
        gateway.gateway.inflight -= GATEWAY_INFLIGHT_LIMIT


def test_a_method_without_a_rule_is_refused():
    class Details:
        method = "/kairos.v1.DecisionService/Unruled"
        invocation_metadata = (("x-api-key", secret("admin")),)

    class Aborted(Exception):
        pass

    class Context:
        async def abort(self, code, details):
            raise Aborted(f"{code.name}: {details}")

    async def main():
        async def continuation(details):
            return grpc.unary_unary_rpc_method_handler(lambda request, context: None)

        handler = await AuthInterceptor(Auth.load(KEYS)).intercept_service(continuation,
                                                                           Details())
        with pytest.raises(Aborted, match="PERMISSION_DENIED: .*Unruled has no access rule"):
            await handler.unary_unary(b"", Context())
    asyncio.run(main())


def test_a_channel_check_outside_an_admitted_call_is_refused():
    with pytest.raises(Denied, match="not admitted"):
        contextvars.Context().run(check_channel, "web")


def test_keys_are_found_by_their_whole_secret():
    keys = {f"key-{i:02d}-0123456789abcdef": ApiKey(f"k{i}", frozenset({"decide"}))
            for i in range(20)}
    auth = Auth(keys)
    assert auth.identify("key-07-0123456789abcdef").name == "k7"
    for guess in ("key-07-0123456789abcde", "key-07-0123456789abcdeF", "", None,
                  "key-07-0123456789abcdef "):
        assert auth.identify(guess) is None
