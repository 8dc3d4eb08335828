"""The gRPC contract end to end: real gRPC on 127.0.0.1 against a real local Ray runtime.

Every RPC, its error codes, API-key scopes, idempotent retries, the seeds' cross-channel push
(browsing on the web changes what the call-center agent sees) and forget. The deadline
fallback runs on the in-process backend with a slow shard, still over real gRPC.
"""
from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import threading
import time

import grpc
import pytest
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kairos.cluster.control import runtime
from kairos.cluster.gateway.actor import GatewayActor
from kairos.cluster.gateway.auth import Auth
from kairos.cluster.gateway.calls import Gateway
from kairos.cluster.gateway.server import serve
from kairos.cluster.evidence.records import from_json
from kairos.cluster.gateway.wire import time_out, value_out
from kairos.cluster.settings import NAMESPACE
from kairos.cluster.transport.client import KairosClient
from kairos.core.catalog import default_catalog_text
from kairos.v1 import admin_pb2, admin_pb2_grpc
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.local_backend import LocalBackend
from tests.support.waiting import wait_until

from .traffic import UNSHED


WEB, AGENT, ADMIN = "web-key-0123456789", "agent-key-0123456789", "admin-key-0123456789"
KEYS = f"""
keys:
  - {{key: {WEB}, name: web, channel: web, scopes: [decide, ingest, respond, watch]}}
  - {{key: {AGENT}, name: agent, scopes: [decide, watch, profile:read]}}
  - {{key: {ADMIN}, name: ops, scopes: [admin, decide, ingest, profile:read]}}
"""
NOW = time.time()


@pytest.fixture(scope="module")
def target(ray_cluster, tmp_path_factory):
    # the checks here are of answers, not of shedding: a busy CI machine's loop wants a CPU
    # most of the time, and the shedder refused a call now and then (traffic.UNSHED)
    ray_cluster(nodes=1, env=UNSHED, cpus_per_node=2)
    runtime.start(n_shards=2, n_partitions=256)
    keys_file = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys_file.write_text(KEYS)
    keys_file.chmod(0o600)
    gateway = runtime.gateway_actor(GatewayActor, 0, ray.get_runtime_context().get_node_id(),
                                    host="127.0.0.1", port=0, keys_file=str(keys_file))
    port = ray.get(gateway.start.remote())
    yield f"127.0.0.1:{port}"
    runtime.stop()


@pytest.fixture
def stubs(target):
    channel = grpc.insecure_channel(target)
    yield decision_pb2_grpc.DecisionServiceStub(channel), admin_pb2_grpc.AdminServiceStub(channel)
    channel.close()


def key(k: str) -> tuple:
    return (("x-api-key", k),)


def event(customer: str, etype: str, when: float = NOW, channel: str = "web", **attrs) -> pb.Event:
    e = pb.Event(customer_id=customer, type=etype, channel=channel, time=time_out(when))
    for name, value in attrs.items():
        e.attributes[name].CopyFrom(value_out(value))
    return e


def code_of(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, timeout=10, **kwargs)
    return err.value.code(), err.value.details()


def test_decide_with_explanation(stubs):
    decisions, _ = stubs
    d = decisions.Decide(pb.DecideRequest(customer_id="d1", channel="web", placement="hero",
                                          explain=True), timeout=10, metadata=key(AGENT))
    assert d.channel == "web" and d.placement == "hero" and not d.fallback
    assert d.catalog_version and d.decision_id and d.actions
    assert [a.action_id for a in d.explanation.winners] == [a.action_id for a in d.actions]
    reasons = {x.reason for x in d.explanation.dropped}
    assert "NOT_IN_CHANNEL" in reasons and all(x.detail for x in d.explanation.dropped)


