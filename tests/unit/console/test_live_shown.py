"""The console's reads of a customer's record name the channel they show (GetProfile's
`shown_channel`, whose decision alone the gateway logs) only in the live part, whose decision
the agent answers: its first update, and each read after a push. The page's own read, which
the live part replaces at once, and a read only to learn the channels to watch, are previews.
Without it the agent's answers joined no logged decision: replay and `kairos uplift` saw
nothing of the console's channel. Through Starlette's TestClient against the stand-in
gateway of test_app."""
from __future__ import annotations

import asyncio

import pytest
from starlette.testclient import TestClient

from tests.support.console import client_fixture
from tests.unit.console.test_app import StandIn


class Shown(StandIn):
    """The stand-in, noting the channel each read shows; its watches push once on `web`."""

    def __init__(self):
        super().__init__()
        self.shown: list[str] = []

    async def profile(self, key, who, explain=False, shown_channel=""):
        self.shown.append(shown_channel)
        return await super().profile(key, who, explain, shown_channel)

    async def changes(self, key, customer_id, channels):
        yield {"*"}
        yield {"web"}
        while True:
            await asyncio.sleep(0.05)
            yield set()


@pytest.fixture
def gateway() -> Shown:
    return Shown()


client = client_fixture()


def updates(client: TestClient, url: str, n: int) -> None:
    with client.stream("GET", url) as live:
        seen = 0
        for line in live.iter_lines():
            seen += line == "event: update"
            if seen == n:
                return


def test_the_live_part_reads_name_the_agents_channel_the_page_read_none(client, gateway):
    client.get("/customer?id=ana")
    assert gateway.shown == [""]
    updates(client, "/customer/live?id=ana&channel=call_center&channel=web", 2)
    assert gateway.shown == ["", "call_center", "call_center"]  # first update, after a push


def test_a_read_to_learn_the_channels_shows_nothing(client, gateway):
    updates(client, "/customer/live?id=ana", 1)
    # the read that learns the channels, then the first update
    assert gateway.shown[:2] == ["", "call_center"]
