"""The `client` fixture of the console's unit tests: Starlette's TestClient on a console app
over the test module's own `gateway` fixture (a stand-in of test_app's kind)."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from starlette.testclient import TestClient

from kairos.cluster.console.app import ConsoleConfig, create_app
from kairos.cluster.gateway.auth import Auth
from tests.unit.console.test_app import KEYS, sign_in


def client_fixture(signed_in: bool = True, raise_server_exceptions: bool = True
                   ) -> Callable[..., Iterator[TestClient]]:
    """A `client` fixture, signed in as test_app's agent unless a module's tests sign in
    themselves (counting what the sign-in reads, or using its token)."""
    @pytest.fixture
    def client(gateway) -> Iterator[TestClient]:
        app = create_app(ConsoleConfig("127.0.0.1:1"), Auth.load(KEYS), gateway)
        with TestClient(app, base_url="http://127.0.0.1",
                        raise_server_exceptions=raise_server_exceptions) as client:
            if signed_in:
                sign_in(client)
            yield client
    return client
