"""The console's routes through Starlette's TestClient, against a stand-in gateway: sign-in,
CSRF refusals, escaping, languages, bounded input, and the empty and error states."""
from __future__ import annotations

import asyncio
import re

import grpc
import pytest
from starlette.testclient import TestClient

from kairos.cluster.console.app import ConsoleConfig, create_app
from kairos.cluster.console.gateway_client import GatewayError
from kairos.cluster.console.session import IDLE_S, SIGNIN_FAILURES, SIGNIN_WINDOW_S
from kairos.core.request import MAX_DECISION_ID_LENGTH, MAX_KEY_LENGTH
from kairos.cluster.gateway.auth import Auth
from kairos.v1 import admin_pb2
from kairos.v1 import decision_pb2 as pb

AGENT = "agent-key-0123456789abcdef"
KEYS = f'keys: [{{key: "{AGENT}", name: agent-7, scopes: [profile:read, respond, watch]}}]'
HOSTILE = '<img src=x onerror="document.title=1">'


class StandIn:
    """The gateway client's methods, answering from memory."""

    def __init__(self):
        self.failure: GatewayError | None = None
        self.fallback = False
        self.decide_failure: GatewayError | None = None
        self.responses: list[tuple] = []
        self.learned_from = pb.LEARNED_FROM_DECISION  # what Respond's ack says
        self.running = "catalog"

    def _fail(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def profile(self, key, who, explain=False, shown_channel=""):
        self._fail()
        if who.value == "nobody":
            raise GatewayError("not_found", "NOT_FOUND: no customer")
        profile = pb.Profile(customer_id="ana" if who.alias_type else who.value,
                             consent={"marketing": True, "service": True})
        profile.attributes["nickname"].string_value = HOSTILE
        profile.current["web"].actions.add(action_id="new_season")
        decision = profile.current["call_center"]
        decision.decision_id, decision.fallback = "d1", self.fallback
        decision.actions.add(action_id="warranty", agent_text="Offer the warranty",
                             propensity=0.25, value=80, context_weight=1, lever=1,
                             priority=20)
        profile.history.add(action_id="warranty", channel="web", outcome="accept")
        profile.history.add(action_id="survey", channel="web", outcome="bookmark")  # newer
        if explain:
            decision.explanation.dropped.add(action_id="cart_push", reason="ELIGIBILITY",
                                             detail="no cart")
            decision.explanation.dropped.add(action_id="quiz", reason="FROM_A_NEWER_SHARD")
        return profile

    async def decide(self, key, customer_id, channel):
        if self.decide_failure is not None:
            raise self.decide_failure
        decision = pb.Decision(customer_id=customer_id, channel=channel, fallback=True)
        decision.actions.add(action_id="service_menu", agent_text="Ask how you can help")
        return decision

    async def changes(self, key, customer_id, channels):
        yield {"*"}
        while True:  # heartbeats, as a quiet customer's page gets them
            await asyncio.sleep(0.05)
            yield set()

    async def respond(self, key, *args):
        self.responses.append(args)
        self._fail()  # as a call whose answer was lost: it may have been recorded
        return self.learned_from

    async def status(self, key):
        return admin_pb2.ClusterStatus(partitions=4096, catalog_version="v1")

    async def running_catalog(self, key):
        return admin_pb2.CatalogText(yaml=self.running)

    async def validate(self, key, text):
        if text == "bad":
            raise GatewayError("invalid", "INVALID_ARGUMENT: catalog.yaml:1:1: broken")
        return admin_pb2.CatalogInfo(name="omni", version="v1", actions=3)

    async def close(self):
        pass


@pytest.fixture
def gateway() -> StandIn:
    return StandIn()


@pytest.fixture
def client(gateway) -> TestClient:
    app = create_app(ConsoleConfig("127.0.0.1:1", dashboard="http://127.0.0.1:8265"),
                     Auth.load(KEYS), gateway)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def sign_in(client: TestClient) -> str:
    """Signs in; the signed-in session's CSRF token."""
    form = client.get("/signin")
    done = client.post("/signin", data={"csrf": csrf_of(form.text), "key": AGENT})
    assert done.status_code == 200 and done.url.path == "/"
    return csrf_of(done.text)


def test_visitors_are_sent_to_sign_in_and_the_cookie_is_strict(client):
    first = client.get("/customer?id=ana", follow_redirects=False)
    assert first.status_code == 303 \
        and first.headers["location"] == "/signin?next=%2Fcustomer%3Fid%3Dana"
    cookie = first.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
    assert "script-src 'self'" in first.headers["content-security-policy"]


def test_every_post_needs_its_sessions_csrf_token(client, gateway):
    form = client.get("/signin")
    assert client.post("/signin", data={"key": AGENT}).status_code == 403
    assert client.post("/signin", data={"key": AGENT, "csrf": "forged"}).status_code == 403
    anonymous = csrf_of(form.text)
    token = sign_in(client)
    respond = {"customer_id": "ana", "decision_id": "d1", "action_id": "warranty",
               "outcome": "accept"}
    assert client.post("/customer/respond", data=respond).status_code == 403
    assert client.post("/customer/respond", data={**respond, "csrf": anonymous}).status_code \
        == 403  # the token from before sign-in died with its session
    assert gateway.responses == []
    done = client.post("/customer/respond", data={**respond, "csrf": token})
    assert done.status_code == 200 and "recorded=accept" in str(done.url)
    assert gateway.responses == [("ana", "call_center", "d1", "warranty", "accept")]


def test_a_wrong_key_is_refused(client):
    form = client.get("/signin")
    refused = client.post("/signin", data={"csrf": csrf_of(form.text), "key": "guess" * 4})
    assert refused.status_code == 401 and "unknown key" in refused.text


def test_failed_sign_ins_are_limited_by_address(gateway):
    app = create_app(ConsoleConfig("127.0.0.1:1"), Auth.load(KEYS), gateway)

    def at(address: str) -> TestClient:
        return TestClient(app, base_url="http://127.0.0.1", client=(address, 50000))

    with at("192.0.2.7") as guesser, at("192.0.2.8") as agent:
        for _ in range(SIGNIN_FAILURES + 1):  # signing in counts for nothing
            sign_in(guesser)
            guesser.post("/signout", data={"csrf": csrf_of(guesser.get("/").text)})
        for _ in range(SIGNIN_FAILURES):
            form = guesser.get("/signin")
            assert guesser.post("/signin", data={"csrf": csrf_of(form.text),
                                                 "key": "guess" * 4}).status_code == 401
        for lang, says in (("en", "Too many failed sign-ins"), ("ja", "サインインの失敗が多すぎます")):
            form = guesser.get("/signin")
            refused = guesser.post("/signin", data={"csrf": csrf_of(form.text), "key": AGENT},
                                   headers={"accept-language": lang})  # the key is not read
            assert refused.status_code == 429 and says in refused.text
            assert 0 < int(refused.headers["retry-after"]) <= SIGNIN_WINDOW_S
            assert 'class="card narrow error too_many_signins"' in refused.text
        sign_in(agent)  # another address signs in


def test_the_customer_page_escapes_profile_values(client):
    sign_in(client)
    page = client.get("/customer?by=email&q=ana@example.com")
    assert page.status_code == 200 and page.url.query == b"id=ana"
    assert HOSTILE not in page.text
    assert "&lt;img src=x onerror=&#34;document.title=1&#34;&gt;" in page.text
    assert "Offer the warranty" in page.text and "Not eligible" in page.text
    assert "new_season" in page.text  # the best action on the other channels


def test_japanese_labels_for_a_japanese_browser(client):
    sign_in(client)
    page = client.get("/customer?id=ana", headers={"accept-language": "ja-JP,ja;q=0.9"})
    assert '<html lang="ja">' in page.text and "ネクスト・ベスト・アクション" in page.text
    assert re.search(r'<tr data-reason="ELIGIBILITY"><td>cart_push</td>\s*'
                     r'<td>対象条件を満たさない</td>', page.text)
    assert '<td class="outcome" data-outcome="accept">承諾</td>' in page.text
    # codes from a shard newer than the console: shown as they are
    assert "<td>FROM_A_NEWER_SHARD</td>" in page.text and ">bookmark</td>" in page.text


def test_empty_and_error_states(client, gateway):
    sign_in(client)
    assert client.get("/customer?id=nobody").status_code == 404
    assert client.get("/customer?id=" + "x" * 257).status_code == 400
    assert client.get("/customer?by=passport&q=1").status_code == 400
    gateway.fallback = True
    page = client.get("/customer?id=ana")
    assert "Fallback decision" in page.text and 'value="accept"' not in page.text
    gateway.failure = GatewayError("down", "DEADLINE_EXCEEDED: the shard is slow")
    fallback = client.get("/customer?id=ana")  # the record unread: the channel's fallback
    assert fallback.status_code == 200 and "Fallback decision" in fallback.text
    assert "could not be read in time" in fallback.text and "Ask how you can help" in fallback.text
    assert 'value="accept"' not in fallback.text
    gateway.decide_failure = GatewayError("down", "UNAVAILABLE: connection refused")
    down = client.get("/customer?id=ana")
    assert down.status_code == 503 and "Kairos does not answer" in down.text
    gateway.decide_failure = GatewayError("denied", "PERMISSION_DENIED: no decide scope")
    assert client.get("/customer?id=ana").status_code == 503  # the record's failure, as it is


def test_the_operator_page_and_catalog_validation(client):
    token = sign_in(client)
    page = client.get("/operator")
    assert page.status_code == 200 and "4096" in page.text and "http://127.0.0.1:8265" in page.text
    checked = client.post("/operator/validate", data={"csrf": token, "catalog": "bad"})
    assert checked.status_code == 400 and "catalog.yaml:1:1: broken" in checked.text
    too_big = client.post("/operator/validate",
                          data={"csrf": token, "catalog": "x" * (2 << 20)})
    assert too_big.status_code == 413


def test_the_operator_page_compiles_a_running_catalog_once(client, gateway, monkeypatch):
    compiled = []
    validate = gateway.validate

    async def counted(key, text):
        compiled.append(text)
        return await validate(key, text)

    monkeypatch.setattr(gateway, "validate", counted)
    sign_in(client)
    for running in ("catalog", "catalog", "catalog v2", "catalog v2", "catalog"):
        gateway.running = running
        page = client.get("/operator")
        assert page.status_code == 200 and "The running catalog is valid: omni v1" in page.text
    assert compiled == ["catalog", "catalog v2", "catalog"]  # one entry: the one running


def test_the_cookie_is_secure_over_https(gateway):
    app = create_app(ConsoleConfig("127.0.0.1:1"), Auth.load(KEYS), gateway)
    with TestClient(app, base_url="https://127.0.0.1") as client:
        assert "secure" in client.get("/signin").headers["set-cookie"].lower()


def test_a_foreign_host_is_refused_and_hsts_is_sent_over_tls_only(gateway):
    """A page whose name an attacker rebinds to the console's address sends its own name as
    Host: refused before any route runs, and not pinned to HTTPS. HSTS goes with TLS, but
    not to `localhost`, which would pin every local server on any port to HTTPS."""
    app = create_app(ConsoleConfig("127.0.0.1:1"), Auth.load(KEYS), gateway)
    for scheme, hsts in (("http", None), ("https", "max-age=31536000")):
        with TestClient(app, base_url=f"{scheme}://127.0.0.1:8080") as client:
            for host in ("localhost:8080", "127.0.0.1", "[::1]:8080", "[::1]"):
                page = client.get("/signin", headers={"host": host})
                assert page.status_code == 200, host
                expected = None if host.startswith("localhost") else hsts
                assert page.headers.get("strict-transport-security") == expected, host
            for host in ("rebound.example:8080", "localhost.:8080"):
                refused = client.get("/signin", headers={"host": host})
                assert refused.status_code == 400 and "set-cookie" not in refused.headers
                assert "strict-transport-security" not in refused.headers


def test_names_the_operator_adds_are_served_and_pinned(gateway):
    config = ConsoleConfig("127.0.0.1:1", hosts=("console.example", "*.agents.example"))
    app = create_app(config, Auth.load(KEYS), gateway)
    with TestClient(app, base_url="https://console.example") as client:
        for host in ("console.example", "eu.agents.example", "CONSOLE.example:8443"):
            page = client.get("/signin", headers={"host": host})
            assert page.status_code == 200, host
            assert page.headers["strict-transport-security"] == "max-age=31536000", host
        assert client.get("/signin", headers={"host": "127.0.0.1"}).status_code == 400


def test_no_hsts_for_a_name_whose_dashboard_link_is_plain_http(gateway):
    """HSTS holds for a name on every port: it would turn the operator page's link to an
    HTTP-only Ray dashboard on that name into a dead https:// one for a year."""
    config = ConsoleConfig("127.0.0.1:1", dashboard="http://console.example:8265",
                           hosts=("console.example", "desk.example"))
    app = create_app(config, Auth.load(KEYS), gateway)
    with TestClient(app, base_url="https://console.example") as client:
        assert "strict-transport-security" not in client.get("/signin").headers
        pinned = client.get("/signin", headers={"host": "desk.example"})
        assert pinned.headers["strict-transport-security"] == "max-age=31536000"


def test_a_live_page_ends_when_its_session_does(client):
    """Signing out (in another tab) ends the live pages of that session: they would go on
    showing customers' records with a key that no longer signs anything in."""
    token = sign_in(client)
    with client.stream("GET", "/customer/live?id=ana") as live:
        lines = live.iter_lines()
        assert next(line for line in lines if line.startswith("event:")) == "event: update"
        assert client.post("/signout", data={"csrf": token}).status_code == 200
        assert next(line for line in lines if line.startswith("event:")) == "event: gone"


def test_concurrent_live_pages_cannot_pass_the_cap(gateway, monkeypatch):
    """The cap was checked before the page's first await and counted once its stream began:
    100 requests at once all passed it, each holding watches on the gateway. Those past it
    are told so in an event the page's script reads (`paused`)."""
    monkeypatch.setattr("kairos.cluster.console.app.MAX_STREAMS_PER_SESSION", 4)
    app = create_app(ConsoleConfig("127.0.0.1:1"), Auth.load(KEYS), gateway)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        sign_in(client)
        cookie = f"kairos_console={client.cookies['kairos_console']}".encode()
    profile = gateway.profile

    async def slow_profile(*args, **kwargs):
        await asyncio.sleep(0.2)  # every request is past the check before any page is built
        return await profile(*args, **kwargs)

    gateway.profile = slow_profile

    async def live_page() -> tuple[str, asyncio.Task]:
        first = asyncio.get_running_loop().create_future()  # the first event's name
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": "/customer/live",
                 "raw_path": b"/customer/live", "query_string": b"id=ana", "root_path": "",
                 "headers": [(b"host", b"127.0.0.1"), (b"cookie", cookie)],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}

        async def receive():
            await asyncio.Event().wait()  # the browser stays

        async def send(message):
            if message["type"] == "http.response.start":
                assert message["status"] == 200
            elif message.get("body") and not first.done():
                first.set_result(message["body"].decode().split("\n")[0])

        served = asyncio.ensure_future(app(scope, receive, send))
        return await first, served

    async def main():
        pages = await asyncio.gather(*(live_page() for _ in range(30)))
        events = sorted(event for event, _ in pages)
        for _, served in pages:
            served.cancel()
        await asyncio.gather(*(served for _, served in pages), return_exceptions=True)
        return events

    expected = ["event: paused"] * 26 + ["event: update"] * 4
    assert asyncio.run(main()) == expected
    assert asyncio.run(main()) == expected  # the places were given back


