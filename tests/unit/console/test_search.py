"""The search form posts (review R-console L3): an alias the agent types (an e-mail address)
travels in the body, never in a URL that browser history or a proxy's access log keeps; the
console answers 303 to the customer's page by id. A CRM's link by alias (GET ?by=&q=) still
works. Through Starlette's TestClient against the stand-in gateway of test_app."""
from __future__ import annotations

import re
from urllib.parse import quote, quote_plus

import pytest
from starlette.testclient import TestClient

from kairos.cluster.console.app import ConsoleConfig, create_app
from kairos.cluster.gateway.auth import Auth
from tests.unit.console.test_app import KEYS, StandIn, csrf_of, sign_in

EMAIL = "ana.lopez+vip@example.com"
# every attribute of the pages that holds a URL the browser goes to or sends to
URL_ATTRIBUTES = re.compile(r'(?:href|action|src|data-source|content)="([^"]*)"')


class Counting(StandIn):
    """The stand-in gateway, counting the aliases it was asked to resolve."""

    def __init__(self):
        super().__init__()
        self.aliases: list[tuple[str, str]] = []

    async def profile(self, key, who, explain=False, shown_channel=""):
        if who.alias_type:
            self.aliases.append((who.alias_type, who.value))
        return await super().profile(key, who, explain, shown_channel)


@pytest.fixture
def gateway() -> Counting:
    return Counting()


@pytest.fixture
def client(gateway) -> TestClient:
    app = create_app(ConsoleConfig("127.0.0.1:1"), Auth.load(KEYS), gateway)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client


def urls_of(html: str) -> list[str]:
    return URL_ATTRIBUTES.findall(html)


def names(url: str, text: str) -> bool:
    """Whether `url` carries `text`, as it is or encoded as a URL's query would."""
    return any(form in url for form in (text, quote(text, safe=""), quote_plus(text)))


def test_the_search_form_posts_with_the_sessions_token(client, gateway):
    token = sign_in(client)
    for page in (client.get("/"), client.get("/customer?id=ana"),
                 client.get("/customer?id=nobody")):  # the not-found page offers it too
        form = re.search(r'<form [^>]*class="search"[^>]*>(.*?)</form>', page.text, re.S)
        assert form is not None, page.text
        assert 'method="post" action="/customer/find"' in form.group(0)
        assert csrf_of(form.group(1)) == token
        assert 'method="get"' not in page.text


def test_an_alias_search_redirects_to_the_customer_by_id_and_no_url_names_it(client, gateway):
    token = sign_in(client)
    found = client.post("/customer/find", data={"csrf": token, "by": "email", "q": EMAIL},
                        follow_redirects=False)
    assert found.status_code == 303 and found.headers["location"] == "/customer?id=ana"
    assert gateway.aliases == [("email", EMAIL)]
    page = client.get(found.headers["location"])
    assert page.status_code == 200 and EMAIL not in page.text
    assert urls_of(page.text) and not any(names(url, EMAIL) for url in urls_of(page.text))


def test_a_customer_id_search_redirects_unread(client, gateway):
    token = sign_in(client)
    found = client.post("/customer/find", data={"csrf": token, "by": "customer_id",
                                                "q": " ana "}, follow_redirects=False)
    assert found.status_code == 303 and found.headers["location"] == "/customer?id=ana"
    assert gateway.aliases == []


@pytest.mark.parametrize("by, wanted, code", [
    ("email", "nobody", 404),  # the stand-in knows no "nobody"
    ("email", "x" * 257, 400),
    ("passport", EMAIL, 400),
    ("email", "  ", 400),
])
def test_a_failed_search_says_so_with_its_status_and_no_url_names_it(client, by, wanted,
                                                                      code):
    token = sign_in(client)
    failed = client.post("/customer/find", data={"csrf": token, "by": by, "q": wanted},
                         follow_redirects=False)
    assert failed.status_code == code and "location" not in failed.headers
    assert 'action="/customer/find"' in failed.text  # the agent searches again from there
    assert not any(names(url, wanted.strip()) for url in urls_of(failed.text) if wanted.strip())


def test_a_search_needs_the_sessions_csrf_token(client, gateway):
    anonymous = csrf_of(client.get("/signin").text)
    sign_in(client)
    for token in ({}, {"csrf": "forged"}, {"csrf": anonymous}):
        refused = client.post("/customer/find", data={"by": "email", "q": EMAIL, **token},
                              follow_redirects=False)
        assert refused.status_code == 403 and "location" not in refused.headers
    assert gateway.aliases == []


def test_a_link_by_alias_from_a_crm_still_opens_the_customer(client, gateway):
    """Links other systems hold may name a customer by alias in the URL: the console follows
    them (their URL is theirs), and sends the browser on to the page by id."""
    sign_in(client)
    linked = client.get("/customer?" + f"by=email&q={quote_plus(EMAIL)}",
                        follow_redirects=False)
    assert linked.status_code == 303 and linked.headers["location"] == "/customer?id=ana"
