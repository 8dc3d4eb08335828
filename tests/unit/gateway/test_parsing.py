"""Bytes that are not the request message get INVALID_ARGUMENT naming the message, on every
kind of RPC, and only after the key was checked (grpc alone answers UNKNOWN); an error that
quotes a huge value still reaches the caller as its status."""
from __future__ import annotations

import grpc
import pytest

from kairos.v1 import decision_pb2 as pb


from tests.support.inprocess_gateway import serving

KEY = "parse-test-key-0123456789"
WEB_KEY = "parse-test-web-key-0123456789"
NOT_A_MESSAGE = b"\x0a\x05\xc3\x28\xa0\xa1\xff"  # field 1 holding invalid UTF-8
TRUNCATED = b"\x0a\xff\xff\xff\xff\x0f"  # field 1 claiming 4 GiB


@pytest.fixture(scope="module")
def channel():
    with serving(f"keys:\n  - {{key: {KEY}, name: all, scopes: [decide, ingest, watch, admin]}}\n"
                 f"  - {{key: {WEB_KEY}, name: web, channel: web, scopes: [decide]}}\n"
                 ) as (_, ch):
        yield ch


def call(channel, method: str, data: bytes, key: str | None = KEY):
    metadata = (("x-api-key", key),) if key else ()
    path = f"/kairos.v1.{method}"
    try:
        if method.endswith("IngestStream"):
            list(channel.stream_stream(path)(iter([data]), timeout=10, metadata=metadata))
        elif method.endswith("WatchDecisions"):
            list(channel.unary_stream(path)(data, timeout=10, metadata=metadata))
        else:
            channel.unary_unary(path)(data, timeout=10, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("method, message", [
    ("DecisionService/Decide", "kairos.v1.DecideRequest"),
    ("DecisionService/Ingest", "kairos.v1.Event"),
    ("DecisionService/IngestStream", "kairos.v1.Event"),
    ("DecisionService/IngestBatch", "kairos.v1.EventBatch"),
    ("DecisionService/WatchDecisions", "kairos.v1.WatchRequest"),
    ("AdminService/PutCatalog", "kairos.v1.CatalogText"),
])
@pytest.mark.parametrize("data", [NOT_A_MESSAGE, TRUNCATED], ids=["bad-utf8", "truncated"])
def test_a_request_that_does_not_parse_is_invalid_argument(channel, method, message, data):
    code, details = call(channel, method, data)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert f"not a valid {message}" in details


def test_the_key_is_checked_before_the_request_is_parsed(channel):
    assert call(channel, "DecisionService/Ingest", NOT_A_MESSAGE, key=None)[0] \
        == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("key", [KEY, WEB_KEY], ids=["unbound", "web-bound"])
def test_an_error_quoting_a_huge_value_keeps_its_status(channel, key):
    request = pb.DecideRequest(customer_id="c", channel="x" * 65536).SerializeToString()
    code, details = call(channel, "DecisionService/Decide", request, key=key)
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED), \
        (code, details[:200])
    assert "channel" in details and len(details) <= 1024
