"""PutCatalog's evidence_json nested deeper than the JSON parser's stack is INVALID_ARGUMENT,
as any other text that is no replay report, not UNKNOWN (a RecursionError; review rev42
gateway finding 3)."""
from __future__ import annotations

import grpc
import pytest

from bench import truth
from kairos.v1 import admin_pb2, admin_pb2_grpc

from tests.support.inprocess_gateway import serving


def test_deeply_nested_evidence_is_invalid_argument():
    with serving() as (_, channel):
        with pytest.raises(grpc.RpcError) as failed:
            admin_pb2_grpc.AdminServiceStub(channel).PutCatalog(admin_pb2.CatalogText(
                yaml=truth.candidate_catalog(), evidence_json="[" * 100_000 + "]" * 100_000),
                timeout=60)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.value.details().startswith(
        "evidence_json: not a replay report (kairos replay's replay.json): RecursionError")