@pytest.mark.parametrize("request_, field", [
    (pb.DecideRequest(customer_id="d2", channel="fax"), "channel: unknown channel 'fax'"),
    (pb.DecideRequest(customer_id="d2", channel="web", placement="footer"),
     "placement: unknown placement 'footer' of web"),
    (pb.DecideRequest(channel="web"), "customer_id: is required (or an alias)"),
    (pb.DecideRequest(alias=pb.Alias(type="Cookie", value="c"), channel="web"),
     "alias.type: expected a lower-case name"),
    (pb.DecideRequest(alias=pb.Alias(type="cookie"), channel="web"),
     "alias.value: expected a non-empty string"),
    (pb.DecideRequest(customer_id="d2", channel="web", context={"device": pb.Value()}),
     "context.device: the value has no kind set"),
    (pb.DecideRequest(customer_id="d2", channel="web", context={"colour": value_out("red")}),
     "context.colour: unknown context key"),
    (pb.DecideRequest(customer_id="d2", channel="web", max_actions=5000),
     "max_actions: must be at most 1024"),
])
def test_decide_rejects_bad_requests(stubs, request_, field):
    decisions, _ = stubs
    code, details = code_of(decisions.Decide, request_, metadata=key(ADMIN))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field), details


@pytest.mark.parametrize("bad, message", [
    (event("b1", "teleport"), "type: unknown event type 'teleport'"),
    (event("b1", "page_view", category=3), "attributes.category: expected a string"),
    (event("b1", "page_view", category="cars"), "attributes.category: 'cars' is not one of"),
    (event("b1", "page_view", category="home", colour="red"),
     "attributes.colour: unknown field of page_view"),
    (event("b1", "purchase", order_id="o", amount=1.0, category="home"),
     "attributes.fulfilment: required field of purchase is missing"),
    (event("b1", "app_open", channel="fax"), "channel: unknown channel 'fax'"),
    (pb.Event(customer_id="b1", type="app_open", time={"seconds": 1, "nanos": -5}),
     "time: nanos must be in 0..999999999"),
    (event("b1", "app_open", when=-1e9), "time: timestamp"),  # before 1970
    (event("b1", "app_open", when=5e9), "time: "),  # 2128: ahead of the gateway's clock
])
def test_bad_events_are_rejected_and_touch_nothing(stubs, bad, message):
    decisions, _ = stubs
    code, details = code_of(decisions.Ingest, bad, metadata=key(ADMIN))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(message), details
    code, _ = code_of(decisions.GetProfile, pb.ProfileRequest(customer_id="b1"),
                      metadata=key(ADMIN))
    assert code == grpc.StatusCode.NOT_FOUND


def test_oversized_messages_are_refused(stubs):
    decisions, _ = stubs
    code, _ = code_of(decisions.Ingest, event("big", "search", query="x" * (2 << 20),
                                              results=1), metadata=key(ADMIN))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_retried_event_is_applied_once(stubs):
    decisions, _ = stubs
    e = event("idem", "app_open")
    e.idempotency_key = "idem-1"
    first = decisions.Ingest(e, timeout=10, metadata=key(WEB))
    again = decisions.Ingest(e, timeout=10, metadata=key(WEB))
    assert (first.sequence, first.duplicate) == (1, False)
    assert (again.sequence, again.duplicate) == (1, True)
    profile = decisions.GetProfile(pb.ProfileRequest(customer_id="idem"), timeout=10,
                                   metadata=key(AGENT))
    assert profile.events_applied == 1


def test_ingest_can_return_the_new_decision(stubs):
    decisions, _ = stubs
    e = event("withd", "page_view", category="home")
    e.decide_placement = "hero"
    ack = decisions.Ingest(e, timeout=10, metadata=key(WEB))
    assert ack.decision.channel == "web" and ack.decision.placement == "hero"


def test_ingest_stream_acks_every_event_in_order(stubs):
    decisions, _ = stubs
    events = [event("streamer", "page_view", NOW + i, category="home") for i in range(200)]
    acks = list(decisions.IngestStream(iter(events), timeout=30, metadata=key(WEB)))
    assert [a.sequence for a in acks] == list(range(1, 201))


def test_ingest_stream_acks_each_event_before_the_next_arrives(stubs):
    decisions, _ = stubs
    outbox: queue.Queue = queue.Queue()
    acks = decisions.IngestStream(iter(outbox.get, None), timeout=30, metadata=key(WEB))
    for i in range(3):  # a quiet channel: each ack must come back without a next event
        outbox.put(event("trickle", "page_view", NOW + i, category="home"))
        assert next(acks).sequence == i + 1
    outbox.put(None)
    assert list(acks) == []


def test_ingest_stream_stops_at_a_bad_event_naming_it(stubs):
    decisions, _ = stubs
    events = [event("streamer2", "app_open"), event("streamer2", "teleport")]
    code, details = code_of(lambda *a, **k: list(decisions.IngestStream(*a, **k)), iter(events),
                            metadata=key(WEB))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("events[1].type: unknown event type"), details


