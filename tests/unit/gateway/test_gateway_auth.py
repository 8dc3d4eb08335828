"""API keys at the gateway, over real gRPC on 127.0.0.1 and the in-process backend (no Ray).

Table-driven over the rules themselves: every RPC of kairos.v1 must have a rule, and every RPC
is tried with every kind of key (no key, an unknown key, a key lacking the scope, a key with it,
a key with it bound to the request's channel, to another channel, and with no channel in the
request); what each should get follows from the RPC's rule alone. A channel-bound admin key
too, against a list of its own of the RPCs that act on every channel.
"""
from __future__ import annotations

import asyncio
import contextvars
import json
import time

import grpc
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kairos.cluster.gateway.auth import (ANY, FILTER, MATCH, RULES, SCOPES, UNBOUND, ApiKey,
                                         Auth, AuthInterceptor, Denied, check_channel)
from kairos.cluster.settings import GATEWAY_INFLIGHT_LIMIT
from kairos.v1 import admin_pb2, decision_pb2, decision_pb2_grpc
from kairos.v1 import decision_pb2 as pb

from tests.support.inprocess_gateway import serving

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
    for scope in SCOPES for channel in (None, "web")) + \
    "  - {key: 'ingest-decide-key-0123456789', name: ingest-decide, " \
    "scopes: ['ingest', 'decide']}\n"
DENIED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
# what a call that got past auth may answer with the requests below (empty ones, or ones that
# only name a channel): it was checked, and refused for its content, or served
SERVED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
          grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.DEADLINE_EXCEEDED}


@pytest.fixture(scope="module")
def served():
    with serving(KEYS) as both:
        yield both


def request_for(method: str, channel: str | None = None):
    """An empty request of the method's type; with `channel`, naming it where the rule says."""
    message = message_factory.GetMessageClass(METHODS[method].input_type)()
    field = RULES[method].channel
    if channel is not None and field == "events.channel":
        message.events.add(channel=channel)
    elif channel is not None and field is not None:
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
    assert {scope for rule in RULES.values() for scope in rule.also} <= set(SCOPES)
    for method, rule in RULES.items():
        if rule.channel is not None:
            assert request_for(method, "web") != request_for(method), method
    assert RULES["/kairos.v1.DecisionService/LinkIdentity"].unbinds == ("identity",)


# every kind of caller: (its key, the channel its request names), for a rule
KINDS = {
    "no key": lambda rule: (None, "web"),
    "unknown key": lambda rule: (UNKNOWN_KEY, "web"),
    "lacking the scope": lambda rule: (secret(next(s for s in SCOPES
                                                   if s not in (rule.scope, *rule.also))), "web"),
    "with the scope": lambda rule: (secret(rule.scope), "app"),
    "bound to this channel": lambda rule: (secret(rule.scope, "web"), "web"),
    "bound to another channel": lambda rule: (secret(rule.scope, "web"), "app"),
    "bound, no channel named": lambda rule: (secret(rule.scope, "web"), ""),
    "with the other scope": lambda rule: (secret(rule.also[0]), "app") if rule.also else None,
    "with the other scope, bound": lambda rule: (secret(rule.also[0], "web"), "app")
    if rule.also else None,
    "with the last of several other scopes": lambda rule: (secret(rule.also[-1]), "app")
    if len(rule.also) > 1 else None,
    "bound admin": lambda rule: (secret("admin", "web"), "web")
    if "admin" in (rule.scope, *rule.also) else None,
}
# The RPCs that act on every channel (a customer's whole history, the catalog, the cluster, the
# log of every channel's decisions), said here apart from RULES: a channel-bound key is refused
# them whatever its scopes, as it may not act outside its channel (a bound admin key erased a
# customer known on another channel only, switched the catalog and scaled the cluster)
EVERY_CHANNEL = {"/kairos.v1.DecisionService/ForgetCustomer",
                 "/kairos.v1.DecisionService/LinkIdentity",
                 "/kairos.v1.AdminService/PutCatalog", "/kairos.v1.AdminService/RollbackCatalog",
                 "/kairos.v1.AdminService/ScaleShards", "/kairos.v1.AdminService/DrainNode",
                 "/kairos.v1.AdminService/ExportDecisionLog"}
BOUND = {"bound to this channel", "bound to another channel", "bound, no channel named"}