CROSS_SITE = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate",
              "sec-fetch-dest": "document"}
RESPOND = {"customer_id": "ana", "decision_id": "d1", "action_id": "warranty",
           "outcome": "reject"}


def without_cookies(client: TestClient, method: str, url: str, **kwargs):
    """A request as a browser sends it when it leaves the console's cookies out."""
    kept = list(client.cookies.jar)
    client.cookies.clear()
    try:
        return client.request(method, url, follow_redirects=False, **kwargs)
    finally:
        client.cookies.clear()  # what the answer set was for that other browser
        for cookie in kept:
            client.cookies.jar.set_cookie(cookie)


def test_a_link_from_another_site_keeps_the_agent_signed_in(client):
    """A cross-site navigation comes without the Strict cookie. It started a session and set
    the cookie to it, signing the agent out in every tab; now it is asked for again from the
    console's own origin, which a browser sends with the cookie, and nothing is set."""
    sign_in(client)
    signed_in = client.cookies["kairos_console"]
    link = without_cookies(client, "GET", "/customer?id=ana&by=customer_id", headers=CROSS_SITE)
    assert link.status_code == 200 and "set-cookie" not in link.headers
    url = re.search(r'http-equiv="refresh" content="0;url=([^"]+)"', link.text).group(1)
    assert re.fullmatch(r"/customer\?id=ana&amp;by=customer_id&amp;asked=\d+", url)
    again = client.get(url.replace("&amp;", "&"), headers={"sec-fetch-site": "same-origin"})
    assert again.status_code == 200 and "Offer the warranty" in again.text
    assert client.cookies["kairos_console"] == signed_in
    # a visitor's cookie has a name of its own: it never replaces a signed-in one
    visit = without_cookies(client, "GET", "/signin")
    assert [c.split("=")[0] for c in visit.headers.get_list("set-cookie")] \
        == ["kairos_console_visitor"]
    # a cross-site POST is not a link to follow: refused for its missing token
    assert without_cookies(client, "POST", "/customer/respond", data=RESPOND,
                           headers=CROSS_SITE).status_code == 403