def test_ingest_batch_acks_every_event_in_order_with_its_decision(stubs):
    decisions, _ = stubs
    events = [event(f"batched{i % 7}", "page_view", NOW + i, category="home")
              for i in range(300)]
    events[5].decide_placement = "hero"
    events[6].ClearField("customer_id")
    events[6].alias.CopyFrom(pb.Alias(type="cookie", value="batch-cookie"))
    events[7].idempotency_key = events[8].idempotency_key = "once"
    events[7].customer_id = events[8].customer_id = "batched0"
    reply = decisions.IngestBatch(pb.EventBatch(events=events), timeout=30, metadata=key(WEB))
    assert len(reply.acks) == 300
    counts: dict[str, int] = {}
    for e, ack in zip(events, reply.acks):
        if e.WhichOneof("customer") == "customer_id" and e is not events[8]:
            counts[e.customer_id] = counts.get(e.customer_id, 0) + 1
            assert ack.sequence == counts[e.customer_id] and not ack.duplicate
    assert reply.acks[8].duplicate and reply.acks[8].sequence == reply.acks[7].sequence
    assert reply.acks[5].decision.placement == "hero" and reply.acks[5].decision.actions
    assert reply.acks[6].sequence == 1  # the alias's anonymous customer


def test_ingest_batch_checks_every_event_before_applying_any(stubs):
    decisions, _ = stubs
    events = [event("checked", "page_view", category="home"), event("checked", "page_view")]
    events[1].time.nanos = -1
    code, details = code_of(decisions.IngestBatch, pb.EventBatch(events=events),
                            metadata=key(WEB))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("events[1].time: nanos must be in 0..999999999"), details
    ack = decisions.Ingest(events[0], timeout=10, metadata=key(WEB))
    assert ack.sequence == 1  # the batch applied nothing
    code, details = code_of(decisions.IngestBatch, pb.EventBatch(
        events=[event("checked", "page_view", category="home"), event("checked", "teleport")]),
        metadata=key(WEB))
    assert details.startswith("events[1].type: unknown event type"), details


def test_respond_records_the_outcome(stubs):
    decisions, _ = stubs
    d = decisions.Decide(pb.DecideRequest(customer_id="r1", channel="web"), timeout=10,
                         metadata=key(WEB))
    decisions.Respond(pb.Outcome(decision_id=d.decision_id, customer_id="r1",
                                 action_id=d.actions[0].action_id, channel="web",
                                 outcome=pb.ACCEPT), timeout=10, metadata=key(WEB))
    profile = decisions.GetProfile(pb.ProfileRequest(customer_id="r1"), timeout=10,
                                   metadata=key(AGENT))
    assert [(h.action_id, h.outcome) for h in profile.history] == \
        [(d.actions[0].action_id, "accept")]
    code, details = code_of(decisions.Respond, pb.Outcome(
        customer_id="r1", action_id="no_such_action", channel="web", outcome=pb.ACCEPT),
        metadata=key(WEB))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("action_id")
    code, details = code_of(decisions.Respond, pb.Outcome(
        customer_id="r1", action_id=d.actions[0].action_id, channel="web"), metadata=key(WEB))
    assert details.startswith("outcome: must be set")


def test_the_decision_log_exports_what_the_shards_decided(stubs):
    """Through Ray: the shards' log writers, their read_log, the gateway's join."""
    decisions, admin = stubs
    d = decisions.Decide(pb.DecideRequest(customer_id="logged", channel="web"), timeout=10,
                         metadata=key(WEB))
    decisions.Respond(pb.Outcome(decision_id=d.decision_id, customer_id="logged",
                                 action_id=d.actions[0].action_id, channel="web",
                                 outcome=pb.ACCEPT), timeout=10, metadata=key(WEB))

    def exported() -> list:
        chunks = admin.ExportDecisionLog(admin_pb2.ExportDecisionLogRequest(
            since=time_out(NOW - 60), until=time_out(time.time() + 60)), timeout=30,
            metadata=key(ADMIN))
        return [r for c in chunks for line in c.records.splitlines()
                if (r := from_json(json.loads(line))).decision_id == d.decision_id and
                r.outcomes]
    [record] = wait_until(exported, 30, "the decision and its outcome in the exported log")
    assert [(s.action_id, s.selection) for s in record.shown] == \
        [(a.action_id, a.selection_probability) for a in d.actions]
    assert [o.outcome for o in record.outcomes] == ["accept"]


