"""Long-lived streams across a catalog switch: an IngestStream opened before a PutCatalog that
adds an event type takes events of that type, as a unary Ingest does (each event is checked
against the catalog the cluster runs when it is read), and a WatchDecisions stream shows the
running catalog's agent texts."""
from __future__ import annotations

import queue

from kairos.core.catalog import default_catalog_text
from kairos.v1 import decision_pb2 as pb
from kairos.v1.decision_pb2_grpc import DecisionServiceStub

from tests.support.inprocess_gateway import serving
from tests.support.local_backend import LocalBackend

RATING = "events:\n  app_rating:\n    fields:\n      stars: {type: int}\n"


def test_an_ingest_stream_takes_an_event_type_added_after_it_opened():
    backend = LocalBackend()
    with serving(backend=backend) as (gw, channel):
        stub = DecisionServiceStub(channel)
        sent: queue.Queue = queue.Queue()
        acks = iter(stub.IngestStream(iter(sent.get, None)))
        try:
            sent.put(pb.Event(customer_id="erin", type="app_open", channel="web",
                              idempotency_key="s0"))
            assert next(acks).sequence
            text = default_catalog_text().replace("version: ", "version: v2-", 1)
            gw.run(backend.controller().put_catalog(text.replace("events:\n", RATING, 1)))
            sent.put(pb.Event(customer_id="erin", type="app_rating", channel="web",
                              idempotency_key="s1",
                              attributes={"stars": pb.Value(int_value=4)}))
            assert not next(acks).duplicate
        finally:
            sent.put(None)
