"""The console's answers to a customer's actions and what its pages say of them, its session's
idle time, and what every response carries: through Starlette's TestClient against the
stand-in gateway of test_app."""
from __future__ import annotations

import asyncio
import re
import threading
import types

import pytest
from starlette.testclient import TestClient

from kairos.cluster.console.gateway_client import GatewayError
from kairos.cluster.console.session import IDLE_S
from kairos.v1 import decision_pb2 as pb
from tests.support.console import client_fixture
from tests.unit.console.test_app import AGENT, CROSS_SITE, RESPOND, StandIn, csrf_of

NOTICE = 'class="notice"'


@pytest.fixture
def gateway() -> StandIn:
    return StandIn()


client = client_fixture(signed_in=False, raise_server_exceptions=False)  # tests take the token


def sign_in(client: TestClient) -> str:
    form = client.get("/signin")
    done = client.post("/signin", data={"csrf": csrf_of(form.text), "key": AGENT})
    assert done.status_code == 200
    return csrf_of(done.text)


def test_the_recorded_notice_is_for_the_customer_answered_and_shown_once(client):
    """The notice showed whenever the session had ever sent that outcome, for anyone: a link
    to bob's page with `recorded=accept` said "Outcome recorded: Accept" once the agent had
    accepted anything for ana."""
    token = sign_in(client)
    done = client.post("/customer/respond", data={**RESPOND, "outcome": "accept",
                                                  "csrf": token})
    assert done.url.query == b"id=ana&recorded=accept"
    assert f'{NOTICE} role="status">Outcome recorded: Accept' in done.text
    assert NOTICE not in client.get("/customer?id=bob&recorded=accept").text
    assert NOTICE not in client.get("/customer?id=ana&recorded=accept").text  # once


def test_the_recorded_notice_is_taken_by_its_page_even_when_that_page_fails(client, gateway):
    """The notice was taken only once the page had been read: after a gateway busy or down
    at that moment, it lingered, and the next visit to the customer said "Outcome recorded"
    of an answer long past."""
    token = sign_in(client)
    done = client.post("/customer/respond", data={**RESPOND, "csrf": token},
                       follow_redirects=False)
    gateway.failure = GatewayError("busy", "RESOURCE_EXHAUSTED: shedding load")
    assert client.get(done.headers["location"]).status_code == 503
    gateway.failure = None
    later = client.get(done.headers["location"])
    assert later.status_code == 200 and NOTICE not in later.text


def test_an_action_answered_earlier_says_so_and_keeps_the_first_answer(client, gateway):
    """The idempotency key names the decision and the action, so the gateway keeps the first
    answer (LEARNED_FROM_DUPLICATE) whatever the next one says: after a Reject whose reply
    was lost and an Accept, the page said "Outcome recorded: Accept" while the history held
    Reject."""
    token = sign_in(client)
    gateway.learned_from = pb.LEARNED_FROM_DUPLICATE
    done = client.post("/customer/respond", data={**RESPOND, "outcome": "accept",
                                                  "csrf": token})
    assert done.status_code == 200 and "Outcome recorded" not in done.text
    assert "was recorded earlier, and it stands" in done.text
    assert 'value="accept"' not in done.text  # answered all the same: no buttons
    again = client.post("/customer/respond", data={**RESPOND, "outcome": "reject",
                                                   "csrf": token},
                        headers={"accept-language": "ja"})
    assert len(gateway.responses) == 1 and "以前に記録済み" in again.text


def test_an_answer_that_failed_otherwise_can_be_sent_again(client, gateway):
    """Only a GatewayError took the "being sent" mark off: after any other failure (or a
    cancelled request) the action could never be answered in that session."""
    token = sign_in(client)
    respond = gateway.respond

    async def broken(*args):
        raise RuntimeError("a bug")

    gateway.respond = broken
    assert client.post("/customer/respond", data={**RESPOND, "csrf": token}).status_code \
        == 500
    gateway.respond = respond
    done = client.post("/customer/respond", data={**RESPOND, "csrf": token})
    assert "Outcome recorded: Reject" in done.text and len(gateway.responses) == 1