def test_record_impression_on_decide(stubs):
    decisions, _ = stubs
    d = decisions.Decide(pb.DecideRequest(customer_id="imp", channel="web",
                                          record_impression=True), timeout=10,
                         metadata=key(WEB))
    profile = decisions.GetProfile(pb.ProfileRequest(customer_id="imp"), timeout=10,
                                   metadata=key(AGENT))
    assert {h.action_id for h in profile.history} == {a.action_id for a in d.actions}
    assert {h.outcome for h in profile.history} == {"impression"}


def test_keys_and_scopes(stubs):
    decisions, admin = stubs
    code, _ = code_of(decisions.Decide, pb.DecideRequest(customer_id="k", channel="web"))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(decisions.Decide, pb.DecideRequest(customer_id="k", channel="web"),
                      metadata=key("not-a-key-at-all-000"))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, details = code_of(decisions.GetProfile, pb.ProfileRequest(customer_id="k"),
                            metadata=key(WEB))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "profile:read" in details
    code, _ = code_of(admin.PutCatalog, admin_pb2.CatalogText(yaml=default_catalog_text()),
                      metadata=key(WEB))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, details = code_of(decisions.Decide, pb.DecideRequest(customer_id="k", channel="app"),
                            metadata=key(WEB))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "for channel 'web'" in details


def test_browsing_on_the_web_changes_what_the_call_center_sees(stubs):
    decisions, _ = stubs
    customer = "seeds-ana"
    decisions.Ingest(event(customer, "profile_updated", NOW - 86400 * 90,
                           marketing_opt_in=True), timeout=10, metadata=key(ADMIN))
    pushed: queue.Queue = queue.Queue()
    stream = decisions.WatchDecisions(pb.WatchRequest(customer_id=customer,
                                                      channel="call_center"),
                                      metadata=key(AGENT))
    stream.initial_metadata()  # the watch is in place
    threading.Thread(target=follow, args=(stream, pushed), daemon=True).start()
    before = decisions.Decide(pb.DecideRequest(customer_id=customer, channel="call_center"),
                              timeout=10, metadata=key(AGENT))
    # the web reports a complaint: the agent's screen must change without anyone asking
    decisions.Ingest(event(customer, "complaint", NOW, topic="delivery", severity="high"),
                     timeout=10, metadata=key(ADMIN))
    deadline = time.time() + 5
    got = []
    while time.time() < deadline and not any(
            "complaint_callback" in [a.action_id for a in d.actions] for d in got):
        try:
            got.append(pushed.get(timeout=0.1))
        except queue.Empty:
            pass
    stream.cancel()
    assert all(d.channel == "call_center" and d.customer_id == customer for d in got)
    assert "complaint_callback" in [a.action_id for a in got[-1].actions]
    assert "complaint_callback" not in [a.action_id for a in before.actions]


def follow(stream, pushed: queue.Queue) -> None:
    try:
        for decision in stream:
            pushed.put(decision)
    except grpc.RpcError:
        pass  # cancelled when the test is done with it


def test_get_profile_shows_the_golden_record(stubs):
    decisions, _ = stubs
    decisions.Ingest(event("prof", "purchase", NOW - 3600, order_id="o9", amount=80.0,
                           category="home", fulfilment="pickup"), timeout=10,
                     metadata=key(ADMIN))
    p = decisions.GetProfile(pb.ProfileRequest(customer_id="prof"), timeout=10,
                             metadata=key(AGENT))
    assert p.features["orders"].number_value == 1.0
    assert p.features["last_purchase_category"].string_value == "home"
    assert set(p.current) == {"web", "app", "call_center", "email", "push", "store"}
    assert p.events_applied == 1
    code, _ = code_of(decisions.GetProfile, pb.ProfileRequest(customer_id="nobody"),
                      metadata=key(AGENT))
    assert code == grpc.StatusCode.NOT_FOUND


