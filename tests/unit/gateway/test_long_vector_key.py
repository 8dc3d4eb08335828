"""A Decide's `vectors` key longer than a key may be is refused naming `vectors key`, never
with the key itself as the field's name (review rev42 gateway finding 4)."""
from __future__ import annotations

import grpc
import pytest

from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import serving


def test_a_long_vector_key_is_refused_without_naming_the_field_by_it():
    with serving() as (_, channel):
        with pytest.raises(grpc.RpcError) as failed:
            DecisionServiceStub(channel).Decide(pb.DecideRequest(
                customer_id="t-1", channel="web", vectors={"v" * 5000: b""}), timeout=10)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.value.details() == "vectors key: at most 256 characters, got 5000"
