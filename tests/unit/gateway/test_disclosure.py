"""What the gateway tells keys that may not read profiles (no profile:read), over real gRPC on
the in-process backend: a Decide's `explain` (each dropped action's reason is the customer's:
their consent, the rules their profile failed) is refused to them; a Decide, a watch or an
ingest's decision by alias, or by the alias's anonymous id ("~type:value"), answers them the id
as named, never the id of the customer the alias is linked to (which would make any decide key
an oracle of whose aliases are whose), and a fallback the id as named to every key; a Respond
by an anonymous id reaches the decision it names: the anonymous profile's own, first (while a
link is under way, and once the shard's redirect is gone), else the one a Decide by the alias
answered; a refusal for a full shard queue, on a request by alias, names the shard, not the
customer; and reflection, open without a key, neither lists nor describes AdminService."""
from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import \
    ProtoReflectionDescriptorDatabase

from kairos.cluster import identity, protocol
from kairos.cluster.gateway import requests, wire
from kairos.cluster.shard.watches import Pushed
from kairos.core.decision import RankedAction
from kairos.core.errors import InputError
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import serving
from tests.support.local_backend import DecidesLate, LocalBackend

DEADLINE_S = 10
WEB, READER, OPS = "web-channel-key-0123456789", "web-reader-key-0123456789", \
    "ops-admin-key-0123456789"
KEYS = f"""keys:
  - {{key: {WEB}, name: web, channel: web, scopes: [decide, respond, watch, ingest]}}
  - {{key: {READER}, name: web-reader, channel: web, scopes: [decide, watch, profile:read]}}
  - {{key: {OPS}, name: ops, scopes: [admin, ingest, decide, profile:read]}}
"""
EMAIL = pb.Alias(type="email", value="kei@example.org")
ANON = "~email:kei@example.org"  # its anonymous id: the shard redirects it to kei (linked)


def key(secret: str) -> list[tuple[str, str]]:
    return [("x-api-key", secret)]


@pytest.fixture(scope="module")
def served():
    with serving(KEYS) as (gateway, channel):
        yield gateway, channel, kei_linked(channel)


def kei_linked(channel: grpc.Channel) -> decision_pb2_grpc.DecisionServiceStub:
    """A stub on `channel`, after customer kei opted out and was linked to EMAIL."""
    stub = decision_pb2_grpc.DecisionServiceStub(channel)
    opt_out = pb.Event(customer_id="kei", type="profile_updated", channel="web",
                       attributes={"marketing_opt_in": wire.value_out(False)})
    stub.Ingest(opt_out, timeout=DEADLINE_S, metadata=key(OPS))
    stub.LinkIdentity(pb.LinkRequest(alias=EMAIL, customer_id="kei"), timeout=DEADLINE_S,
                      metadata=key(OPS))
    return stub


def accepted(decision: pb.Decision, **named) -> pb.Outcome:
    """An accept of the decision's first action, on web, naming the customer as `named` does."""
    return pb.Outcome(channel="web", decision_id=decision.decision_id, outcome=pb.ACCEPT,
                      action_id=decision.actions[0].action_id, **named)


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


def test_a_decide_by_the_anonymous_id_names_it_to_a_key_that_may_not_read_profiles(served):
    _, _, stub = served
    by_id = pb.DecideRequest(customer_id=ANON, channel="web")  # answered for kei (redirect)
    assert stub.Decide(by_id, timeout=DEADLINE_S, metadata=key(WEB)).customer_id == ANON
    assert stub.Decide(by_id, timeout=DEADLINE_S, metadata=key(READER)).customer_id == "kei"


@pytest.mark.parametrize("named", [{"alias": EMAIL}, {"customer_id": ANON}])
def test_a_watch_by_alias_names_the_alias_to_a_key_that_may_not_read_profiles(served, named):
    gateway, _, stub = served
    # as the shard pushes kei's decision to a sink that follows kei by the anonymous id too
    pushed = Pushed(decision_id="d", customer_id="kei", channel="web", placement="hero",
                    actions=(RankedAction(action_id="generic_welcome", group="g",
                                          treatment="t", priority=1.0, propensity=0.5,
                                          value=1.0, weight=1.0, lever=1.0),),
                    catalog_version="v", model_version=1, also=(ANON,))
    watches = {secret: stub.WatchDecisions(pb.WatchRequest(channel="web", **named),
                                           timeout=30, metadata=key(secret))
               for secret in (WEB, READER)}
    try:
        for watch in watches.values():
            watch.initial_metadata()
        gateway.loop.call_soon_threadsafe(gateway.gateway.watches.deliver, [pushed])
        assert next(watches[WEB]).customer_id == ANON
        assert next(watches[READER]).customer_id == "kei"
    finally:
        for watch in watches.values():
            watch.cancel()