def test_forget_customer(stubs):
    decisions, _ = stubs
    decisions.Ingest(event("gone", "app_open"), timeout=10, metadata=key(ADMIN))
    code, _ = code_of(decisions.ForgetCustomer, pb.ForgetRequest(customer_id="gone"),
                      metadata=key(WEB))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    ack = decisions.ForgetCustomer(pb.ForgetRequest(customer_id="gone"), timeout=10,
                                   metadata=key(ADMIN))
    assert ack.existed
    code, _ = code_of(decisions.GetProfile, pb.ProfileRequest(customer_id="gone"),
                      metadata=key(ADMIN))
    assert code == grpc.StatusCode.NOT_FOUND


def test_an_anonymous_visitor_links_and_merges_across_shards(stubs):
    decisions, _ = stubs
    client = runtime.connect()
    try:  # a cookie whose anonymous profile lives on another shard than the customer's
        value = next(v for v in (f"cookie-{i}" for i in range(1000))
                     if client.owner(f"~cookie:{v}") != client.owner("lena"))
    finally:
        client.close()
    cookie = pb.Alias(type="cookie", value=value)
    for i in range(3):
        e = event("", "page_view", NOW - 60 + i, category="electronics")
        e.alias.CopyFrom(cookie)
        assert decisions.Ingest(e, timeout=10, metadata=key(WEB)).sequence == i + 1
    anonymous = decisions.GetProfile(pb.ProfileRequest(alias=cookie), timeout=10,
                                     metadata=key(AGENT))
    assert anonymous.customer_id == f"~cookie:{value}" and anonymous.events_applied == 3
    decisions.Ingest(event("lena", "app_open"), timeout=10, metadata=key(WEB))

    link = pb.LinkRequest(alias=cookie, customer_id="lena")
    assert code_of(decisions.LinkIdentity, link, metadata=key(WEB))[0] == \
        grpc.StatusCode.PERMISSION_DENIED  # a channel-bound key may not link
    assert decisions.LinkIdentity(link, timeout=10, metadata=key(ADMIN)).merged
    assert not decisions.LinkIdentity(link, timeout=10, metadata=key(ADMIN)).merged  # retry
    lena = decisions.GetProfile(pb.ProfileRequest(alias=cookie), timeout=10,
                                metadata=key(AGENT))
    assert lena.customer_id == "lena" and lena.events_applied == 4
    assert lena.features["views_7d"].number_value > 2.9
    by_alias = pb.DecideRequest(alias=cookie, channel="web")
    assert decisions.Decide(by_alias, timeout=10, metadata=key(AGENT)).customer_id == "lena"
    # a key without profile:read is told the alias as named, not whose it is
    assert decisions.Decide(by_alias, timeout=10, metadata=key(WEB)).customer_id == \
        f"~cookie:{value}"

    other = pb.LinkRequest(alias=cookie, customer_id="mia")
    assert code_of(decisions.LinkIdentity, other, metadata=key(ADMIN))[0] == \
        grpc.StatusCode.FAILED_PRECONDITION
    code, details = code_of(decisions.LinkIdentity, pb.LinkRequest(
        alias=cookie, customer_id="~cookie:x"), metadata=key(ADMIN))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("customer_id: ")
    assert code_of(decisions.LinkIdentity, link, metadata=key(AGENT))[0] == \
        grpc.StatusCode.PERMISSION_DENIED

    # forgetting by alias erases the customer and frees the alias
    assert decisions.ForgetCustomer(pb.ForgetRequest(alias=cookie), timeout=10,
                                    metadata=key(ADMIN)).existed
    assert code_of(decisions.GetProfile, pb.ProfileRequest(customer_id="lena"),
                   metadata=key(ADMIN))[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(decisions.GetProfile, pb.ProfileRequest(alias=cookie),
                   metadata=key(ADMIN))[0] == grpc.StatusCode.NOT_FOUND


def test_admin_catalogs_status_and_scaling(stubs):
    decisions, admin = stubs
    info = admin.ValidateCatalog(admin_pb2.CatalogText(yaml=default_catalog_text()),
                                 timeout=10, metadata=key(ADMIN))
    assert info.actions >= 40 and info.channels == 6
    code, details = code_of(admin.ValidateCatalog, admin_pb2.CatalogText(
        yaml=default_catalog_text().replace("kairos_catalog: 1", "kairos_catalog: 9")),
        metadata=key(ADMIN))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("<ValidateCatalog>:") and "unsupported catalog format" in details
    current = admin.GetCatalog(admin_pb2.GetCatalogRequest(), timeout=10, metadata=key(ADMIN))
    assert current.version == info.version
    switched = admin.PutCatalog(admin_pb2.CatalogText(
        yaml=current.yaml.replace(f"version: \"{info.version}\"", "version: grpc-test", 1)),
        timeout=60, metadata=key(ADMIN))
    assert switched.version == "grpc-test"
    wait_until(lambda: decisions.Decide(pb.DecideRequest(customer_id="cat", channel="web"),
                                        timeout=10, metadata=key(ADMIN)
                                        ).catalog_version == "grpc-test",
               10, "decisions made with the switched catalog")
    rolled = admin.RollbackCatalog(admin_pb2.GetCatalogRequest(), timeout=60,
                                   metadata=key(ADMIN))
    assert rolled.version == info.version
    scaled = admin.ScaleShards(admin_pb2.ScaleRequest(shards=3), timeout=120,
                               metadata=key(ADMIN))
    assert scaled.shards == 3 and scaled.moved > 0
    st = admin.GetClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=10,
                                metadata=key(ADMIN))
    assert len(st.shards) == 3 and sum(s.partitions for s in st.shards) == 256
    assert st.catalog_version == info.version and len(st.nodes) == 1
    code, _ = code_of(admin.ScaleShards, admin_pb2.ScaleRequest(shards=0), metadata=key(ADMIN))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_health_and_reflection(target):
    with grpc.insecure_channel(target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="kairos.v1.DecisionService"), timeout=10)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"kairos.v1.DecisionService", "grpc.health.v1.Health"} <= names
    assert "kairos.v1.AdminService" not in names  # operators read admin.proto (README)


