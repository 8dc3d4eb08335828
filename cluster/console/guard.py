"""What every route of the console passes first (`Guard`): its session found or a visitor's
made, a POST's body bounded by its length and its CSRF token checked, a live page's stream
kept to the console's own pages, and visitors who have not signed in sent to /signin."""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Protocol

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from kairos.cluster.console import web
from kairos.cluster.console.session import (COOKIE, CSRF_FIELD, VISITOR_COOKIE, Sessions,
                                            cookie_name)

# any form's but a draft catalog's: parsed before its CSRF token is checked (1 MiB of "&"
# cost 0.44 s of CPU)
FORM_BYTES = 16 << 10
BODY_S = 10.0  # for a form's body to come, once its head has (heads.HEAD_S)

Handler = Callable[[Request], Awaitable[Response]]


class Console(Protocol):
    """What a guard needs of the console (app.py's Console)."""
    sessions: Sessions

    def render(self, request: Request, name: str, code: int = 200, **context) -> Response: ...

    def redirect(self, request: Request, url: str) -> Response: ...


class Guard:
    """Wraps each route: finds or starts the session, bounds the body, checks a POST's CSRF
    token, and sends visitors who have not signed in to /signin."""

    def __init__(self, console: Console):
        self.console = console

    def open(self, handler: Handler, post: bool = False) -> Handler:
        return self(handler, post, need_key=False)

    def __call__(self, handler: Handler, post: bool = False, need_key: bool = True,
                 touch: bool = True, own_page: bool = False, body_bytes: int = FORM_BYTES
                 ) -> Handler:
        """`own_page`: for the console's own pages' scripts only (403); `body_bytes`: 413 past."""
        console = self.console

        async def guarded(request: Request) -> Response:
            if own_page and not web.from_own_page(request):
                return web.plain("for the console's own pages only", 403)
            https = request.url.scheme == "https"
            session = console.sessions.get(request.cookies.get(cookie_name(COOKIE, https)),
                                           touch=touch)
            if session is None and web.cross_site_navigation(request):
                return web.ask_again(request)
            request.state.session = session or console.sessions.visitor(
                request.cookies.get(cookie_name(VISITOR_COOKIE, https)))
            # another port's page on a loopback console is same-site: it can plant a visitor's
            # cookie with a token of its own (README), but its POST says where it comes from
            if post and web.from_another_origin(request):
                return _refused(console, request)
            # before any body is read: a draft catalog's 1 MiB is a signed-in agent's to send
            # (anyone's cost 0.66 s of CPU), and a search sent as the session ended goes on
            # to sign in rather than to a stale token's 403
            if need_key and not request.state.session.signed_in:
                return console.redirect(request, web.signin_url(request))
            if post:
                length = request.headers.get("content-length", "")  # h11 reads chunks first
                if "transfer-encoding" in request.headers or not length.isdigit() \
                        or int(length) > body_bytes:
                    return _closing(f"a form's body must have a length of at most "
                                    f"{body_bytes} bytes", 413)
                try:  # heads.py's deadline ends with the head: a body sent slowly holds on
                    async with asyncio.timeout(BODY_S):
                        form = await request.form()
                except TimeoutError:
                    return _closing(f"the form's body did not come within {BODY_S:g} s", 408)
                except ClientDisconnect:  # its sender left: no traceback in the log for it
                    return _closing("the form's body was cut off", 400)
                token = form.get(CSRF_FIELD)
                if not console.sessions.csrf_valid(request.state.session,
                                                   token if isinstance(token, str) else None):
                    return _refused(console, request)
            return await handler(request)
        return guarded


def _closing(body: str, code: int) -> Response:
    """A refusal of a body not read (whole): the connection closes after it rather than read
    and throw away the rest for another head's deadline (RFC 9110's advice for a 408)."""
    response = web.plain(body, code)
    response.headers["connection"] = "close"
    return response


def _refused(console: Console, request: Request) -> Response:
    return console.render(request, "error.html", 403, kind="csrf", detail="", subject="")
