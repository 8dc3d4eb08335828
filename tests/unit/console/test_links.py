"""Links into the console: one followed from another site (asked for again, web.py), a URL
copied from the address bar, and the page a sign-in goes on to (`next`), which is only ever
one of the console's own. Through Starlette's TestClient against test_app's stand-in."""
from __future__ import annotations

import html
import re
import time

import pytest
from starlette.testclient import TestClient

from kairos.cluster.console import web
from kairos.cluster.console.app import ConsoleConfig, create_app
from kairos.cluster.gateway.auth import Auth
from tests.unit.console.test_app import (AGENT, CROSS_SITE, KEYS, StandIn, csrf_of,
                                         without_cookies)


@pytest.fixture
def client() -> TestClient:
    app = create_app(ConsoleConfig("127.0.0.1:1"), Auth.load(KEYS), StandIn())
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client


def asked_for(page) -> str:
    """The URL an `ask_again` page asks for, "" if it is another page."""
    found = re.search(r'http-equiv="refresh" content="0;url=([^"]+)"', page.text)
    return found.group(1).replace("&amp;", "&") if found else ""


def sign_in(client: TestClient, signin: str = "/signin"):
    form = client.get(signin)
    sent_on = re.search(r'name="next" value="([^"]*)"', form.text)
    return client.post("/signin", data={"csrf": csrf_of(form.text), "key": AGENT,
                                        **({"next": html.unescape(sent_on.group(1))}
                                           if sent_on else {})},
                       follow_redirects=False)


def test_a_copied_url_that_carries_the_mark_is_asked_for_again(client):
    """After any link from another site the address bar kept `asked=1`; a CRM that linked
    that URL sent a signed-in agent to the sign-in page, its cookie left out and the mark
    read as the console's own refresh coming back."""
    sign_in(client)
    for copied in ("/customer?id=ana&asked=1",
                   f"/customer?id=ana&asked={int(time.time()) - 3600}",
                   "/customer?id=ana&asked=%C2%B2"):
        link = without_cookies(client, "GET", copied, headers=CROSS_SITE)
        assert link.status_code == 200, copied
        url = asked_for(link)
        assert re.fullmatch(r"/customer\?id=ana&asked=(\d+)", url), url  # one mark, fresh
        again = client.get(url, headers={"sec-fetch-site": "same-origin"})
        assert again.status_code == 200 and "Offer the warranty" in again.text


def test_a_mark_with_the_cookie_or_from_the_console_itself_serves_the_page(client):
    """Only a request both cross-site and without the cookie is asked for again or, when it
    is the console's own refresh just now, sent to sign in."""
    sign_in(client)
    fresh = f"/customer?id=ana&asked={int(time.time())}"
    for headers in (CROSS_SITE, {"sec-fetch-site": "same-origin"}, {}):
        page = client.get(fresh, headers=headers, follow_redirects=False)
        assert page.status_code == 200 and "Offer the warranty" in page.text
    refresh = without_cookies(client, "GET", fresh, headers=CROSS_SITE)
    assert refresh.status_code == 303 \
        and refresh.headers["location"] == "/signin?next=%2Fcustomer%3Fid%3Dana"


def test_a_sign_in_goes_on_to_the_page_asked_for(client):
    """A sign-in went to / whatever page had sent the agent to it: a CRM's deep link was
    lost."""
    first = client.get("/customer?id=ana&by=customer_id&asked=1", follow_redirects=False)
    signin = first.headers["location"]
    assert signin == "/signin?next=%2Fcustomer%3Fid%3Dana%26by%3Dcustomer_id"
    done = sign_in(client, signin)
    assert done.status_code == 303 \
        and done.headers["location"] == "/customer?id=ana&by=customer_id"
    assert "Offer the warranty" in client.get(done.headers["location"]).text
    # a key refused keeps the page to go on to; / names none
    refused = client.post("/signin", data={"csrf": csrf_of(client.get(signin).text),
                                           "key": "guess" * 4, "next": "/operator"})
    assert refused.status_code == 401 and 'name="next" value="/operator"' in refused.text
    assert without_cookies(client, "GET", "/").headers["location"] == "/signin"


@pytest.mark.parametrize("elsewhere", [
    "//evil.example/customer", "https://evil.example/", "/\\evil.example", "\\\\evil.example",
    "/\t/evil.example", "/\n/evil.example", "javascript:alert(1)", "evil.example", "",
    "/" + "x" * 5000])
def test_a_sign_in_goes_on_to_no_other_site(client, elsewhere):
    """`next` is the console's own path, or the sign-in goes to /: a link naming another site
    must not make the console send a freshly signed-in agent there."""
    form = client.get("/signin", params={"next": elsewhere})
    assert 'name="next"' not in form.text
    done = client.post("/signin", data={"csrf": csrf_of(form.text), "key": AGENT,
                                        "next": elsewhere}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/"


def test_only_the_consoles_own_paths_are_local():
    assert web.local_path("/customer?id=a%2F%2Fb&q=//x") == "/customer?id=a%2F%2Fb&q=//x"
    assert web.local_path("/") == "/"
    for elsewhere in ("//x", "/\\x", "/a\\b", "http://x/", "x", "/\x7f", "/\u0000", None, 1):
        assert web.local_path(elsewhere) == "", elsewhere
