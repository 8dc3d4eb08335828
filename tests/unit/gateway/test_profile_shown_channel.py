"""GetProfile's decisions are previews but for the one its caller shows: the request's
`shown_channel`, or a bound key's own channel. That one is logged, so the outcomes an agent
answers it with join a decision (replay and `kairos uplift` measure the agent's channel,
control share included); the others stay unlogged. Only for a key that may add to the log
(decide or respond, as the console's agents have): a profile:read key's shown_channel is
refused, and a bound one's reads log nothing. Over real gRPC on the in-process backend."""
from __future__ import annotations

import time

import grpc
import pytest

from kairos.cluster.gateway import wire
from kairos.v1 import admin_pb2_grpc
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import serving
from tests.unit.gateway.test_profile_previews import logged_channels

DEADLINE_S = 10
AGENT, DESK = "agent-key-0123456789abcdef", "desk-key-0123456789abcdef"
READER, BOUND_READER = "reader-key-0123456789abcdef", "bound-reader-key-0123456789abcdef"
KEYS = (f"keys:\n  - {{key: '{AGENT}', name: agent, scopes: [profile:read, respond, ingest, "
        f"admin]}}\n"
        f"  - {{key: '{DESK}', name: desk, scopes: [profile:read, respond], "
        f"channel: call_center}}\n"
        f"  - {{key: '{READER}', name: reader, scopes: [profile:read]}}\n"
        f"  - {{key: '{BOUND_READER}', name: bound-reader, scopes: [profile:read], "
        f"channel: call_center}}\n")


def ingest(stub) -> None:
    event = pb.Event(customer_id="kei", type="complaint", channel="web",
                     time=wire.time_out(time.time()))
    event.attributes["topic"].CopyFrom(wire.value_out("delivery"))
    event.attributes["severity"].CopyFrom(wire.value_out("high"))
    stub.Ingest(event, timeout=DEADLINE_S, metadata=[("x-api-key", AGENT)])


@pytest.fixture(scope="module")
def served():
    with serving(KEYS) as (_, channel):
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        ingest(stub)
        yield stub, admin_pb2_grpc.AdminServiceStub(channel)


def profile(stub, key: str, **fields) -> pb.Profile:
    return stub.GetProfile(pb.ProfileRequest(customer_id="kei", **fields), timeout=DEADLINE_S,
                           metadata=[("x-api-key", key)])


def exported(admin, since: float) -> list[str]:
    return logged_channels(_Keyed(admin), since)


class _Keyed:
    """The admin stub, its export made with the agent's key."""

    def __init__(self, admin):
        self.admin = admin

    def ExportDecisionLog(self, request, timeout):
        return self.admin.ExportDecisionLog(request, timeout=timeout,
                                            metadata=[("x-api-key", AGENT)])


def test_the_shown_channels_decision_alone_is_logged(served):
    stub, admin = served
    since = time.time() - 5
    shown = profile(stub, AGENT, shown_channel="call_center")
    assert len(shown.current) > 1
    assert exported(admin, since) == ["call_center"]
    profile(stub, AGENT)  # a page's read: previews only
    assert exported(admin, since) == ["call_center"]


def test_a_bound_keys_profile_logs_its_own_channels_decision(served):
    stub, admin = served
    since = time.time() - 5
    before = exported(admin, since)
    assert set(profile(stub, DESK).current) == {"call_center"}
    assert exported(admin, since) == sorted(before + ["call_center"])


def test_an_unknown_or_foreign_shown_channel_is_refused(served):
    stub, _ = served
    with pytest.raises(grpc.RpcError) as refused:
        profile(stub, AGENT, shown_channel="fax")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "shown_channel" in refused.value.details()
    with pytest.raises(grpc.RpcError) as denied:
        profile(stub, DESK, shown_channel="web")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_read_only_key_logs_no_decision(served):
    """profile:read alone reads: its shown_channel is refused, and a bound one's own channel's
    decision stays a preview."""
    stub, admin = served
    since = time.time() - 5
    before = exported(admin, since)
    with pytest.raises(grpc.RpcError) as denied:
        profile(stub, READER, shown_channel="call_center")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert denied.value.details() == ("shown_channel logs the decision the caller shows, which "
                                      "needs a key with the 'decide' or 'respond' scope")
    assert len(profile(stub, READER).current) > 1
    assert set(profile(stub, BOUND_READER).current) == {"call_center"}
    assert exported(admin, since) == before
