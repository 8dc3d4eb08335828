"""A live page opened before a catalog switch that removed one of its channels names that
channel still: its watches are refused (INVALID_ARGUMENT), and the page learns the channels
from a read and follows those, rather than answer 400, which its EventSource never recovers
from. Through Starlette's TestClient against the recording stand-in gateway of
test_live_reads."""
from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from kairos.cluster.console.app import ConsoleConfig, create_app
from kairos.cluster.console.gateway_client import GatewayError
from kairos.cluster.gateway.auth import Auth
from tests.unit.console.test_app import KEYS, sign_in
from tests.unit.console.test_live_reads import Recording, first_update


class Switched(Recording):
    """The stand-in, whose catalog no longer has the channel `fax`."""

    async def changes(self, key, customer_id, channels):
        if "fax" in channels:
            self.calls.append(("refused", tuple(channels)))
            raise GatewayError("invalid", "INVALID_ARGUMENT: channel: unknown channel 'fax'")
        async for changed in super().changes(key, customer_id, channels):
            yield changed


@pytest.fixture
def gateway() -> Switched:
    return Switched()


def test_a_page_naming_a_channel_switched_away_follows_the_catalogs(gateway):
    app = create_app(ConsoleConfig("127.0.0.1:1"), Auth.load(KEYS), gateway)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        sign_in(client)  # a console just started: no read has said which channels there are
        first_update(client, "/customer/live?id=ana&channel=call_center&channel=fax")
    assert gateway.calls == [("refused", ("call_center", "fax")), ("watching", ()), ("read",),
                             ("watching", ("call_center", "web")), ("read",)]
