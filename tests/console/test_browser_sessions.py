"""The console in Chromium where only a browser shows the behaviour: links from another site,
many customer tabs at once, tabs hidden and shown, double clicks. The console runs in this
process (uvicorn on 127.0.0.1, a free port) against the unit tests' stand-in gateway, so this
module needs no `kairos up`; the "other site" is a page served on `localhost`, another site
to the browser than 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import functools
import http.server
import threading
import time
from typing import Iterator

import pytest
import uvicorn

from kairos.cluster.console.app import MAX_STREAMS_PER_SESSION, ConsoleConfig, create_app
from kairos.cluster.gateway.auth import Auth
from kairos.cluster.storage.redis_server import free_port
from tests.unit.console.test_app import AGENT, KEYS, StandIn


TABS = 6  # a browser's connections to one host over HTTP/1.1
# a page that loads at all loads within this, on a busy 2-core CI machine too (a page held up
# behind the streams never loaded)
LOADS_WITHIN_MS = 10_000


@pytest.fixture(scope="module")
def gateway() -> StandIn:
    return StandIn()


@pytest.fixture(scope="module")
def console(gateway) -> Iterator[str]:
    port = free_port()
    app = create_app(ConsoleConfig("127.0.0.1:1"), Auth.load(KEYS), gateway)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def other_site(console, tmp_path_factory) -> Iterator[str]:
    """A CRM's page on another site, linking to a customer in the console."""
    site = tmp_path_factory.mktemp("crm")
    # and a URL an agent copied from the console's address bar, mark and all (web.ASKED)
    (site / "crm.html").write_text(f'<a id="go" href="{console}/customer?id=ana">ana</a>'
                                   f'<a id="copied" href="{console}/customer?id=ana&asked=1">'
                                   f'ana</a>')
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://localhost:{server.server_address[1]}/crm.html"
    server.shutdown()


@pytest.fixture
def context(browser, console):
    """A browser context signed in to the console."""
    context = browser.new_context()
    context.set_default_timeout(5_000)
    page = context.new_page()
    page.goto(console + "/signin")
    page.fill("input[name=key]", AGENT)
    page.click("button[type=submit]")
    page.wait_for_url(console + "/")
    yield context
    context.close()


def session_cookie(context) -> str:
    return next(c["value"] for c in context.cookies() if c["name"] == "kairos_console")


def live_tab(context, console: str, who: str):
    tab = context.new_page()
    tab.goto(f"{console}/customer?id={who}")
    tab.wait_for_selector("#live[data-updates], #live-state.lost", state="attached")
    return tab


def hide(tab, hidden: bool) -> None:
    """As when the agent switches tabs (headless Chromium shows every tab)."""
    tab.evaluate("""hidden => {
        Object.defineProperty(document, "hidden", {value: hidden, configurable: true});
        document.dispatchEvent(new Event("visibilitychange"));
    }""", hidden)


def test_a_link_from_another_site_opens_the_customer_signed_in(context, console, other_site):
    """Chromium leaves the Strict cookie out of a cross-site navigation: the console made a
    new session of it and set its cookie, signing the agent out in every tab."""
    signed_in = session_cookie(context)
    page = context.new_page()
    page.goto(other_site)
    page.click("#go")
    page.wait_for_selector("h1.customer")  # after the page that asks for the URL again
    assert page.locator("h1.customer .id").inner_text() == "ana"
    assert session_cookie(context) == signed_in


def test_a_copied_url_with_the_mark_opens_the_customer_signed_in(context, console,
                                                                  other_site):
    """The address bar kept `asked=1` after a link from another site, and a CRM's link to
    that URL came to the sign-in page (the mark was read as the console's own refresh), and
    the sign-in then went to /. The mark leaves the address bar, and a copy of it is a link
    like any other."""
    signed_in = session_cookie(context)
    page = context.new_page()
    page.goto(other_site)
    page.click("#copied")
    page.wait_for_selector("h1.customer")
    assert page.locator("h1.customer .id").inner_text() == "ana"
    page.wait_for_url(console + "/customer?id=ana")  # console.js took the mark out
    assert session_cookie(context) == signed_in