def test_cookie_less_requests_cost_nothing_and_push_out_no_pending_sign_in(client):
    """Each cookie-less request started a session in a pool of 10,000: any page could send
    enough to push out the session an agent's sign-in form belonged to. Now the form's token
    is signed, and a visitor is kept nowhere (test_session has the flood of 10,000)."""
    form = client.get("/signin")
    for _ in range(200):
        visit = without_cookies(client, "GET", "/customer?id=ana")
        assert "kairos_console=" not in visit.headers["set-cookie"]  # nothing kept for it
    done = client.post("/signin", data={"csrf": csrf_of(form.text), "key": AGENT})
    assert done.status_code == 200 and done.url.path == "/"


def test_an_outcome_is_sent_once(client, gateway):
    """A double click sent the outcome twice, and the gateway recorded it twice."""
    token = sign_in(client)
    # a link (from another site too) says nothing was recorded that this session did not send
    assert "Outcome recorded" not in client.get("/customer?id=ana&recorded=accept").text
    for _ in range(2):
        done = client.post("/customer/respond", data={**RESPOND, "csrf": token})
        assert done.status_code == 200 and "recorded=reject" in str(done.url)
    assert len(gateway.responses) == 1
    # the answered action's buttons are gone, for what was sent
    assert 'value="warranty"' not in done.text and "Outcome recorded: Reject" in done.text
    client.post("/customer/respond", data={**RESPOND, "outcome": "accept", "csrf": token})
    assert len(gateway.responses) == 1  # one answer to an action a decision showed


