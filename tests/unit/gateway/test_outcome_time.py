"""An outcome naming a decision may not be dated more than CLOCK_SKEW_S before the decision
was issued: an impression or a reject dated long before (a wrong unit, or on purpose) fell out
of the contact policies' windows (`max_impressions 2 in 3d`), and was taken. The issue time is
the one the decision's id states; the shard proves it (the id's MAC covers it). Over real gRPC
on the in-process backend, auth off."""
from __future__ import annotations

import time

import grpc
import pytest

from kairos.cluster.settings import CLOCK_SKEW_S, OUTCOME_WINDOW_S
from kairos.cluster.shard.outcomes import issued_at
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import serving

DEADLINE_S = 10


@pytest.fixture(scope="module")
def stub():
    with serving() as (_, channel):
        yield decision_pb2_grpc.DecisionServiceStub(channel)


def respond(stub, customer_id: str, kind: int, at: float | None = None) -> pb.OutcomeAck:
    decision = stub.Decide(pb.DecideRequest(customer_id=customer_id, channel="web"),
                           timeout=DEADLINE_S)
    outcome = pb.Outcome(customer_id=customer_id, decision_id=decision.decision_id,
                         action_id=decision.actions[0].action_id, channel="web", outcome=kind)
    if at is not None:
        outcome.time.FromSeconds(int(at))
    return stub.Respond(outcome, timeout=DEADLINE_S)


@pytest.mark.parametrize("kind", [pb.IMPRESSION, pb.ACCEPT, pb.REJECT])
def test_an_outcome_dated_long_before_its_decision_is_refused(stub, kind):
    with pytest.raises(grpc.RpcError) as refused:
        respond(stub, f"early-{kind}", kind, 60)  # 1970-01-01T00:01
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("time: ")
    assert refused.value.details().endswith(" s before the decision it names was issued (at "
                                            f"most KAIROS_CLOCK_SKEW_S, {CLOCK_SKEW_S:g} s)")
    with pytest.raises(grpc.RpcError) as gone:  # nothing was taken
        stub.GetProfile(pb.ProfileRequest(customer_id=f"early-{kind}"), timeout=DEADLINE_S)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_outcome_within_the_clock_skew_of_its_decision_or_undated_is_taken(stub):
    respond(stub, "skewed", pb.IMPRESSION, time.time() - CLOCK_SKEW_S + 5)
    respond(stub, "undated", pb.IMPRESSION)
    history = stub.GetProfile(pb.ProfileRequest(customer_id="skewed"), timeout=DEADLINE_S
                              ).history
    assert [h.outcome for h in history] == ["impression"]


def test_the_issue_time_is_read_from_a_sealed_id_only():
    assert issued_at("d-1.6553f100.AAAAAAAABBBBBBBB") == 0x6553f100
    for not_sealed in ("", "d-1", "d-1.zz.AAAAAAAA"):
        assert issued_at(not_sealed) is None


def test_an_issue_time_is_at_most_sixteen_lowercase_hex_digits():
    assert issued_at("d-1.ffffffffffffffff.AAAAAAAA") == 2 ** 64 - 1
    for not_sealed in ("d-1." + "f" * 17 + ".AAAAAAAA", "d-1.0x10.AAAAAAAA",
                       "d-1.1_0.AAAAAAAA", "d-1.-10.AAAAAAAA", "d-1. 10.AAAAAAAA",
                       "d-1.FF.AAAAAAAA"):
        assert issued_at(not_sealed) is None


def test_an_id_with_a_huge_issue_time_is_refused_as_not_issued(stub):
    """Its issue time once overflowed a float in the check of a stated time: UNKNOWN."""
    decision = stub.Decide(pb.DecideRequest(customer_id="huge", channel="web"),
                           timeout=DEADLINE_S)
    engine_id, _, sealed = decision.decision_id.rsplit(".", 2)
    outcome = pb.Outcome(customer_id="huge", decision_id=f"{engine_id}.{'f' * 300}.{sealed}",
                         action_id=decision.actions[0].action_id, channel="web",
                         outcome=pb.IMPRESSION)
    outcome.time.FromSeconds(60)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Respond(outcome, timeout=DEADLINE_S)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "decision_id: not a decision id Kairos issued"


def offline(stub, customer_id: str, at: float) -> pb.OutcomeAck:
    action_id = stub.Decide(pb.DecideRequest(customer_id="any", channel="web"),
                            timeout=DEADLINE_S).actions[0].action_id
    outcome = pb.Outcome(customer_id=customer_id, action_id=action_id, channel="web",
                         outcome=pb.IMPRESSION, offline=True)
    outcome.time.FromSeconds(int(at))
    return stub.Respond(outcome, timeout=DEADLINE_S)


def test_an_offline_outcome_older_than_the_outcome_window_is_refused(stub):
    """Dated 1970 it sat outside every contact policy's window, and was taken."""
    for at in (60, time.time() - OUTCOME_WINDOW_S - 60):
        with pytest.raises(grpc.RpcError) as refused:
            offline(stub, "offline-old", at)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith("time: ")
        assert refused.value.details().endswith(
            f" s ago (an offline outcome's at most KAIROS_OUTCOME_WINDOW_S, "
            f"{OUTCOME_WINDOW_S:g} s)")
    offline(stub, "offline-recent", time.time() - OUTCOME_WINDOW_S + 60)
    history = stub.GetProfile(pb.ProfileRequest(customer_id="offline-recent"),
                              timeout=DEADLINE_S).history
    assert [h.outcome for h in history] == ["impression"]
