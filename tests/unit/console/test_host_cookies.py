"""Over HTTPS the console's cookies are named __Host-kairos_console and
__Host-kairos_console_visitor, and it reads no others: a browser takes a __Host- cookie only
from the console's own host (Secure, Path=/, no Domain), so a sibling subdomain of a console
served as one of *.example.com, which could set `kairos_console` for it, can fix no session
(its own, signed in with its key) and forge no sign-in. Plain HTTP, on loopback only, keeps
the plain names. Through Starlette's TestClient against the stand-in gateway of test_app."""
from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from kairos.cluster.console.app import ConsoleConfig, create_app
from kairos.cluster.gateway.auth import Auth
from tests.unit.console.test_app import AGENT, KEYS, StandIn, csrf_of

HOSTS = ("console.example.com", "*.example.com")


@pytest.fixture
def app():
    return create_app(ConsoleConfig("127.0.0.1:1", hosts=HOSTS), Auth.load(KEYS), StandIn())


def browser(app, scheme: str = "https") -> TestClient:
    return TestClient(app, base_url=f"{scheme}://console.example.com")


def held(client: TestClient, name: str) -> str:
    """The value of the console's cookie `name` in the client, under either name."""
    return client.cookies.get("__Host-" + name) or client.cookies[name]


def test_the_cookies_carry_the_host_prefix_over_https(app):
    with browser(app) as client:
        form = client.get("/signin")
        visitor = form.headers["set-cookie"]
        assert visitor.startswith("__Host-kairos_console_visitor=")
        done = client.post("/signin", data={"csrf": csrf_of(form.text), "key": AGENT},
                           follow_redirects=False)
        cookies = done.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("__Host-kairos_console="))
        for cookie in (visitor, session):
            attributes = cookie.lower()
            assert "secure" in attributes and "path=/" in attributes \
                and "domain" not in attributes
        # the visitor's cookie is forgotten as it was set (Secure), or the browser keeps it
        forgot = next(c for c in cookies if c.startswith("__Host-kairos_console_visitor="))
        assert "max-age=0" in forgot.lower() and "secure" in forgot.lower()
        assert client.get("/", follow_redirects=False).status_code == 200


def test_cookies_a_sibling_subdomain_set_are_not_read_over_https(app):
    with browser(app) as attacker:
        form = attacker.get("/signin")
        nonce = held(attacker, "kairos_console_visitor")
        token = csrf_of(form.text)
        attacker.post("/signin", data={"csrf": token, "key": AGENT})
        fixed = held(attacker, "kairos_console")
    with browser(app) as victim:  # the names a sibling subdomain can set for the console
        victim.cookies.set("kairos_console", fixed)
        assert victim.get("/", follow_redirects=False).headers["location"] == "/signin"
        victim.cookies.clear()
        victim.cookies.set("kairos_console_visitor", nonce)
        forged = victim.post("/signin", data={"csrf": token, "key": AGENT},
                             follow_redirects=False)
        assert forged.status_code == 403


def test_plain_http_on_loopback_keeps_the_plain_names():
    loopback = create_app(ConsoleConfig("127.0.0.1:1"), Auth.load(KEYS), StandIn())
    with TestClient(loopback, base_url="http://127.0.0.1") as client:
        assert client.get("/signin").headers["set-cookie"].startswith(
            "kairos_console_visitor=")