def test_many_customer_tabs_leave_the_console_usable(context, console):
    """Each customer page held a stream, and six of them held every connection Chromium
    opens to the console: the next page never loaded. Past the session's cap a page's live
    part pauses, and says so."""
    tabs = [live_tab(context, console, f"c{i}") for i in range(TABS)]
    started = time.monotonic()
    page = context.new_page()
    page.goto(console + "/", timeout=LOADS_WITHIN_MS)
    assert time.monotonic() - started < LOADS_WITHIN_MS / 1000
    paused = [tab for tab in tabs if "too many live pages" in tab.inner_text("#live-state")]
    assert len(paused) == TABS - MAX_STREAMS_PER_SESSION


def test_a_hidden_tab_lets_go_of_its_stream_and_catches_up_when_shown(context, console):
    """Hidden tabs held their streams: with them and two more, the next page never loaded."""
    hidden = [live_tab(context, console, f"c{i}") for i in range(MAX_STREAMS_PER_SESSION)]
    for tab in hidden:
        hide(tab, True)
    shown = [live_tab(context, console, f"d{i}") for i in range(TABS - len(hidden))]
    assert all(tab.locator("#live[data-updates]").count() == 1 for tab in shown)
    context.new_page().goto(console + "/", timeout=LOADS_WITHIN_MS)
    back = hidden[0]
    updates = back.get_attribute("#live", "data-updates")
    hide(back, False)
    back.wait_for_selector(f'#live:not([data-updates="{updates}"])', state="attached")
    assert "lost" not in (back.get_attribute("#live-state", "class") or "")


def test_a_second_click_sends_no_second_outcome(context, console, gateway, monkeypatch):
    """A second click while the first outcome is on its way sent the form again (and the
    gateway recorded the outcome twice): the page sends it once, and the next page shows the
    action answered, without its buttons."""
    respond = gateway.respond

    async def slow(*args):
        await asyncio.sleep(0.5)  # the agent clicks again while this one is on its way
        await respond(*args)

    monkeypatch.setattr(gateway, "respond", slow)
    page = live_tab(context, console, "twice")
    posts = []
    page.on("request", lambda request: posts.append(request.url)
            if request.method == "POST" else None)
    # in the page: Playwright's own second click would wait on the navigation the first began
    page.eval_on_selector("article[data-action=warranty] button.accept",
                          "button => { button.click(); setTimeout(() => button.click(), 100); }")
    page.wait_for_selector("p.notice")
    assert posts == [console + "/customer/respond"]
    assert page.locator("article[data-action=warranty] button").count() == 0
    assert "Outcome recorded: Accept" in page.inner_text("article[data-action=warranty]")


def test_a_reconnected_page_that_has_not_changed_is_not_written_again(context, console):
    """Every event rewrote the live-state line and the live part, both live regions: a
    screen reader read the page out again on each reconnection, and on every paused retry;
    and the first event rewrote the live part the server had just rendered, on every load."""
    tab = context.new_page()
    # counting from before console.js starts the page's stream: its first event is counted.
    # The live part's own children: times localized in place at load are not a rewrite
    tab.add_init_script("""document.addEventListener("DOMContentLoaded", () => {
        window.writes = 0;
        const count = () => { window.writes += 1; };
        new MutationObserver(count).observe(document.getElementById("live"),
                                            {childList: true});
        new MutationObserver(count).observe(document.getElementById("live-state"),
                                            {childList: true, characterData: true,
                                             subtree: true});
    })""")
    tab.goto(f"{console}/customer?id=steady")
    tab.wait_for_selector("#live[data-updates]", state="attached")
    assert tab.evaluate("window.writes") == 0
    updates = tab.get_attribute("#live", "data-updates")
    hide(tab, True)
    hide(tab, False)  # a new stream, whose first event is the page as it is
    tab.wait_for_selector(f'#live:not([data-updates="{updates}"])', state="attached")
    assert tab.evaluate("window.writes") == 0
