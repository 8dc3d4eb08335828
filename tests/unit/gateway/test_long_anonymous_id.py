"""The anonymous id ("~type:value") a Decide by alias answers a key without profile:read can be
sent back, however long its alias (gateway review, item A): an alias's type takes 32
characters and its value 256, so its id takes up to 290, past the 256 a customer id may; a
Respond, a watch, a GetProfile and a ForgetCustomer by it were refused INVALID_ARGUMENT. Ids
not of an alias's form are still held to 256. Over real gRPC on the in-process backend."""
from __future__ import annotations

import grpc
import pytest

from kairos.cluster.identity import MAX_ALIAS_TYPE, MAX_ALIAS_VALUE, MAX_ANONYMOUS_ID
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import serving
from tests.unit.gateway.test_disclosure import DEADLINE_S, KEYS, OPS, WEB, accepted, key

LONGEST = pb.Alias(type="d" * MAX_ALIAS_TYPE, value="v" * MAX_ALIAS_VALUE)


@pytest.fixture(scope="module")
def stub():
    with serving(KEYS) as (_, channel):
        yield decision_pb2_grpc.DecisionServiceStub(channel)


def test_the_id_a_decide_by_the_longest_alias_answers_can_be_sent_back(stub):
    stub.Ingest(pb.Event(alias=LONGEST, type="app_open", channel="web"), timeout=DEADLINE_S,
                metadata=key(WEB))
    decision = stub.Decide(pb.DecideRequest(alias=LONGEST, channel="web"), timeout=DEADLINE_S,
                           metadata=key(WEB))
    anonymous = decision.customer_id
    assert len(anonymous) == MAX_ANONYMOUS_ID == 290 and anonymous.startswith("~ddd")
    assert stub.Respond(accepted(decision, customer_id=anonymous), timeout=DEADLINE_S,
                        metadata=key(WEB)).learned_from == pb.LEARNED_FROM_DECISION
    watch = stub.WatchDecisions(pb.WatchRequest(customer_id=anonymous, channel="web"),
                                timeout=DEADLINE_S, metadata=key(WEB))
    watch.initial_metadata()  # sent once the watch is registered; a refusal ends it first
    watch.cancel()
    assert watch.code() == grpc.StatusCode.CANCELLED, watch.details()
    profile = stub.GetProfile(pb.ProfileRequest(customer_id=anonymous), timeout=DEADLINE_S,
                              metadata=key(OPS))
    assert profile.customer_id == anonymous
    assert stub.ForgetCustomer(pb.ForgetRequest(customer_id=anonymous), timeout=DEADLINE_S,
                               metadata=key(OPS)).existed


@pytest.mark.parametrize("customer_id", [
    "c" * 257,
    "~" + "d" * 256,  # no type
    "~Device:" + "v" * 256,  # not a type an alias may have
    "~" + "d" * (MAX_ALIAS_TYPE + 1) + ":" + "v" * MAX_ALIAS_VALUE,  # a type too long
    "~device:" + "v" * (MAX_ALIAS_VALUE + 1),  # a value too long
])
def test_other_ids_are_still_held_to_256_characters(stub, customer_id):
    with pytest.raises(grpc.RpcError) as refused:
        stub.Decide(pb.DecideRequest(customer_id=customer_id, channel="web"),
                    timeout=DEADLINE_S, metadata=key(WEB))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == \
        f"customer_id: at most 256 characters, got {len(customer_id)}"
