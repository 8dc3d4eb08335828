"""A live page waits out a gateway that does not answer, as it waits out a busy one: it is
told `paused` ("down"), which its script asks again on every 10 s. It was answered 503 when
the gateway was down as it connected, and `gone` when the gateway went away under its watches:
the page's updates stopped for good, though the gateway came back. Through Starlette's
TestClient against the stand-in gateway of test_app."""
from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from kairos.cluster.console.gateway_client import GatewayError
from tests.support.console import client_fixture
from tests.unit.console.test_app import StandIn

LIVE = "/customer/live?id=ana&channel=call_center&channel=web"
DOWN = GatewayError("down", "UNAVAILABLE: failed to connect to all addresses")


class WatchesEnd(StandIn):
    """The stand-in, whose watches end (the gateway went away) once they are in place."""

    async def changes(self, key, customer_id, channels):
        self._fail()
        yield {"*"}
        raise GatewayError("down", "a watch ended")


@pytest.fixture
def gateway() -> WatchesEnd:
    return WatchesEnd()


client = client_fixture()


def events(client: TestClient) -> list[tuple[str, str]]:
    """The live page's events: each one's name and its first line of data."""
    with client.stream("GET", LIVE) as live:
        assert live.status_code == 200
        lines = list(live.iter_lines())
    return [(line, lines[n + 1]) for n, line in enumerate(lines) if line.startswith("event:")]


def test_a_gateway_down_as_the_page_connects_pauses_it(client, gateway):
    gateway.failure = gateway.decide_failure = DOWN  # no record, nor a fallback decision
    assert events(client) == [("event: paused", "data: down")]
    gateway.failure = gateway.decide_failure = None  # back: the page's next try follows it again
    assert events(client)[0][0] == "event: update"


def test_a_gateway_gone_under_the_watches_pauses_the_page(client):
    assert events(client)[-1] == ("event: paused", "data: down")
