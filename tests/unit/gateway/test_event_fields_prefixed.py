"""An event's checks name their field under the prefix a batch or a stream gives it, made only
once a check failed (event_request): every kind of check an event goes through names its
field with it, and without one the field alone. The default catalog, no cluster."""
from __future__ import annotations

import pytest

from kairos.core.compiler import default_compiled
from kairos.core.engine import DecisionEngine
from kairos.core.errors import InputError
from kairos.v1 import decision_pb2 as pb

from kairos.cluster.gateway.requests import event_request

CATALOG = default_compiled()


def _event(**changes) -> pb.Event:
    event = pb.Event(customer_id="c1", type="page_view", channel="web",
                     attributes={"category": pb.Value(string_value="apparel")})
    for name, value in changes.items():
        if name == "alias":
            event.alias.type, event.alias.value = value
        elif name == "attributes":
            event.attributes.clear()
            for key, item in value.items():
                event.attributes[key].CopyFrom(item)
        elif name == "nanos":
            event.time.nanos = value
        else:
            setattr(event, name, value)
    return event


CASES = {
    "customer_id": dict(customer_id=""),
    "alias.type": dict(alias=("Not-A-Type", "x")),
    "alias.value": dict(alias=("cookie", "a\x00b")),
    "event_id": dict(event_id="e\x00"),
    "idempotency_key": dict(idempotency_key="k" * 10_000),
    "type": dict(type="no_such_type"),
    "channel": dict(channel="no_such_channel"),
    "decide_placement": dict(decide_placement="no_such_placement"),
    "time": dict(nanos=-1),
    "attributes": dict(attributes={f"k{i}": pb.Value(int_value=i) for i in range(50)}),
    "attributes.price": dict(attributes={"category": pb.Value(string_value="apparel"),
                                         "price": pb.Value(string_value="cheap")}),
    "attributes.category": dict(attributes={}),
    "attributes.colour": dict(attributes={"category": pb.Value(string_value="apparel"),
                                          "colour": pb.Value(string_value="red")}),
}


@pytest.mark.parametrize("field", CASES)
def test_a_refused_event_names_its_field_under_the_prefix(field):
    event = _event(**CASES[field])
    with pytest.raises(InputError) as alone:
        event_request(event, CATALOG)
    with pytest.raises(InputError) as in_batch:
        event_request(event, CATALOG, "events[3].")
    assert alone.value.field == field
    assert in_batch.value.field == f"events[3].{field}"
    assert in_batch.value.reason == alone.value.reason
    assert str(in_batch.value) == f"events[3].{field}: {alone.value.reason}"


def test_a_decide_placement_without_a_channel_names_the_channel():
    with pytest.raises(InputError) as in_batch:
        event_request(_event(channel="", decide_placement="hero"), CATALOG, "events[0].")
    assert in_batch.value.field == "events[0].channel"
    assert in_batch.value.reason == "decide_placement needs the channel"


def test_an_event_that_passes_is_the_same_with_a_prefix_or_without():
    event = _event(idempotency_key="k1", decide_placement="hero",
                   attributes={"category": pb.Value(string_value="home"),
                               "price": pb.Value(number_value=9.5)})
    (who_a, alone), (who_b, in_batch) = (event_request(event, CATALOG),
                                         event_request(event, CATALOG, "events[1]."))
    assert who_a == who_b == ("c1", None)
    assert alone._replace(time=0) == in_batch._replace(time=0)
    assert alone.attributes == {"category": "home", "price": 9.5}
    assert alone.decide == ("web", "hero") and alone.idempotency_key == "k1"


def test_checked_attributes_fill_the_slots_only_when_given_them():
    attributes = {"category": "home", "price": 9.5}
    fields = [float("nan")] * CATALOG.n_fields
    assert DecisionEngine.check_attributes(CATALOG, "page_view", attributes) is None
    DecisionEngine.check_attributes(CATALOG, "page_view", attributes, fields)
    slots = CATALOG.event_fields["page_view"]
    assert fields[slots["price"]] == 9.5
    assert fields[slots["product_id"]] != fields[slots["product_id"]]  # not given: NaN


def test_a_catalog_event_type_is_found_by_name():
    catalog = CATALOG.catalog
    assert catalog.event("page_view") is catalog.events[catalog.events.index(
        next(e for e in catalog.events if e.name == "page_view"))]
    assert catalog.event("no_such_type") is None
    assert [catalog.event(e.name) for e in catalog.events] == list(catalog.events)
