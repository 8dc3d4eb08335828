"""Long-lived streams across a catalog switch: an IngestStream opened before a PutCatalog that
adds an event type takes events of that type, as a unary Ingest does (each event is checked
against the catalog the cluster runs when it is read), and a WatchDecisions stream shows the
running catalog's agent texts."""
from __future__ import annotations

import queue

from kairos.core.catalog import default_catalog_text
from kairos.core.decision import Decision, RankedAction
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


def _pushed(customer_id: str) -> Decision:
    warranty = RankedAction(action_id="extended_warranty", group="sell", treatment="t",
                            priority=1.0, propensity=0.5, value=2.0, weight=1.0, lever=1.0)
    return Decision(decision_id="d", customer_id=customer_id, channel="call_center",
                    placement="agent_screen", actions=(warranty,), catalog_version="v",
                    model_version=1)


def test_a_watch_stream_shows_the_agent_texts_of_the_catalog_switched_to():
    backend = LocalBackend()
    with serving(backend=backend) as (gw, channel):
        watch = DecisionServiceStub(channel).WatchDecisions(
            pb.WatchRequest(customer_id="kim", channel="call_center"), timeout=30)
        watch.initial_metadata()
        deliver = gw.gateway.watches.deliver
        gw.loop.call_soon_threadsafe(deliver, [_pushed("kim")])
        assert next(watch).actions[0].agent_text.startswith("Offer the extended warranty")
        text = default_catalog_text().replace("version: ", "version: v2-", 1).replace(
            'agent_text: "Offer the extended warranty', 'agent_text: "Propose the warranty', 1)
        gw.run(backend.controller().put_catalog(text))
        gw.run(gw.gateway.refresh_catalog())
        gw.loop.call_soon_threadsafe(deliver, [_pushed("kim")])
        assert next(watch).actions[0].agent_text.startswith("Propose the warranty")
        watch.cancel()
