"""What every answer of the console carries, and how it treats a link from another site.

Every response gets SECURITY_HEADERS: a Content-Security-Policy that allows this origin's own
script and nothing inline, and Cross-Origin-Opener-Policy, so that a page of another site
that opened the console (a CRM's link in a new window) holds no reference to its window.
Over TLS, to the names the console serves, Strict-Transport-Security keeps browsers on HTTPS.

A link followed from another site arrives without the session's SameSite=Strict cookie: the
console answers it with a page that asks for the same URL again from its own origin
(`ask_again`), which the browser sends with the cookie. The URL asked for carries ASKED, the
time it was asked for, so that a browser which labels that request cross-site too gets the
sign-in page, not the same page again for ever; the page console.js then takes it out of the
address bar. An ASKED that is not fresh is a URL copied from an address bar into a CRM: it
is a link like any other. A sign-in sends the agent on to the page asked for (`next`), which
is one of the console's own (`local_path`).
"""
from __future__ import annotations

import time
from urllib.parse import parse_qsl, urlencode, urlsplit

from markupsafe import escape
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; "
                                 b"img-src 'self'; connect-src 'self'; form-action 'self'; "
                                 b"base-uri 'none'; frame-ancestors 'none'"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
# HTTPS for a year after each visit; not includeSubDomains: the console's name does not speak
# for other servers under it
HSTS = (b"strict-transport-security", b"max-age=31536000")
ASKED = "asked"  # the query parameter of a URL the console asked for again (`ask_again`)
# the console's refresh comes back at once; a URL older than this was copied, and its mark
# says nothing of the request that brings it now
ASKED_WITHIN_S = 30
MAX_NEXT_LENGTH = 4096  # a page to go back to after sign-in: a customer's URL, never longer


def secured(app: ASGIApp, dashboard: str, hosts: tuple[str, ...]) -> ASGIApp:
    """The app, with SECURITY_HEADERS on every response, and HSTS on those `pins` allows."""
    async def with_headers(scope, receive, send) -> None:
        headers = SECURITY_HEADERS + ([HSTS] if pins(scope, dashboard, hosts) else [])

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + headers
            await send(message)
        await app(scope, receive, send_with_headers if scope["type"] == "http" else send)
    return with_headers


def pins(scope, dashboard: str, hosts: tuple[str, ...]) -> bool:
    """Whether an answer carries HSTS: over TLS only (RFC 6797 7.2), to a name the console
    serves (a refused Host is not its to pin), and never where a browser would then keep other
    servers on HTTPS for a year, since HSTS holds for a name on every port: `localhost`, or
    the name of a dashboard linked over plain HTTP (browsers ignore HSTS from IP addresses)."""
    if scope.get("scheme") != "https":
        return False
    host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1").lower()
    name = (host if host.endswith("]") else host.rsplit(":", 1)[0]).rstrip(".")
    linked = urlsplit(dashboard)
    return name != "localhost" and served(name, hosts) and \
        not (linked.scheme == "http" and linked.hostname == name)


def served(name: str, hosts: tuple[str, ...]) -> bool:
    """`name` is one of `hosts`, or under one of their `*.domain`s."""
    return any(name == h or (h.startswith("*.") and name.endswith(h[1:])) for h in hosts)


def cross_site_navigation(request: Request) -> bool:
    """A page of another site followed a link here (Fetch Metadata): the browser left out
    the session's Strict cookie, whether or not it holds one. Not a URL the console asked
    for again itself just now: that one came back cross-site too, and asking once more would
    loop."""
    return request.method == "GET" and request.headers.get("sec-fetch-site") == "cross-site" \
        and request.headers.get("sec-fetch-mode") == "navigate" \
        and not asked_just_now(request)


def from_own_page(request: Request) -> bool:
    """Whether a request is, by the browser's Fetch Metadata, a script's on one of the
    console's own pages (a live page's EventSource): not a navigation (a link followed, a
    refresh, a frame), not an element's load, and from this origin, not another site's nor
    another port's on the same host (same-site, with the Strict cookies). A browser that sends
    no Fetch Metadata passes."""
    headers = request.headers
    return headers.get("sec-fetch-mode") != "navigate" \
        and headers.get("sec-fetch-dest", "empty") == "empty" \
        and headers.get("sec-fetch-site", "same-origin") == "same-origin"


def from_another_origin(request: Request) -> bool:
    """A page of another site, or of another port on the console's host (same-site: its
    requests carry the Strict cookies, and it can set them), started the request."""
    return request.headers.get("sec-fetch-site") in ("same-site", "cross-site")


def asked_just_now(request: Request) -> bool:
    """The URL is one `ask_again` made within ASKED_WITHIN_S. Not `asked=1` nor an old time:
    an agent who copied the address bar into a CRM before console.js took the mark out gets
    a link that a later click must ask for again like any other, or it signs them out. (A
    mark made up to look fresh gains nothing: it leads to the sign-in page, as a link to
    /signin does.)"""
    stamp = request.query_params.get(ASKED, "")
    return stamp.isascii() and stamp.isdigit() and len(stamp) <= 12 \
        and abs(time.time() - int(stamp)) <= ASKED_WITHIN_S


def unasked(request: Request) -> str:
    """The request's path and query, without ASKED."""
    query = urlencode([(name, value) for name, value in parse_qsl(
        request.url.query, keep_blank_values=True) if name != ASKED])
    return request.url.path + (f"?{query}" if query else "")


def local_path(value: object) -> str:
    """`value` if it is a path of the console's own to go on to after sign-in, else "": one
    "/" and no more, never `//host` or `/\\host` (which browsers read as `//host`) or a
    scheme, and no control character (browsers drop a tab or newline, leaving `//host`). A link
    that names another site's page as `next` must not make the console an open redirect."""
    if not isinstance(value, str) or not value.startswith("/") or len(value) > MAX_NEXT_LENGTH:
        return ""
    if value[1:2] == "/" or "\\" in value or any(c < " " or c == "\x7f" for c in value):
        return ""
    return value


def signin_url(request: Request) -> str:
    """Where a visitor is sent: /signin, naming the page they asked for (a GET's, but /)
    as `next`."""
    back = local_path(unasked(request)) if request.method == "GET" else ""
    return "/signin" if back in ("", "/") else "/signin?" + urlencode({"next": back})


def ask_again(request: Request) -> Response:
    """A page that asks for the same URL (marked ASKED with the time) from this origin, which
    a browser sends with the Strict cookie. Nothing is set or kept: the browser's own cookie
    decides what comes."""
    url = unasked(request)
    url = escape(url + ("&" if "?" in url else "?") + urlencode({ASKED: int(time.time())}))
    return Response(f'<!doctype html><meta http-equiv="refresh" content="0;url={url}">'
                    f'<a href="{url}">{url}</a>', media_type="text/html")


def plain(body: str, code: int) -> Response:
    """A plain-text answer (typed: a browser must not sniff an echoed id as HTML)."""
    return Response(body, code, media_type="text/plain")