def expected(method: str, kind: str) -> set[grpc.StatusCode]:
    """What the method's rule says a caller of this kind gets."""
    rule = RULES[method]
    if kind == "bound admin":
        return {grpc.StatusCode.PERMISSION_DENIED} if method in EVERY_CHANNEL else SERVED
    if kind in ("no key", "unknown key"):
        return {grpc.StatusCode.UNAUTHENTICATED}
    if kind == "lacking the scope":
        return {grpc.StatusCode.PERMISSION_DENIED}
    if kind in BOUND and rule.bound == UNBOUND and rule.scope not in rule.unbinds:
        return {grpc.StatusCode.PERMISSION_DENIED}
    if kind == "with the other scope, bound" and rule.bound == UNBOUND and \
            rule.also[0] not in rule.unbinds:  # an alternative scope is not a pass
        return {grpc.StatusCode.PERMISSION_DENIED}
    if kind in BOUND - {"bound to this channel"} and rule.bound == MATCH:
        return {grpc.StatusCode.PERMISSION_DENIED}
    assert rule.bound in (MATCH, FILTER, UNBOUND, ANY)
    return SERVED


@pytest.mark.parametrize("method,kind", [(method, kind) for method in sorted(RULES)
                                         for kind in KINDS if KINDS[kind](RULES[method])])
def test_every_rpc_against_every_kind_of_key(served, method, kind):
    _, channel = served
    rule = RULES[method]
    key, named = KINDS[kind](rule)
    assert status_of(channel, method, request_for(method, named), key) in expected(method, kind)


def test_the_rpcs_that_act_on_every_channel_are_for_unbound_keys():
    assert {method for method in EVERY_CHANNEL if RULES[method].bound != UNBOUND} == set()


@pytest.mark.parametrize("method", sorted(m for m, rule in RULES.items() if rule.bound == MATCH))
def test_a_channel_bound_key_cannot_leave_the_channel_out(served, method):
    _, channel = served
    key = secret(RULES[method].scope, "web")
    assert status_of(channel, method, request_for(method, ""), key) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert status_of(channel, method, request_for(method, ""), secret(RULES[method].scope)) \
        in SERVED


def ingest_key_web_link(channel: grpc.Channel, key: str) -> grpc.StatusCode:
    link = decision_pb2_grpc.DecisionServiceStub(channel).LinkIdentity
    request = pb.LinkRequest(customer_id="linked-1")
    request.alias.type, request.alias.value = "email", "linked@example.com"
    try:
        link(request, timeout=5, metadata=(("x-api-key", key),))
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_link_identity_needs_an_unbound_ingest_key_or_the_identity_scope(served):
    _, channel = served
    assert ingest_key_web_link(channel, secret("ingest", "web")) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert ingest_key_web_link(channel, secret("ingest")) in SERVED
    assert ingest_key_web_link(channel, secret("identity", "web")) in SERVED
    assert ingest_key_web_link(channel, secret("identity")) in SERVED


def refused_on_every_ingest_rpc(channel, event: pb.Event, key: str) -> set[str]:
    """The details each of Ingest, IngestBatch and IngestStream refused `event` with (each
    must refuse it, PERMISSION_DENIED)."""
    stub = decision_pb2_grpc.DecisionServiceStub(channel)
    metadata = (("x-api-key", key),)
    details = set()
    for call in (lambda: stub.Ingest(event, timeout=5, metadata=metadata),
                 lambda: stub.IngestBatch(pb.EventBatch(events=[event]), timeout=5,
                                          metadata=metadata),
                 lambda: list(stub.IngestStream(iter([event]), timeout=5, metadata=metadata))):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        details.add(err.value.details())
    return details


def test_a_web_key_cannot_change_consent_through_an_event_without_a_channel(served):
    _, channel = served
    consent = pb.Event(customer_id="consent-1", type="profile_updated")
    assert refused_on_every_ingest_rpc(channel, consent, secret("ingest", "web")) == {
        "key 'ingest-web' is for channel 'web', and the request names no channel (rule: "
        "channel must match)"}


def test_an_event_that_asks_for_a_decision_needs_the_decide_scope_too(served):
    _, channel = served
    asking = pb.Event(customer_id="asks-1", type="app_open", channel="web",
                      decide_placement="hero")
    assert refused_on_every_ingest_rpc(channel, asking, secret("ingest")) == {
        "decide_placement asks for a decision, which needs a key with the 'decide' scope"}
    both = (("x-api-key", "ingest-decide-key-0123456789"),)
    answer = decision_pb2_grpc.DecisionServiceStub(channel).Ingest(asking, timeout=5,
                                                                   metadata=both)
    assert answer.decision.channel == "web"