class SlowBackend(LocalBackend):
    """Shards that take a second to answer."""

    async def send(self, *args, **kwargs):
        await asyncio.sleep(1.0)
        return await super().send(*args, **kwargs)


def test_a_slow_shard_gives_the_fallback_decision_within_the_deadline(roomy_answer_margin):
    async def main():
        backend = SlowBackend()
        await backend.start_runtime(1, n_partitions=16)
        client = await KairosClient(backend).connect()
        gateway = Gateway("g", client, backend)
        await gateway.refresh_catalog()
        server, _, port = await serve(gateway, Auth({}), "127.0.0.1", 0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = decision_pb2_grpc.DecisionServiceStub(channel)
            # answered, not DEADLINE_EXCEEDED: the fallback came within the caller's deadline
            d = await stub.Decide(pb.DecideRequest(customer_id="slow", channel="web"),
                                  timeout=0.5)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Ingest(pb.Event(customer_id="slow", type="app_open"), timeout=0.5)
        await server.stop(0)
        await gateway.close()
        return d, err.value.code(), gateway.fallbacks

    d, code, fallbacks = asyncio.run(main())
    assert d.fallback and [a.action_id for a in d.actions] == ["generic_welcome"]  # hero
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert fallbacks == {"deadline": 1}  # what kairos_fallbacks_total{reason} reports


def test_auth_may_be_off_only_on_loopback():
    async def main():
        with pytest.raises(ValueError, match="refusing to serve without API keys"):
            await serve(Gateway("g", None, None), Auth({}), "0.0.0.0", 0)
    asyncio.run(main())


def test_a_killed_gateway_serves_again_on_the_same_port(target):
    """Ray restarts the gateway's process (max_restarts=-1); nobody calls start() again, and it
    serves on the port it had, with the keys it read from its file."""
    gateway = ray.get_actor(runtime.gateway_name(0), namespace=NAMESPACE)
    pid = ray.get(gateway.pid.remote())
    os.kill(pid, signal.SIGKILL)
    channel = grpc.insecure_channel(target)
    decide = decision_pb2_grpc.DecisionServiceStub(channel).Decide
    try:
        d = wait_until(lambda: decide(pb.DecideRequest(customer_id="after-restart",
                                                       channel="web"),
                                      timeout=5, metadata=key(ADMIN)),
                       90, f"the restarted gateway serving on {target}", poll_s=0.5)
        assert d.channel == "web"
        assert ray.get(gateway.pid.remote()) != pid
        assert code_of(decide, pb.DecideRequest(customer_id="x", channel="web"))[0] == \
            grpc.StatusCode.UNAUTHENTICATED  # still with its keys
    finally:
        channel.close()