def test_an_answer_on_its_way_shows_as_being_sent(client, gateway):
    """While an answer was on its way its action showed its buttons again (the mark was
    None, which the page took for "not answered"): a second tab, or the form sent again,
    landed on buttons that did nothing."""
    token = sign_in(client)
    release, arrived = threading.Event(), threading.Event()
    respond = gateway.respond

    async def slow(*args):
        arrived.set()
        while not release.is_set():
            await asyncio.sleep(0.01)
        return await respond(*args)

    gateway.respond = slow
    first = threading.Thread(target=client.post, args=("/customer/respond",),
                             kwargs={"data": {**RESPOND, "csrf": token}})
    first.start()
    try:
        assert arrived.wait(5)
        for page in (client.get("/customer?id=ana"),
                     client.post("/customer/respond", data={**RESPOND, "csrf": token})):
            assert "Sending the outcome" in page.text and 'value="reject"' not in page.text
    finally:
        release.set()
        first.join(5)
    assert len(gateway.responses) == 1


def test_live_pages_asked_for_again_do_not_keep_the_session_alive(client, monkeypatch):
    """A paused tab asks for its stream every 10 s, and a tab shown again asks for it too:
    each counted as the agent's activity, so a session with a tab open never idled out."""
    clock = types.SimpleNamespace(time=lambda: now[0], monotonic=lambda: now[0])
    now = [1_000_000.0]
    monkeypatch.setattr("kairos.cluster.console.session.time", clock)
    sign_in(client)
    now[0] += IDLE_S - 60
    with client.stream("GET", "/customer/live?id=ana") as live:
        assert next(line for line in live.iter_lines() if line.startswith("event:")) \
            == "event: update"
    now[0] += 120  # IDLE_S + 60 after the agent's last page
    gone = client.get("/", follow_redirects=False)
    assert gone.status_code == 303 and gone.headers["location"] == "/signin"


def test_a_malformed_sign_in_token_is_refused(client):
    client.get("/signin")
    for token in ("\u00b2.abc", "1" * 5000 + ".x"):
        assert client.post("/signin", data={"csrf": token, "key": AGENT}).status_code == 403


def test_no_other_sites_page_keeps_a_hold_on_the_consoles_window(client):
    assert client.get("/signin").headers["cross-origin-opener-policy"] == "same-origin"


def test_a_url_asked_for_again_is_not_asked_for_once_more(client):
    """A browser that labelled the console's own refresh cross-site again got the same page
    again, for ever: the URL it asks for is marked, and comes to the sign-in page instead,
    which goes on to that page once the agent has signed in."""
    first = client.get("/customer?id=ana", headers=CROSS_SITE, follow_redirects=False)
    url = re.search(r'content="0;url=([^"]+)"', first.text).group(1).replace("&amp;", "&")
    assert re.fullmatch(r"/customer\?id=ana&asked=\d+", url)
    again = client.get(url, headers=CROSS_SITE, follow_redirects=False)
    assert again.status_code == 303 \
        and again.headers["location"] == "/signin?next=%2Fcustomer%3Fid%3Dana"


def test_a_paused_live_page_is_told_why(client, gateway, monkeypatch):
    """Every pause said "too many live pages open", which closing this browser's tabs does
    not help when the key's or the console's cap is full; and a busy gateway at connect time
    ended the page's updates (503: "stopped, reload") where a moment later would do."""
    sign_in(client)

    def first_event() -> tuple[str, str]:
        with client.stream("GET", "/customer/live?id=ana") as live:
            lines = [line for line in live.iter_lines() if line.startswith(("event:", "data:"))]
        return lines[0], lines[1]

    for cap, why in (("MAX_STREAMS_PER_SESSION", "session"), ("MAX_STREAMS_PER_KEY", "key"),
                     ("MAX_STREAMS", "console")):
        with monkeypatch.context() as patched:
            patched.setattr(f"kairos.cluster.console.app.{cap}", 0)
            assert first_event() == ("event: paused", f"data: {why}")
    gateway.failure = GatewayError("busy", "RESOURCE_EXHAUSTED: shedding load")
    assert first_event() == ("event: paused", "data: busy")
