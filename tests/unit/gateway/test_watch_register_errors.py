"""A watch whose registration fails with an error other than a refusal, a full queue or
Unavailable (the controller's store down under a channel watch, a shard's own error) ends
UNAVAILABLE, its detail in the gateway's log only (gateway review, item B): it ended UNKNOWN,
quoting the exception's class and message. Over real gRPC on the in-process backend."""
from __future__ import annotations

import logging

import grpc
import pytest

from kairos.cluster.gateway import calls
from kairos.cluster.storage.store import StoreUnavailable
from kairos.cluster.throttled import ThrottledWarning
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import serving

DEADLINE_S = 10


@pytest.fixture(scope="module")
def served():
    with serving() as (gateway, channel):
        yield gateway, decision_pb2_grpc.DecisionServiceStub(channel)


@pytest.fixture(autouse=True)
def _logs_each(monkeypatch):
    # an earlier call's log holds none back
    monkeypatch.setattr(calls, "_UNAVAILABLE_DETAIL",
                        ThrottledWarning(calls.log, calls.UNAVAILABLE_LOG_S))


@pytest.mark.parametrize("error", [StoreUnavailable("store: connection refused"),
                                   RuntimeError("controller: state lost")])
@pytest.mark.parametrize("watched", [pb.WatchRequest(channel="web"),
                                     pb.WatchRequest(customer_id="ana", channel="web")])
def test_a_registration_that_fails_so_ends_the_stream_unavailable(served, monkeypatch, caplog,
                                                                  error, watched):
    gateway, stub = served

    async def failing(*args, **kwargs):
        raise error
    monkeypatch.setattr(gateway.gateway.backend.local_controller, "watch_channel", failing)
    monkeypatch.setattr(gateway.gateway.client, "watch", failing)
    with caplog.at_level(logging.WARNING, logger="kairos.gateway"), \
            pytest.raises(grpc.RpcError) as ended:
        next(stub.WatchDecisions(watched, timeout=DEADLINE_S))
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value.details()
    assert ended.value.details() == f"{calls.SILENT}; {calls.READ}"
    assert f"{type(error).__name__}: {error}" in caplog.text
