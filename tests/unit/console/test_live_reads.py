"""How often a customer page reads the customer's record (GetProfile, which decides on every
channel): once for the page, once for its live part, and that one only once the watches are
in place, so a change made meanwhile is not missed. Through Starlette's TestClient against
the stand-in gateway of test_app."""
from __future__ import annotations

import html
import re

import pytest
from starlette.testclient import TestClient

from tests.support.console import client_fixture
from tests.unit.console.test_app import StandIn, sign_in


class Recording(StandIn):
    """The stand-in, noting each record read and each set of watches put in place."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    async def profile(self, key, who, explain=False, shown_channel=""):
        self.calls.append(("read",))
        return await super().profile(key, who, explain, shown_channel)

    async def changes(self, key, customer_id, channels):
        watched = super().changes(key, customer_id, channels)
        first = await anext(watched)
        self.calls.append(("watching", tuple(channels)))
        yield first
        async for changed in watched:
            yield changed


@pytest.fixture
def gateway() -> Recording:
    return Recording()


client = client_fixture(signed_in=False)  # each test signs in: its reads are counted


def first_update(client: TestClient, url: str) -> None:
    with client.stream("GET", url) as live:
        assert next(line for line in live.iter_lines() if line.startswith("event:")) \
            == "event: update"


def test_a_page_and_its_live_part_read_the_record_once_each(client, gateway):
    """The live part read the record before its watches, and again once they were in place:
    three GetProfiles per page view, each of which decided on every channel."""
    sign_in(client)
    page = client.get("/customer?id=ana")
    source = html.unescape(re.search(r'data-source="([^"]+)"', page.text).group(1))
    assert source == "/customer/live?id=ana&channel=call_center&channel=web"
    assert gateway.calls == [("read",)]
    first_update(client, source)
    assert gateway.calls == [("read",), ("watching", ("call_center", "web")), ("read",)]


def test_a_live_part_that_names_no_channels_learns_them_and_watches_them_first(client,
                                                                                gateway):
    sign_in(client)
    first_update(client, "/customer/live?id=ana")
    assert gateway.calls == [("watching", ()), ("read",),
                             ("watching", ("call_center", "web")), ("read",)]


def test_a_live_part_names_a_bounded_number_of_channels(client):
    sign_in(client)
    many = "&".join(f"channel=c{n}" for n in range(257))
    assert client.get(f"/customer/live?id=ana&{many}").status_code == 400
    assert client.get("/customer/live?id=ana&channel=").status_code == 400