def test_a_channel_bound_key_reads_its_channels_decision_and_interactions_only(served):
    _, channel = served
    stub = decision_pb2_grpc.DecisionServiceStub(channel)
    stub.Ingest(pb.Event(customer_id="profiled-1", type="app_open", channel="web"), timeout=5,
           metadata=(("x-api-key", secret("ingest")),))
    for shown_on in ("web", "app"):  # impressions on two channels
        stub.Decide(pb.DecideRequest(customer_id="profiled-1", channel=shown_on,
                                     record_impression=True), timeout=5,
                    metadata=(("x-api-key", secret("decide")),))
    profile = stub.GetProfile
    unbound = profile(pb.ProfileRequest(customer_id="profiled-1"), timeout=5,
                      metadata=(("x-api-key", secret("profile:read")),))
    assert len(unbound.current) > 1 and "web" in unbound.current
    bound = profile(pb.ProfileRequest(customer_id="profiled-1"), timeout=5,
                    metadata=(("x-api-key", secret("profile:read", "web")),))
    assert set(bound.current) == {"web"}
    assert bound.current["web"].channel == "web"
    assert {h.channel for h in unbound.history} == {"web", "app"}
    assert bound.history and {h.channel for h in bound.history} == {"web"}


def exported_channels(channel: grpc.Channel, key: str, named: str = "") -> set[str]:
    """The channels of the decisions ExportDecisionLog gives `key` (the last hour's)."""
    export = channel.unary_stream("/kairos.v1.AdminService/ExportDecisionLog",
                                  request_serializer=admin_pb2.ExportDecisionLogRequest
                                  .SerializeToString,
                                  response_deserializer=admin_pb2.DecisionLogChunk.FromString)
    request = admin_pb2.ExportDecisionLogRequest(channel=named)
    request.since.FromSeconds(int(time.time()) - 3600)
    request.until.FromSeconds(int(time.time()) + 60)
    chunks = export(request, timeout=5, metadata=(("x-api-key", key),))
    return {json.loads(line)["channel"] for chunk in chunks
            for line in chunk.records.splitlines()}


@pytest.mark.parametrize("scope", ["admin", "log:read"])
def test_a_channel_bound_key_exports_no_decision_log_whatever_its_scopes(served, scope):
    """The log's profile blocks hold every channel's history, so even an export narrowed to
    the key's channel would show it the others' (an admin key's was not even narrowed)."""
    _, channel = served
    decide = decision_pb2_grpc.DecisionServiceStub(channel).Decide
    for on in ("web", "app"):
        decide(pb.DecideRequest(customer_id="logged-1", channel=on), timeout=5,
               metadata=(("x-api-key", secret("decide")),))
    assert exported_channels(channel, secret(scope)) >= {"web", "app"}
    assert exported_channels(channel, secret(scope), "app") == {"app"}
    for named in ("", "app", "web"):
        with pytest.raises(grpc.RpcError) as err:
            exported_channels(channel, secret(scope, "web"), named)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert err.value.details() == (
            f"key '{scope}-web' is for channel 'web', and /kairos.v1.AdminService/"
            f"ExportDecisionLog is for unbound keys only (rule: unbound only)")


def test_the_refusal_names_the_missing_scope_or_channel(served):
    _, channel = served
    decide = decision_pb2_grpc.DecisionServiceStub(channel).Decide
    for key, details in ((secret("ingest"), "key 'ingest-any' lacks the 'decide' scope"),
                         (secret("decide", "web"), "key 'decide-web' is for channel 'web', "
                                                   "not 'app' (rule: channel must match)"),
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
    stream = decision_pb2_grpc.DecisionServiceStub(channel).IngestStream
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


def test_a_keys_document_that_is_not_yaml_is_refused_without_quoting_it():
    """PyYAML's error quotes the line it stopped at, which holds a secret: `kairos up`
    printed it with its traceback."""
    with pytest.raises(ValueError) as refused:
        Auth.load('keys:\n  - key: "s3cr3t-agent-key-ABCDEFGHIJ\n    scopes: [decide]\n')
    assert str(refused.value).startswith("API keys: not valid YAML (line ")
    assert "s3cr3t" not in str(refused.value) and refused.value.__cause__ is None
