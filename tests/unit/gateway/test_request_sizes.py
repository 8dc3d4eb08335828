"""What size of request a gateway takes (gateway review, item D): an admin's catalog up to the
4 MiB a catalog may take, with its evidence, though the server's bound was MAX_MESSAGE_BYTES
(1 MiB) for every request, so a catalog of 1-4 MiB could be neither validated nor put; and a
DecisionService request, or a message of its streams, still at most MAX_MESSAGE_BYTES,
refused RESOURCE_EXHAUSTED before it is parsed, as grpc refused it. Over real gRPC on the
in-process backend."""
from __future__ import annotations

import grpc
import pytest

from kairos.cluster.gateway.admin import MAX_EVIDENCE_BYTES
from kairos.cluster.settings import MAX_MESSAGE_BYTES
from kairos.core.yamlsource import MAX_CATALOG_BYTES
from kairos.v1 import admin_pb2, admin_pb2_grpc
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import serving

DEADLINE_S = 60
PAST = "x" * (MAX_MESSAGE_BYTES + 1)  # a field that takes a request past its bound
TOO_LARGE = f"a DecisionService message takes at most {MAX_MESSAGE_BYTES} bytes " \
            f"(KAIROS_MAX_MESSAGE_BYTES), got "


@pytest.fixture(scope="module")
def channel():
    with serving() as (_, channel):
        yield channel


def commented(text: str, size: int) -> str:
    """`text` with comments that take it to about `size` bytes (at most)."""
    line = "# " + "x" * 1000 + "\n"
    return text + "\n" + line * ((size - len(text) - 1) // len(line))


def test_a_catalog_of_up_to_4_mib_with_its_evidence_reaches_the_handler(channel):
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    running = admin.GetCatalog(admin_pb2.GetCatalogRequest(), timeout=DEADLINE_S).yaml
    assert admin.ValidateCatalog(admin_pb2.CatalogText(
        yaml=commented(running, 2 * MAX_MESSAGE_BYTES)), timeout=DEADLINE_S).version
    largest = admin_pb2.CatalogText(yaml=commented(running, MAX_CATALOG_BYTES),
                                    evidence_json=" " * MAX_EVIDENCE_BYTES,
                                    expected_current_version="v" * 1024)
    assert largest.ByteSize() > 4 * MAX_MESSAGE_BYTES
    with pytest.raises(grpc.RpcError) as refused:  # read whole, compiled, and its evidence
        admin.PutCatalog(largest, timeout=DEADLINE_S)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert refused.value.details().startswith("evidence_json: not a replay report")


@pytest.mark.parametrize("call", [
    lambda stub: stub.Decide(pb.DecideRequest(customer_id="c1", channel="web", context={
        "basket_value": pb.Value(string_value=PAST)}), timeout=DEADLINE_S),
    lambda stub: stub.IngestBatch(pb.EventBatch(events=[pb.Event(
        customer_id="c1", type="app_open", channel="web", idempotency_key=PAST)]),
        timeout=DEADLINE_S),
    lambda stub: next(stub.WatchDecisions(pb.WatchRequest(channel="web", placement=PAST),
                                          timeout=DEADLINE_S)),
], ids=["Decide", "IngestBatch", "WatchDecisions"])
def test_a_decision_service_request_past_its_bound_is_resource_exhausted(channel, call):
    with pytest.raises(grpc.RpcError) as refused:
        call(decision_pb2_grpc.DecisionServiceStub(channel))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details().startswith(TOO_LARGE)


def test_one_at_its_bound_is_parsed(channel):
    request = pb.DecideRequest(customer_id="c1", channel="web", context={
        "basket_value": pb.Value(string_value=PAST)})
    value = request.context["basket_value"]
    value.string_value = PAST[:len(PAST) - (request.ByteSize() - MAX_MESSAGE_BYTES)]
    assert request.ByteSize() == MAX_MESSAGE_BYTES
    with pytest.raises(grpc.RpcError) as refused:
        decision_pb2_grpc.DecisionServiceStub(channel).Decide(request, timeout=DEADLINE_S)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # the value's, checked
    assert refused.value.details().startswith("context.basket_value: ")


def test_an_ingest_stream_ends_at_its_first_event_past_the_bound_after_the_acks_before(channel):
    events = [pb.Event(customer_id="c1", type="app_open", channel="web", idempotency_key="a"),
              pb.Event(customer_id="c1", type="app_open", channel="web", idempotency_key=PAST)]
    stream = decision_pb2_grpc.DecisionServiceStub(channel).IngestStream(iter(events),
                                                                        timeout=DEADLINE_S)
    acks = []
    with pytest.raises(grpc.RpcError) as refused:
        for ack in stream:
            acks.append(ack)
    assert len(acks) == 1
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details().startswith(TOO_LARGE)