def test_an_outcome_unconfirmed_in_time_is_not_offered_for_a_blind_retry(client, gateway):
    token = sign_in(client)
    gateway.failure = GatewayError("down", "DEADLINE_EXCEEDED: late", "DEADLINE_EXCEEDED")
    late = client.post("/customer/respond", data={**RESPOND, "csrf": token})
    assert late.status_code == 504 and "may already be recorded" in late.text
    assert "history" in late.text and 'href="/customer?id=ana"' in late.text
    gateway.failure = None  # the agent checked the history: not there, so answers again
    assert client.post("/customer/respond", data={**RESPOND, "csrf": token}).status_code == 200
    assert len(gateway.responses) == 2
    gateway.failure = GatewayError("down", "UNAVAILABLE: refused", "UNAVAILABLE")
    other = {**RESPOND, "action_id": "survey", "csrf": token}
    assert client.post("/customer/respond", data=other).status_code == 503


def test_a_respond_out_of_the_gateways_bounds_is_refused_unsent(client, gateway):
    token = sign_in(client)
    for field, length in (("action_id", MAX_KEY_LENGTH + 1),
                          ("decision_id", MAX_DECISION_ID_LENGTH + 1), ("action_id", 0)):
        refused = client.post("/customer/respond",
                              data={**RESPOND, field: "x" * length, "csrf": token})
        assert refused.status_code == 400, field
    assert gateway.responses == []