@pytest.mark.parametrize("named", [{"alias": EMAIL}, {"customer_id": ANON}])
def test_an_ingests_decision_names_the_alias_to_a_key_that_may_not_read_profiles(served,
                                                                                 named):
    _, _, stub = served
    events = [pb.Event(type="app_open", channel="web", decide_placement="hero", **named),
              pb.Event(customer_id="kei", type="app_open", channel="web",
                       decide_placement="hero")]
    for secret, answered in ((WEB, ANON), (OPS, "kei")):
        acks = [stub.Ingest(events[0], timeout=DEADLINE_S, metadata=key(secret)),
                *stub.IngestStream(iter(events), timeout=DEADLINE_S, metadata=key(secret)),
                *stub.IngestBatch(pb.EventBatch(events=events), timeout=DEADLINE_S,
                                  metadata=key(secret)).acks]
        assert [ack.decision.customer_id for ack in acks] == [answered, answered, "kei",
                                                              answered, "kei"]


def test_respond_by_the_answered_anonymous_id_once_the_redirect_is_gone(monkeypatch):
    """The decision was issued to kei; the anonymous id a Decide by alias answered reaches it
    as the alias does, not by the shard's redirect, which 4,096 later links evict."""
    monkeypatch.setattr(identity, "REDIRECTS_PER_PARTITION", 0)
    with serving(KEYS) as (_, channel):
        stub = kei_linked(channel)
        nobody = pb.Alias(type="email", value="nobody@example.org")  # linked to no one
        for alias in (EMAIL, nobody):
            decided = stub.Decide(pb.DecideRequest(alias=alias, channel="web"),
                                  timeout=DEADLINE_S, metadata=key(WEB))
            assert decided.customer_id == f"~email:{alias.value}"
            assert stub.Respond(accepted(decided, customer_id=decided.customer_id),
                                timeout=DEADLINE_S, metadata=key(WEB)).learned_from == \
                pb.LEARNED_FROM_DECISION


def test_respond_by_the_anonymous_id_reaches_its_own_profiles_decision_once_the_redirect_is_gone(
        monkeypatch):
    """With kei's redirect gone, the anonymous id names a fresh anonymous profile again: a
    Decide by it is decided for that profile, and so is the Respond's outcome (not taken as the
    alias, which reached kei: PROFILE_DECISION_FORGOTTEN, and kei's history)."""
    monkeypatch.setattr(identity, "REDIRECTS_PER_PARTITION", 0)
    with serving(KEYS) as (_, channel):
        stub = kei_linked(channel)
        for secret in (WEB, OPS):
            decided = stub.Decide(pb.DecideRequest(customer_id=ANON, channel="web",
                                                   record_impression=True),
                                  timeout=DEADLINE_S, metadata=key(secret))
            assert stub.Respond(accepted(decided, customer_id=ANON), timeout=DEADLINE_S,
                                metadata=key(WEB)).learned_from == pb.LEARNED_FROM_DECISION
        for customer_id, outcomes in ((ANON, ["accept", "impression"] * 2), ("kei", [])):
            profile = stub.GetProfile(pb.ProfileRequest(customer_id=customer_id),
                                      timeout=DEADLINE_S, metadata=key(OPS))
            assert [h.outcome for h in profile.history] == outcomes


