"""The channels a live page's URL names are watched each once, only those of the catalog as
the agent's key last read them, and at most MAX_CHANNELS: `channel=web` 256 times opened 256
WatchDecisions, 16,384 at 64 live pages per key, past the gateway's budget of watch streams.
Through Starlette's TestClient against the recording stand-in gateway of test_live_reads."""
from __future__ import annotations

import pytest

from tests.support.console import client_fixture
from tests.unit.console.test_live_reads import Recording, first_update


@pytest.fixture
def gateway() -> Recording:
    return Recording()


client = client_fixture()


def test_a_channel_named_again_is_watched_once(client, gateway):
    first_update(client, "/customer/live?id=ana&" + "&".join(["channel=web"] * 256))
    watched = [call[1] for call in gateway.calls if call[0] == "watching"]
    assert watched[0] == ("web",)


def test_channels_the_catalog_lacks_are_not_watched(client, gateway):
    client.get("/customer?id=ana")  # a read: the channels the key sees
    made_up = "&".join(f"channel=c{n}" for n in range(20))
    first_update(client, f"/customer/live?id=ana&channel=web&channel=call_center&{made_up}")
    watched = [call[1] for call in gateway.calls if call[0] == "watching"]
    assert watched == [("web", "call_center")]


def test_more_channels_than_the_cap_are_refused(client):
    # 33: at 64 live pages a key, 2,112 watch streams
    many = "&".join(f"channel=c{n}" for n in range(33))
    with client.stream("GET", f"/customer/live?id=ana&{many}") as live:
        assert live.status_code == 400
