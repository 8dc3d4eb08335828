"""Decide with a `vector` context key over gRPC: DecideRequest.vectors, packed float64."""
from __future__ import annotations

import re

import grpc
import numpy as np
import pytest

from kairos.cluster.gateway.auth import Auth
from kairos.core.catalog import default_catalog_text
from kairos.v1 import admin_pb2, admin_pb2_grpc, decision_pb2 as pb, decision_pb2_grpc

from tests.support.inprocess_gateway import InProcessGateway
from tests.support.waiting import wait_until

DEADLINE_S = 10.0
VERSION = "vectors-1"
CATALOG = re.sub(r'version: "[^"]*"', f'version: "{VERSION}"', default_catalog_text()).replace(
    "\ncontext:\n", "\ncontext:\n  embedding: {type: vector, size: 8, min: -5, max: 5}\n").replace(
    "  predictors:\n", "  predictors:\n    - {name: embedding, source: context}\n")


@pytest.fixture(scope="module")
def stub():
    gateway = InProcessGateway(Auth.load(None))
    channel = grpc.insecure_channel(f"127.0.0.1:{gateway.port}")
    info = admin_pb2_grpc.AdminServiceStub(channel).PutCatalog(
        admin_pb2.CatalogText(yaml=CATALOG), timeout=60)
    # the gateway compiles a new catalog in the background, serving the old one meanwhile
    wait_until(lambda: gateway.run(gateway.gateway.catalog()).version == info.version, 30,
               "the gateway to take up the catalog with the vector")
    stub = decision_pb2_grpc.DecisionServiceStub(channel)
    stub.channel = channel
    yield stub
    channel.close()
    gateway.close()


def decide(stub, **fields) -> pb.Decision:
    return stub.Decide(pb.DecideRequest(customer_id="ana", channel="web", **fields),
                       timeout=DEADLINE_S)


def test_a_packed_vector_is_decided_on(stub):
    decision = decide(stub, vectors={"embedding": np.linspace(-1, 1, 8).astype("<f8").tobytes()},
                      explain=True)
    assert not decision.fallback and decision.catalog_version == VERSION


def test_a_catalog_with_other_content_under_the_running_version_is_refused(stub):
    """Gateways take up a catalog by its version: the same version with other content would
    leave them validating against the old one."""
    with pytest.raises(grpc.RpcError) as exc:
        admin_pb2_grpc.AdminServiceStub(stub.channel).PutCatalog(
            admin_pb2.CatalogText(yaml=CATALOG.replace("size: 8", "size: 9")), timeout=60)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "runs with other text: give it a new version" in exc.value.details()
    assert decide(stub, vectors={"embedding": np.zeros(8).tobytes()}).catalog_version == \
        VERSION  # still deciding, on the catalog that ran


@pytest.mark.parametrize("fields, details", [
    (dict(vectors={"embedding": b"\0" * 16}),
     "vectors.embedding: expected 8 numbers packed in 64 bytes, got 16 bytes"),
    (dict(vectors={"embedding": np.full(8, 9.0).tobytes()}),
     "vectors.embedding: every number must be between -5 and 5"),
    (dict(vectors={"embedding": np.full(8, np.nan).tobytes()}),
     "vectors.embedding: every number must be between -5 and 5"),
    (dict(vectors={"basket_value": np.zeros(8).tobytes()}),
     "vectors.basket_value: not a vector context key (declared vectors: embedding)"),
    (dict(vectors={"embedding": np.zeros(8).tobytes()},
          context={"embedding": pb.Value(number_value=1.0)}),
     "vectors.embedding: also given in context"),
    (dict(context={"embedding": pb.Value(number_value=1.0)}),
     "context.embedding: expected 8 numbers, got float"),
])
def test_a_bad_vector_is_invalid_argument_naming_it(stub, fields, details):
    with pytest.raises(grpc.RpcError) as exc:
        decide(stub, **fields)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.value.details() == details
