"""What the gateway tells keys that may not read profiles (no profile:read), over real gRPC on
the in-process backend: a Decide's `explain` (each dropped action's reason is the customer's:
their consent, the rules their profile failed) is refused to them; a Decide or watch by alias
answers them the alias as named, never the id of the customer it is linked to (which would make
any decide key an oracle of whose aliases are whose); and reflection, open without a key,
neither lists nor describes AdminService."""
from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import \
    ProtoReflectionDescriptorDatabase

from kairos.cluster.gateway import wire
from kairos.core.decision import Decision, RankedAction
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import serving

DEADLINE_S = 10
WEB, READER, OPS = "web-channel-key-0123456789", "web-reader-key-0123456789", \
    "ops-admin-key-0123456789"
KEYS = f"""keys:
  - {{key: {WEB}, name: web, channel: web, scopes: [decide, respond, watch]}}
  - {{key: {READER}, name: web-reader, channel: web, scopes: [decide, watch, profile:read]}}
  - {{key: {OPS}, name: ops, scopes: [admin, ingest, decide, profile:read]}}
"""
EMAIL = pb.Alias(type="email", value="kei@example.org")


def key(secret: str) -> list[tuple[str, str]]:
    return [("x-api-key", secret)]


@pytest.fixture(scope="module")
def served():
    with serving(KEYS) as (gateway, channel):
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        opt_out = pb.Event(customer_id="kei", type="profile_updated", channel="web",
                           attributes={"marketing_opt_in": wire.value_out(False)})
        stub.Ingest(opt_out, timeout=DEADLINE_S, metadata=key(OPS))
        stub.LinkIdentity(pb.LinkRequest(alias=EMAIL, customer_id="kei"), timeout=DEADLINE_S,
                          metadata=key(OPS))
        yield gateway, channel, stub


def test_explain_is_refused_to_a_key_that_may_not_read_the_profile(served):
    _, _, stub = served
    explained = pb.DecideRequest(customer_id="kei", channel="web", explain=True)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Decide(explained, timeout=DEADLINE_S, metadata=key(WEB))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'profile:read'" in refused.value.details()
    plain = stub.Decide(pb.DecideRequest(customer_id="kei", channel="web"),
                        timeout=DEADLINE_S, metadata=key(WEB))
    assert plain.actions and not plain.HasField("explanation")
    # a key that may read the profile (a channel's, as an agent's) is told all of the why
    why = stub.Decide(explained, timeout=DEADLINE_S, metadata=key(READER)).explanation
    assert {"NO_CONSENT", "APPLICABILITY"} <= {x.reason for x in why.dropped}
    assert [a.action_id for a in why.winners]


def test_a_decide_by_alias_names_the_alias_to_a_key_that_may_not_read_profiles(served):
    _, _, stub = served
    by_alias = pb.DecideRequest(alias=EMAIL, channel="web")
    first = stub.Decide(by_alias, timeout=DEADLINE_S, metadata=key(WEB))
    assert first.customer_id == "~email:kei@example.org"  # as an alias linked to no one's
    unlinked = pb.DecideRequest(alias=pb.Alias(type="email", value="nobody@example.org"),
                                channel="web")
    assert stub.Decide(unlinked, timeout=DEADLINE_S, metadata=key(WEB)).customer_id == \
        "~email:nobody@example.org"
    assert stub.Decide(by_alias, timeout=DEADLINE_S, metadata=key(READER)).customer_id == "kei"
    # its outcomes reach the decision, reported by the alias, or by the id it was answered
    # (the anonymous id follows the link to the customer it was decided for)
    second = stub.Decide(by_alias, timeout=DEADLINE_S, metadata=key(WEB))
    for decision, who in ((first, {"alias": EMAIL}), (second, {"customer_id": second.customer_id})):
        outcome = pb.Outcome(decision_id=decision.decision_id, channel="web",
                             action_id=decision.actions[0].action_id, outcome=pb.ACCEPT, **who)
        assert stub.Respond(outcome, timeout=DEADLINE_S, metadata=key(WEB)).learned_from == \
            pb.LEARNED_FROM_DECISION


def test_a_watch_by_alias_names_the_alias_to_a_key_that_may_not_read_profiles(served):
    gateway, _, stub = served
    pushed = Decision(decision_id="d", customer_id="kei", channel="web", placement="hero",
                      actions=(RankedAction(action_id="generic_welcome", group="g",
                                            treatment="t", priority=1.0, propensity=0.5,
                                            value=1.0, weight=1.0, lever=1.0),),
                      catalog_version="v", model_version=1)
    watches = {secret: stub.WatchDecisions(pb.WatchRequest(alias=EMAIL, channel="web"),
                                           timeout=30, metadata=key(secret))
               for secret in (WEB, READER)}
    try:
        for watch in watches.values():
            watch.initial_metadata()
        gateway.loop.call_soon_threadsafe(gateway.gateway.watches.deliver, [pushed])
        assert next(watches[WEB]).customer_id == "~email:kei@example.org"
        assert next(watches[READER]).customer_id == "kei"
    finally:
        for watch in watches.values():
            watch.cancel()


def test_reflection_describes_the_channels_services_and_not_adminservice(served):
    _, channel, _ = served
    reflected = ProtoReflectionDescriptorDatabase(channel)  # no key: reflection is open
    assert set(reflected.get_services()) == {
        "kairos.v1.DecisionService", "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection"}
    described = DescriptorPool(reflected)  # what grpcurl reads a call's messages from
    decide = described.FindServiceByName("kairos.v1.DecisionService").methods_by_name["Decide"]
    assert decide.input_type.full_name == "kairos.v1.DecideRequest"
    for symbol in ("kairos.v1.AdminService", "kairos.v1.CatalogText"):  # asked for by name
        with pytest.raises(KeyError):
            reflected.FindFileContainingSymbol(symbol)
    with pytest.raises(KeyError):
        reflected.FindFileByName("kairos/v1/admin.proto")