def test_respond_by_the_anonymous_id_while_its_alias_is_being_linked():
    """Between the link's step 1 (the directory names kei) and its Take, the visitor's own
    decision is still its anonymous profile's: a Respond by the id is learned there, as it was
    before Responds by it were taken as the alias (whose shard held it back: RESOURCE_EXHAUSTED);
    once linked, its retry follows the redirect to kei, where its key came with the profile."""
    visitor = pb.Alias(type="email", value="x@example.org")
    with serving(KEYS) as (gateway, channel):
        stub = kei_linked(channel)
        decided = stub.Decide(pb.DecideRequest(alias=visitor, channel="web"),
                              timeout=DEADLINE_S, metadata=key(WEB))
        outcome = accepted(decided, customer_id=decided.customer_id, idempotency_key="k1")
        steps = gateway.client.link_steps("email:x@example.org", "kei")
        gateway.run(anext(steps))  # the claim
        gateway.run(anext(steps))  # step 1
        assert stub.Respond(outcome, timeout=DEADLINE_S, metadata=key(WEB)).learned_from == \
            pb.LEARNED_FROM_DECISION
        gateway.run(_exhausted(steps))
        assert stub.Respond(outcome, timeout=DEADLINE_S, metadata=key(WEB)).learned_from == \
            pb.LEARNED_FROM_DUPLICATE


async def _exhausted(steps) -> None:
    async for _ in steps:
        pass


def test_only_a_refusal_for_no_decision_issued_retries_an_anonymous_id_as_its_alias():
    Who = requests.Who
    not_issued = InputError("decision_id", requests.NOT_ISSUED + " 'a' on web")
    assert requests.retried_as_alias(Who(ANON, None), not_issued) == \
        Who(None, "email:kei@example.org")
    assert requests.retried_as_alias(Who("~app:a:b", None), not_issued) == Who(None, "app:a:b")
    for by_id in ("kei", "~", "~email", "~email:", "~Email:x", "~e mail:x"):  # no alias's
        assert requests.retried_as_alias(Who(by_id, None), not_issued) is None
    assert requests.retried_as_alias(Who(None, "email:x"), not_issued) is None
    for refused in (InputError("decision_id", "issued before this customer was forgotten "
                                              "(ForgetCustomer): it takes no outcomes"),
                    InputError("action_id", requests.NOT_ISSUED)):
        assert requests.retried_as_alias(Who(ANON, None), refused) is None


def test_a_fallback_by_alias_names_the_alias_to_every_key(roomy_answer_margin):
    """The fallback was decided for no one: it names the alias as named, to a key with
    profile:read as to one without (it named none to the former, the anonymous id to the
    latter)."""
    backend = DecidesLate()
    with serving(KEYS, backend) as (_, channel):
        stub = kei_linked(channel)
        backend.delay = 1.0
        for secret in (WEB, READER):
            shown = stub.Decide(pb.DecideRequest(alias=EMAIL, channel="web"), timeout=0.5,
                                metadata=key(secret))
            assert shown.fallback and shown.customer_id == ANON


class KeisQueueFull(LocalBackend):
    """Once `full`, kei's shard answers every batch holding a request for kei as ShardHost
    does past its queue limit: Busy() for each request, with no reason, none applied."""

    full = False

    async def send(self, name, session, seq, requests, routed):
        if self.full and any(getattr(r, "customer_id", None) == "kei" for r in requests):
            await super().send(name, session, seq, [], [])  # its turn taken: the session goes on
            return [protocol.Busy()] * len(requests)
        return await super().send(name, session, seq, requests, routed)


def test_a_full_queue_of_the_linked_customers_shard_is_told_by_shard_not_by_customer():
    """Review of efb058c, item 2: a request by alias (or by its anonymous id, redirected) that
    kei's shard refused for its full queue was RESOURCE_EXHAUSTED "the shard of 'kei' is at its
    queue limit", which told a key without profile:read whose the alias is."""
    backend = KeisQueueFull()
    with serving(KEYS, backend) as (gateway, channel):
        stub = kei_linked(channel)
        decided = stub.Decide(pb.DecideRequest(alias=EMAIL, channel="web"),
                              timeout=DEADLINE_S, metadata=key(WEB))
        backend.full = True
        shard = gateway.run(_owner(gateway, "kei"))
        for call, request in (
                (stub.Decide, pb.DecideRequest(alias=EMAIL, channel="web")),
                (stub.Ingest, pb.Event(alias=EMAIL, type="app_open", channel="web")),
                (stub.Respond, accepted(decided, customer_id=ANON))):
            with pytest.raises(grpc.RpcError) as refused:
                call(request, timeout=DEADLINE_S, metadata=key(WEB))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.value.details() == f"{shard} is at its queue limit"


async def _owner(gateway, customer_id: str) -> str:
    return gateway.client.owner(customer_id)


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
