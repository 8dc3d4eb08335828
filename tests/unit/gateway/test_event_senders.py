"""Who may send an event type (issue 18), over real gRPC on 127.0.0.1 and the in-process backend:
a key bound to a channel labels its events with it, and the catalog says which channels may
send a type (`events.<type>.channels`) and that no caller sends the events its timers fire.
Each refusal on Ingest, IngestStream and IngestBatch alike, with nothing applied."""
from __future__ import annotations

from typing import Callable

import grpc
import pytest

from kairos.core.catalog import default_catalog_text
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import serving

KEYS = """keys:
  - {key: 'web-ingest-decide-0123456789', name: web, channel: web, scopes: [ingest, decide]}
  - {key: 'app-ingest-key-0123456789abc', name: app, channel: app, scopes: [ingest]}
  - {key: 'email-ingest-key-0123456789ab', name: email, channel: email, scopes: [ingest]}
  - {key: 'agent-ingest-key-0123456789ab', name: agent, channel: call_center, scopes: [ingest]}
  - {key: 'crm-unbound-ingest-profile01', name: crm, scopes: [ingest, profile:read]}
"""
WEB, APP, EMAIL, AGENT, CRM = ((("x-api-key", key),) for key in (
    "web-ingest-decide-0123456789", "app-ingest-key-0123456789abc",
    "email-ingest-key-0123456789ab", "agent-ingest-key-0123456789ab",
    "crm-unbound-ingest-profile01"))
CHANNELS = "the catalog's events.profile_updated.channels: [web, call_center]"
FIRED = ("cart_abandoned is fired by the catalog's timer 'cart_abandoned', never sent by a "
         "caller (unless the catalog says events.cart_abandoned.also_sent: true)")


@pytest.fixture(scope="module")
def stub():
    with serving(KEYS) as (_, channel):
        yield DecisionServiceStub(channel)


def profile_updated(customer: str, channel: str, **values) -> pb.Event:
    return pb.Event(customer_id=customer, type="profile_updated", channel=channel,
                    attributes={k: pb.Value(bool_value=v) if isinstance(v, bool) else
                                pb.Value(string_value=v) for k, v in values.items()})


def cart_abandoned(customer: str, channel: str) -> pb.Event:
    return pb.Event(customer_id=customer, type="cart_abandoned", channel=channel)


# each ingest RPC, sending one event: its status code and details (OK, "" once acked)
RPCS: dict[str, Callable] = {
    "Ingest": lambda stub, event, key: stub.Ingest(event, metadata=key, timeout=10),
    "IngestStream": lambda stub, event, key: list(stub.IngestStream(iter([event]),
                                                                   metadata=key, timeout=10)),
    "IngestBatch": lambda stub, event, key: stub.IngestBatch(pb.EventBatch(events=[event]),
                                                             metadata=key, timeout=10),
}


def sent(stub, rpc: str, event: pb.Event, key) -> tuple[grpc.StatusCode, str]:
    try:
        RPCS[rpc](stub, event, key)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def consented(stub, customer: str) -> pb.Profile:
    """`customer`, whom the CRM gave e-mail and marketing consent and the gold tier."""
    stub.Ingest(profile_updated(customer, "", email_opt_in=True, marketing_opt_in=True,
                                tier="gold"), metadata=CRM, timeout=10)
    return stub.GetProfile(pb.ProfileRequest(customer_id=customer), metadata=CRM, timeout=10)


def unchanged(stub, customer: str, before: pb.Profile) -> bool:
    after = stub.GetProfile(pb.ProfileRequest(customer_id=customer), metadata=CRM, timeout=10)
    return (after.attributes == before.attributes and after.features == before.features
            and after.consent == before.consent)