def test_a_busy_gateway_says_try_again_shortly(client, gateway):
    """RESOURCE_EXHAUSTED (the gateway shedding load) showed as a failure (502)."""
    lost = grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(),
                                grpc.aio.Metadata(), "overloaded")
    assert GatewayError.of(lost).kind == "busy"
    sign_in(client)
    gateway.failure = GatewayError.of(lost)
    busy = client.get("/customer?id=ana")
    assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
    assert "try again in a few seconds" in busy.text


def test_the_cookie_lasts_as_long_as_the_agent_works(client, monkeypatch):
    """Set once, at sign-in, with a max-age of IDLE_S: a busy agent was signed out
    IDLE_S after signing in."""
    sign_in(client)
    assert "set-cookie" not in client.get("/").headers  # set a moment ago
    monkeypatch.setattr("kairos.cluster.console.session.REISSUE_S", 0)
    again = client.get("/").headers["set-cookie"]
    assert again.startswith("kairos_console=") and f"Max-Age={int(IDLE_S)}" in again


def test_japanese_pages_say_what_the_console_says_in_japanese(client, gateway):
    sign_in(client)
    ja = {"accept-language": "ja"}
    hint = client.get("/customer?id=" + "x" * 257, headers=ja)
    assert "(1〜256 文字)" in hint.text
    unknown = client.get("/customer?by=email&q=nobody", headers=ja)
    assert "該当する顧客がいません： メールアドレス nobody" in unknown.text
    assert '<code lang="en">NOT_FOUND: no customer</code>' in unknown.text


def test_controls_are_named_for_assistive_technology(client):
    sign_in(client)
    page = client.get("/customer?id=ana").text
    for outcome in ("Accept", "Reject", "Not now"):
        assert f'aria-label="{outcome}: warranty"' in page
    assert 'name="q" maxlength="256" required aria-label="Find a customer"' in page
    assert 'id="live-state" role="status"' in page
    assert 'href="/operator"' not in page  # the key has no status:read


def test_the_operator_link_shows_for_a_key_that_may_read_status(gateway):
    keys = KEYS.replace("watch]", "watch, status:read]")
    app = create_app(ConsoleConfig("127.0.0.1:1"), Auth.load(keys), gateway)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        sign_in(client)
        assert 'href="/operator"' in client.get("/").text
        assert 'aria-label="The catalog&#39;s YAML"' in client.get("/operator").text
