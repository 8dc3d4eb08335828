"""An event type's `channels:` and `also_sent:` (issue 18): which callers may send it, as the
catalog loads and compiles them, and the errors it gives."""
from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest
import yaml

from kairos.core.catalog import default_catalog_text, load_catalog
from kairos.core.compiler import compile_catalog, default_compiled
from kairos.core.errors import CatalogError

SCHEMA = json.loads(resources.files("kairos.core").joinpath("catalog.schema.json").read_text())


def with_events(**specs: dict) -> str:
    """The default catalog with these keys added to (or taken out of, as None) its event
    types' specs."""
    doc = yaml.safe_load(default_catalog_text())
    for name, spec in specs.items():
        event = doc["events"][name]
        for key, value in spec.items():
            if value is None:
                event.pop(key, None)
            else:
                event[key] = value
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)


def senders(c, event: str) -> tuple[bool, list[str]]:
    e = c.event_index[event]
    return bool(c.event_sent[e]), [ch for ch, ok in zip(c.channel_names,
                                                          c.event_channels[e]) if ok]


def test_the_default_catalog_says_who_sends_consent_and_nobody_sends_a_timers_event():
    c = default_compiled()
    assert senders(c, "profile_updated") == (True, ["web", "call_center"])
    assert senders(c, "cart_abandoned") == (False, list(c.channel_names))  # the timer's own
    assert senders(c, "page_view") == (True, list(c.channel_names))  # every channel, as before


def test_a_type_a_timer_fires_may_be_sent_too_when_the_catalog_says_so_on_channels_it_names():
    c = compile_catalog(load_catalog(with_events(
        cart_abandoned={"also_sent": True, "channels": ["app"]},
        complaint={"channels": []})))  # no channel: only a caller naming none (the CRM)
    assert senders(c, "cart_abandoned") == (True, ["app"])
    assert senders(c, "complaint") == (True, [])


def position(text: str, needle: str, nth: int = 0) -> str:
    """`line:column` of the `nth` item of the flow list that follows `needle` in `text`."""
    line = next(i for i, t in enumerate(text.splitlines(), 1) if needle in t)
    row = text.splitlines()[line - 1]
    column = row.index("[") + 2
    for _ in range(nth):
        column = row.index(", ", column) + 3
    return f"{line}:{column}"


@pytest.mark.parametrize("specs, needle, nth, message", [
    (dict(profile_updated={"channels": ["web", "crm"]}), "channels: [web, crm]", 1,
     "events.profile_updated.channels[1]: unknown channel 'crm'"),
    (dict(profile_updated={"channels": ["call_centre"]}), "channels: [call_centre]", 0,
     "events.profile_updated.channels[0]: unknown channel 'call_centre' (did you mean "
     "'call_center'?)"),
    (dict(profile_updated={"channels": ["web", "web"]}), "channels: [web, web]", 1,
     "events.profile_updated.channels[1]: duplicate channel 'web'"),
    (dict(profile_updated={"channels": ["Web"]}), "channels: [Web]", 0,
     "events.profile_updated.channels[0]: expected a name of lowercase letters, digits and "
     "'_' starting with a letter, got 'Web'"),
])
def test_a_channel_list_names_the_catalogs_channels_once_each(specs, needle, nth, message):
    text = with_events(**specs)
    with pytest.raises(CatalogError) as err:
        load_catalog(text, "t.yaml")
    assert str(err.value) == f"t.yaml:{position(text, needle, nth)}: {message}"


@pytest.mark.parametrize("specs, message", [
    (dict(cart_abandoned={"channels": ["web"]}),
     "events.cart_abandoned.channels: timer 'cart_abandoned' fires 'cart_abandoned', so no "
     "caller sends it on any channel unless it says `also_sent: true`"),
    (dict(page_view={"also_sent": True}),
     "events.page_view.also_sent: no timer fires 'page_view': callers send it anyway (leave "
     "also_sent out)"),
    (dict(page_view={"also_sent": "yes"}),
     "events.page_view.also_sent: expected true or false, got 'yes'"),
    (dict(page_view={"channels": "web"}),
     "events.page_view.channels: expected a list, got"),
    (dict(page_view={"chanels": ["web"]}),
     "events.page_view.chanels: unknown key 'chanels' (allowed: fields, channels, also_sent)"),
])
def test_what_a_senders_declaration_may_not_say(specs, message):
    with pytest.raises(CatalogError) as err:
        load_catalog(with_events(**specs), "t.yaml")
    assert message in str(err.value)


@pytest.mark.parametrize("specs, valid", [
    (dict(cart_abandoned={"also_sent": True, "channels": ["app", "web"]}), True),
    (dict(profile_updated={"channels": []}), True),
    (dict(profile_updated={"channels": ["web", "web"]}), False),
    (dict(profile_updated={"channels": "web"}), False),
    (dict(page_view={"also_sent": "yes"}), False),
])
def test_the_editors_schema_agrees(specs, valid):
    errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(
        yaml.safe_load(with_events(**specs))))
    assert (errors == []) == valid
