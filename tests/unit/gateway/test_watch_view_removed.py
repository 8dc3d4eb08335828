"""A catalog switch that takes a watched placement away has the shards drop its watches: the
gateway ends those streams (NOT_FOUND, naming the view), with no call to make it look at the
new catalog, frees their places, and counts their refused unregistration as done (real gRPC
on 127.0.0.1, in-process backend)."""
from __future__ import annotations

import grpc
import pytest

from kairos.core.catalog import default_catalog_text
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import serving
from tests.support.local_backend import LocalBackend
from tests.support.waiting import wait_until


@pytest.mark.parametrize("customer_id", ["hal", None], ids=["customer", "channel"])
def test_a_watch_on_a_placement_the_catalog_dropped_ends_naming_it(customer_id):
    backend = LocalBackend()
    with serving(backend=backend) as (gw, channel):
        stub = DecisionServiceStub(channel)
        stub.Ingest(pb.Event(customer_id="hal", type="app_open", channel="web"), timeout=10)
        watch = stub.WatchDecisions(pb.WatchRequest(customer_id=customer_id,
                                                    channel="call_center", placement="ivr"),
                                    timeout=30)
        watch.initial_metadata()  # the watch is in place
        text = default_catalog_text().replace("version: ", "version: no-ivr-", 1)
        assert "      ivr: {top_k: 1}" in text
        text = text.replace("      ivr: {top_k: 1}", "", 1).replace(
            "placements: [agent_screen, ivr]", "placements: [agent_screen]")
        gw.run(backend.controller().put_catalog(text))
        with pytest.raises(grpc.RpcError) as ended:
            next(watch)
        assert ended.value.code() == grpc.StatusCode.NOT_FOUND
        assert "call_center/ivr" in ended.value.details()
        watches = gw.gateway.watches
        wait_until(lambda: not watches.open and not watches._watched, 10,
                   "the stream's place and its watch freed")
