"""What every answer of the console carries, and how it treats a link from another site.

Every response gets SECURITY_HEADERS: a Content-Security-Policy that allows this origin's own
script and nothing inline, and Cross-Origin-Opener-Policy, so that a page of another site
that opened the console (a CRM's link in a new window) holds no reference to its window.
Over TLS, to the names the console serves, Strict-Transport-Security keeps browsers on HTTPS.

A link followed from another site arrives without the session's SameSite=Strict cookie: the
console answers it with a page that asks for the same URL again from its own origin
(`ask_again`), which the browser sends with the cookie. The URL asked for carries ASKED, so
that a browser which labels that request cross-site too gets the sign-in page, not the same
page again for ever.
"""
from __future__ import annotations

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
    for again itself: that one came back cross-site too, and asking once more would loop."""
    return request.method == "GET" and request.headers.get("sec-fetch-site") == "cross-site" \
        and request.headers.get("sec-fetch-mode") == "navigate" \
        and ASKED not in request.query_params


def ask_again(request: Request) -> Response:
    """A page that asks for the same URL (marked ASKED) from this origin, which a browser
    sends with the Strict cookie. Nothing is set or kept: the browser's own cookie decides
    what comes."""
    query = urlencode(parse_qsl(request.url.query, keep_blank_values=True) + [(ASKED, "1")])
    url = escape(f"{request.url.path}?{query}")
    return Response(f'<!doctype html><meta http-equiv="refresh" content="0;url={url}">'
                    f'<a href="{url}">{url}</a>', media_type="text/html")