def test_a_channel_key_changes_neither_consent_it_may_not_send_nor_fires_timer_events(stub):
    """The review's repro (H2): the key of a channel the catalog does not let send
    profile_updated rewrote every channel's consent, and any key applied the event only the
    cart_abandoned timer fires (counted in carts_abandoned_30d, which offers cart recovery)."""
    before = consented(stub, "victim")
    refused = [sent(stub, "Ingest", event, key)[0] for event, key in (
        (profile_updated("victim", "email", email_opt_in=False, marketing_opt_in=False,
                         tier="none"), EMAIL),
        (cart_abandoned("victim", "web"), WEB))]
    assert refused == [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT]
    assert unchanged(stub, "victim", before)
    assert before.attributes["email_opt_in"].bool_value and before.consent["marketing"]
    assert before.features["carts_abandoned_30d"].number_value == 0


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize("case, event, key, code, details", [
    ("bound", profile_updated("m-{rpc}-bound", "app", email_opt_in=False), APP,
     grpc.StatusCode.PERMISSION_DENIED,
     f"{{of}}key 'app' is for channel 'app', which may not send profile_updated events "
     f"({CHANNELS})"),
    ("unbound", profile_updated("m-{rpc}-unbound", "email", tier="none"), CRM,
     grpc.StatusCode.INVALID_ARGUMENT,
     f"{{at}}channel: profile_updated events are not sent on channel 'email' ({CHANNELS})"),
    ("timer-bound", cart_abandoned("m-{rpc}-timer-bound", "web"), WEB,
     grpc.StatusCode.INVALID_ARGUMENT, f"{{at}}type: {FIRED}"),
    ("timer-unbound", cart_abandoned("m-{rpc}-timer-unbound", ""), CRM,
     grpc.StatusCode.INVALID_ARGUMENT, f"{{at}}type: {FIRED}"),
])
def test_each_ingest_rpc_refuses_what_the_caller_may_not_send(stub, rpc, case, event, key,
                                                               code, details):
    customer = event.customer_id.format(rpc=rpc)
    before = consented(stub, customer)
    refused = pb.Event()
    refused.CopyFrom(event)
    refused.customer_id = customer
    at = "" if rpc == "Ingest" else "events[0]."  # a stream's or a batch's event is named
    of = "" if rpc == "Ingest" else "events[0]: "  # and the one its key may not send
    assert sent(stub, rpc, refused, key) == (code, details.format(at=at, of=of))
    assert unchanged(stub, customer, before)


@pytest.mark.parametrize("rpc", RPCS)
def test_the_channels_a_type_names_and_the_crm_still_send_it(stub, rpc):
    customer = f"ok-{rpc}"
    consented(stub, customer)
    for n, (channel, key) in enumerate((("web", WEB), ("call_center", AGENT), ("", CRM))):
        assert sent(stub, rpc, profile_updated(customer, channel, email_opt_in=bool(n % 2)),
                    key) == (grpc.StatusCode.OK, "")
    after = stub.GetProfile(pb.ProfileRequest(customer_id=customer), metadata=CRM, timeout=10)
    assert not after.attributes["email_opt_in"].bool_value  # the CRM's, the last
    # every other type, as before: any channel
    assert sent(stub, rpc, pb.Event(customer_id=customer, type="app_open", channel="app"),
                APP) == (grpc.StatusCode.OK, "")


def test_a_catalog_that_keeps_consent_to_the_contact_centre_refuses_the_web_key_too():
    """The review's repro with the web key: the default catalog lets the web's preference
    centre send profile_updated; one that says only the contact centre may refuses it."""
    text = default_catalog_text().replace("version: ", "version: agents-only-", 1).replace(
        "channels: [web, call_center]", "channels: [call_center]", 1)
    with serving(KEYS) as (gateway, channel):
        gateway.run(gateway.client.backend.controller().put_catalog(text))
        gateway.run(gateway.gateway.refresh_catalog())
        stub = DecisionServiceStub(channel)
        before = consented(stub, "victim")
        code, details = sent(stub, "Ingest", profile_updated(
            "victim", "web", email_opt_in=False, marketing_opt_in=False), WEB)
        assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, (
            "key 'web' is for channel 'web', which may not send profile_updated events (the "
            "catalog's events.profile_updated.channels: [call_center])"))
        assert unchanged(stub, "victim", before)
