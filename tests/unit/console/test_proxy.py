"""`kairos console --proxy ADDR` behind a reverse proxy that ends TLS (review R-console M2):
the console saw plain HTTP from it, so its cookies went without Secure and the __Host- prefix,
it sent no HSTS, and every agent's failed sign-ins counted against the proxy's one address.
Now that peer's X-Forwarded-Proto and X-Forwarded-For are believed, and no other peer's.

Against a real uvicorn, started as `kairos console` starts it, with 127.0.0.2 as the proxy:
requests come from that address, or from 127.0.0.1 as any other peer (Linux routes all of
127/8 to loopback)."""
from __future__ import annotations

import http.client
import os
import re
import sys
from urllib.parse import urlencode

import pytest

from kairos.cluster.console.session import SIGNIN_FAILURES
from tests.unit.console.serving import serving
from tests.unit.console.test_app import AGENT, KEYS

PROXY, OTHER = "127.0.0.2", "127.0.0.1"
HTTPS = {"x-forwarded-proto": "https"}


@pytest.fixture(scope="module")
def console_port(tmp_path_factory):
    home = tmp_path_factory.mktemp("console")
    keys = home / "keys.yaml"
    with os.fdopen(os.open(keys, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(KEYS)
    with serving(lambda port: [
            sys.executable, "-m", "kairos.cluster.cli.main", "--target", "127.0.0.1:1",
            "console", "--port", str(port), "--keys", str(keys), "--proxy", PROXY],
            env={**os.environ, "KAIROS_HOME": str(home)}) as port:
        yield port


class Browser:
    """One browser's requests to the console, from `peer` (the proxy, or another), with
    `forwarded` headers on each; it keeps the console's cookies whatever their flags."""

    def __init__(self, port: int, peer: str, **forwarded: str):
        self.port, self.peer, self.forwarded = port, peer, forwarded
        self.cookies: dict[str, str] = {}

    def ask(self, method: str, path: str, form: dict[str, str] | None = None
            ) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30,
                                                source_address=(self.peer, 0))
        headers = {**self.forwarded, "connection": "close"}
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            headers["content-type"] = "application/x-www-form-urlencoded"
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        response.text = response.read().decode()
        connection.close()
        for cookie in response.headers.get_all("set-cookie") or ():
            name, _, value = cookie.partition(";")[0].partition("=")
            self.cookies[name] = value
        return response

    def sign_in(self, key: str) -> http.client.HTTPResponse:
        form = self.ask("GET", "/signin")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        return self.ask("POST", "/signin", {"csrf": token, "key": key})


def attributes(response: http.client.HTTPResponse, name: str) -> str:
    """The Set-Cookie of the cookie `name`, as sent."""
    sent = response.headers.get_all("set-cookie") or []
    named = [cookie for cookie in sent if cookie.startswith(name + "=")]
    assert named, f"no {name} among {sent}"
    return named[0]


def test_the_proxys_https_gets_host_cookies_secure_and_hsts(console_port):
    agent = Browser(console_port, PROXY, **HTTPS, **{"x-forwarded-for": "192.0.2.10"})
    form = agent.ask("GET", "/signin")
    visitor = attributes(form, "__Host-kairos_console_visitor").lower()
    assert "secure" in visitor and "path=/" in visitor and "domain" not in visitor
    assert form.headers["strict-transport-security"] == "max-age=31536000"
    signed_in = agent.sign_in(AGENT)
    assert signed_in.status == 303
    assert "secure" in attributes(signed_in, "__Host-kairos_console").lower()


def test_another_peers_forwarded_headers_are_ignored(console_port):
    """Any client could send them: one believed would say HTTPS, or a new address at each
    guess at a key."""
    forger = Browser(console_port, OTHER, **HTTPS)
    form = forger.ask("GET", "/signin")
    assert "secure" not in attributes(form, "kairos_console_visitor").lower()
    assert "strict-transport-security" not in form.headers
    for guess in range(SIGNIN_FAILURES):
        forger.forwarded["x-forwarded-for"] = f"198.51.100.{guess}"
        assert forger.sign_in("guess" * 4).status == 401
    forger.forwarded["x-forwarded-for"] = "198.51.100.99"
    assert forger.sign_in("guess" * 4).status == 429  # all counted against 127.0.0.1


def test_sign_in_limits_count_the_forwarded_client(console_port):
    """Each agent behind the proxy has their own count: the address the proxy adds, the
    rightmost (what a client wrote before it is its own say)."""
    guesser = Browser(console_port, PROXY)
    for guess in range(SIGNIN_FAILURES):
        guesser.forwarded["x-forwarded-for"] = f"203.0.113.{guess}, 192.0.2.7"
        assert guesser.sign_in("guess" * 4).status == 401
    assert guesser.sign_in(AGENT).status == 429
    agent = Browser(console_port, PROXY, **{"x-forwarded-for": "192.0.2.8"})
    assert agent.sign_in(AGENT).status == 303
