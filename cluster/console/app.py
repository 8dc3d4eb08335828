"""The agent's console: a Starlette application of server-rendered pages.

    GET  /signin, POST /signin, POST /signout     an API key becomes a session (session.py)
    GET  /                                         find a customer by id or alias
    POST /customer/find                            the search form: by=email&q=... in its body
                                                   (never a URL), answered 303 to ?id=...
    GET  /customer?id=... | ?by=email&q=...        the customer page (an alias, as a CRM's
                                                   link may name one, redirects to ?id=...)
    GET  /customer/live?id=...                     server-sent events: the page's live part,
                                                   rendered again whenever a watch pushes
    POST /customer/respond                         Accept, Reject, Not now (Respond)
    GET  /operator, POST /operator/validate        cluster status and catalog validation

A link from another site (a CRM's deep link) arrives without the session's SameSite=Strict
cookie: the console answers it with a page that asks again from its own origin, so the
browser sends the cookie and the agent lands where the link pointed, still signed in (web.py).

Every page is rendered by Jinja with autoescape on, and served with a Content-Security-Policy
that allows this origin's own script and nothing inline, so a profile value holding markup is
shown as text and could not run even if it were not. Every POST carries its session's CSRF
token (403 without it), and request bodies are bounded before they are read (guard.py).
Failed sign-ins are limited by address (session.SignInLimit): past the limit a sign-in is
refused with 429 and Retry-After, its key unread. A request whose Host is not one the console
serves is refused (400): a page whose own name an attacker rebinds to the console's address
gets nothing. Over TLS, Strict-Transport-Security keeps browsers on HTTPS (TLS the console's
own, or a proxy's that says so: server.Listen.proxy).
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import math
import weakref
from dataclasses import dataclass
from typing import AsyncIterator
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp

from kairos.cluster.console import i18n, live, views, web
from kairos.cluster.console.gateway_client import OUTCOMES, GatewayClient, GatewayError, Lookup
from kairos.cluster.console.guard import Guard
from kairos.cluster.console.session import (ANSWERED_EARLIER, COOKIE, CSRF_FIELD, MAX_ANSWERED,
                                            VISITOR_COOKIE, Sessions, SignInLimit,
                                            SignInRefused, cookie_name, cookie_options)
from kairos.cluster.gateway.auth import Auth
from kairos.cluster.shard.outcomes import PREVIEWED
from kairos.core.request import MAX_DECISION_ID_LENGTH
from kairos.core.request import MAX_KEY_LENGTH as MAX_ACTION_ID_LENGTH
from kairos.v1 import admin_pb2
from kairos.v1 import decision_pb2 as pb

SEARCH_KINDS = ("customer_id", "cookie", "device", "email")
MAX_ID_LENGTH = 256  # the gateway's cap on customer ids and alias values
MAX_BODY_BYTES = 1 << 20  # a draft catalog's form: the gateway's message limit
# each live page holds a watch per channel on the gateway, and a connection of the browser's
# six to one host (HTTP/1.1): past this many a session's live pages pause, so that its other
# tabs can still load (a hidden tab closes its stream: console.js)
MAX_STREAMS_PER_SESSION = 4
MAX_STREAMS_PER_KEY = 64  # an agent's key signs in as many sessions as it likes
# live pages of all sessions: the gateway, to which the console is one host, also holds them
# to WATCH_STREAMS_PER_HOST watches, a page's one per channel (some 416 pages of the default
# catalog's 6), and a page it refuses pauses naming that share (`host`)
MAX_STREAMS = 1_000
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # as Host headers carry them
# a catalog validated: (its summary, None) or (None, the gateway's validation message)
Checked = tuple[admin_pb2.CatalogInfo | None, str | None]
STATUS_OF = {"down": 503, "busy": 503, "not_found": 404, "denied": 403, "invalid": 400,
             "failed": 502, "too_many_signins": 429, "maybe_recorded": 504}
BUSY_RETRY_S = 5  # Retry-After for a gateway that sheds load: it does so for a moment


@dataclass(frozen=True)
class ConsoleConfig:
    target: str  # the gateway, host:port
    channel: str = "call_center"  # the agent's channel (its first placement's decision)
    dashboard: str = ""  # the Ray dashboard's URL for the operator page ("": no link)
    hosts: tuple[str, ...] = LOOPBACK_HOSTS  # the Host names it answers (server.served_hosts)


class Console:
    """The routes, with what they share: the gateway client, the sessions, the templates."""

    def __init__(self, config: ConsoleConfig, auth: Auth, gateway: GatewayClient | None = None):
        self.config = config
        self.sessions = Sessions(auth, config.channel)
        self.signin_limit = SignInLimit()
        self.streams: collections.Counter[str] = collections.Counter()  # live pages by session
        self.key_streams: collections.Counter[str] = collections.Counter()  # and by agent key
        # the catalog's channels as each key sees them, from its last read of a record: what a
        # live page's URL may name to watch (one entry per key of the gateway's)
        self.channels_seen: dict[str, frozenset[str]] = {}
        self.gateway = gateway  # made at start-up: a gRPC aio channel belongs to its loop
        # the running catalog's summary by its text's hash: one entry, as one catalog runs
        self.running: tuple[bytes, Checked] | None = None
        env = jinja2.Environment(loader=jinja2.PackageLoader("kairos.cluster.console"),
                                 autoescape=True, undefined=jinja2.StrictUndefined)
        env.globals["term"] = i18n.term  # for the live part too, rendered outside render()
        self.templates = Jinja2Templates(env=env)

    # -- pages -------------------------------------------------------------------------------

    def render(self, request: Request, name: str, code: int = 200, **context) -> Response:
        lang = i18n.language(request.headers.get("accept-language"))
        session = request.state.session
        response = self.templates.TemplateResponse(
            request, name, {"t": i18n.labels(lang), "lang": lang, "session": session,
                            "csrf_field": CSRF_FIELD, "config": self.config,
                            "kinds": SEARCH_KINDS, **context},
            status_code=code)
        return self.keep(request, response)

    def keep(self, request: Request, response: Response) -> Response:
        """The response, setting the session's cookie when it is due (session.cookie_due),
        or a visitor's when the browser has not got it."""
        session, https = request.state.session, request.url.scheme == "https"
        if session.signed_in:
            if self.sessions.cookie_due(session):
                response.set_cookie(cookie_name(COOKIE, https), session.id,
                                    **cookie_options(https))
        elif request.cookies.get(cookie_name(VISITOR_COOKIE, https)) != session.id:
            response.set_cookie(cookie_name(VISITOR_COOKIE, https), session.id,
                                **cookie_options(https, None))
        return response

    def failure(self, request: Request, error: GatewayError, subject: str = "") -> Response:
        response = self.render(request, "error.html", STATUS_OF.get(error.kind, 502),
                               kind=error.kind, detail=error.detail, subject=subject)
        if error.kind == "busy":
            response.headers["retry-after"] = str(BUSY_RETRY_S)
        return response

    def redirect(self, request: Request, url: str) -> Response:
        return self.keep(request, RedirectResponse(url, status_code=303))

    # -- sign in -------------------------------------------------------------------------------

    async def signin_page(self, request: Request) -> Response:
        # the page the agent came for (web.signin_url), which the form sends on
        return self.render(request, "signin.html",
                           next=web.local_path(request.query_params.get("next")))

    async def signin(self, request: Request) -> Response:
        form = await request.form()
        # the socket's peer, or behind `kairos console --proxy` the client that proxy names
        # (uvicorn believes no other peer's X-Forwarded-For, which a client could forge)
        address = request.client.host if request.client else ""
        # no await from here to `failed`: concurrent guesses cannot all pass one check
        wait_s = self.signin_limit.wait_s(address)
        if wait_s:
            response = self.render(request, "error.html", STATUS_OF["too_many_signins"],
                                   kind="too_many_signins", detail="", subject="")
            response.headers["retry-after"] = str(math.ceil(wait_s))
            return response
        try:
            session = self.sessions.sign_in(request.state.session, _field(form, "key"))
        except SignInRefused as exc:
            self.signin_limit.failed(address)
            return self.render(request, "signin.html", 401, refused=str(exc),
                               next=web.local_path(form.get("next")))
        request.state.session = session
        response = self.redirect(request, web.local_path(form.get("next")) or "/")
        _forget_cookie(request, response, VISITOR_COOKIE)
        return response

    async def signout(self, request: Request) -> Response:
        self.sessions.end(request.state.session)
        response = RedirectResponse("/signin", status_code=303)
        _forget_cookie(request, response, COOKIE)
        return response

    # -- customers -----------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return self.render(request, "search.html")

    async def customer(self, request: Request) -> Response:
        """The page of the customer `id` names. A link that names them by an alias (`by` and
        `q`, as a CRM's may) is sent on to the page by id, as the search form is (`find`)."""
        params = request.query_params
        by = params.get("by", "customer_id")
        wanted = (params.get("id") or params.get("q", "")).strip()
        if by != "customer_id" or not _searchable(by, wanted):
            return await self.found(request, by, wanted)
        # a link from elsewhere reaches this page too, `recorded` and all: the notice is this
        # session's answer for this customer, once, on the page its answer redirected to; once
        # even if that page fails, or a later visit would show it, stale
        recorded = params.get("recorded", "")
        notice = request.state.session.notices.pop(wanted, "")
        try:
            page = await self.customer_page(request.state.session.key, wanted)
        except GatewayError as exc:
            return self.failure(request, exc, f"{_labels(request)[by]} {wanted}")
        return self.render(request, "customer.html", page=page,
                           recorded=notice if notice == recorded else "")

    async def find(self, request: Request) -> Response:
        """The search form, posted: what the agent typed (an e-mail address, a device) goes in
        the body, never in a URL, which browser history and a proxy's access log keep."""
        form = await request.form()
        return await self.found(request, _field(form, "by"), _field(form, "q").strip())

    async def found(self, request: Request, by: str, wanted: str) -> Response:
        """303 to the page of the customer `wanted` names as `by` (an alias: the customer the
        gateway links it to; one page per customer, whatever named it), else the search page
        saying what is wrong with it, or the gateway's failure."""
        t = _labels(request)
        if not _searchable(by, wanted):
            return self.render(request, "search.html", 400,
                               problem=t["id_length"].format(MAX_ID_LENGTH))
        customer_id = wanted
        if by != "customer_id":
            try:
                customer_id = (await self.gateway.profile(request.state.session.key,
                                                          Lookup(wanted, by))).customer_id
            except GatewayError as exc:
                return self.failure(request, exc, f"{t[by]} {wanted}")
        return self.redirect(request, "/customer?" + urlencode({"id": customer_id}))

    async def customer_page(self, key: str, customer_id: str, live: bool = False
                            ) -> views.CustomerPage:
        """The customer's page; `live`: as its live part reads it, which shows the agent
        channel's decision that the agent answers, logged as evidence (the page's own read,
        which the live part replaces at once, decides previews only)."""
        try:
            profile = await self.gateway.profile(
                key, Lookup(customer_id), explain=True,
                shown_channel=self.config.channel if live else "")
        except GatewayError as exc:
            if exc.kind != "down":
                raise
            return await self.fallback_page(key, customer_id, exc)
        self.channels_seen[key] = frozenset(profile.current)
        if self.config.channel not in profile.current:
            raise GatewayError("invalid", f"no decision on the channel {self.config.channel!r}: "
                                          f"the catalog has none such, or the key is bound to "
                                          f"another channel")
        return views.customer_page(profile, self.config.channel)

    async def fallback_page(self, key: str, customer_id: str, unread: GatewayError
                            ) -> views.CustomerPage:
        """When the customer's record cannot be read in time, what the gateway answers the
        agent's channel: its fallback decision (with a key that may decide), shown as such;
        else the record's failure."""
        try:
            decision = await self.gateway.decide(key, customer_id, self.config.channel)
        except GatewayError:
            raise unread from None
        return views.fallback_page(customer_id, self.config.channel, decision)

    async def live(self, request: Request) -> Response:
        """Server-sent events: `update` with the live part's HTML, first as read once the
        watches are in place, then whenever a push changes a decision; a comment as
        heartbeat; `paused` while the gateway is busy or not answering (the page asks again),
        `gone` when the watch ends otherwise. `channel` (repeated): the channels the page
        shows, watched from the start (views.CustomerPage.live_source; live.watched)."""
        session = request.state.session
        key, customer_id = session.key, request.query_params.get("id", "")
        named = live.watched(request.query_params.getlist("channel"),
                             self.channels_seen.get(key), MAX_ID_LENGTH)
        if not customer_id or len(customer_id) > MAX_ID_LENGTH:
            return web.plain(f"id: 1..{MAX_ID_LENGTH} characters", 400)
        if named is None:
            return web.plain(f"channel: at most {live.MAX_CHANNELS}, of 1..{MAX_ID_LENGTH} "
                         f"characters", 400)
        # which cap is full: the page says what closing tabs would do (the others are the
        # agent's other browsers, or the whole console's)
        full = next((cap for cap, over in (
            ("session", self.streams[session.id] >= MAX_STREAMS_PER_SESSION),
            ("key", self.key_streams[key] >= MAX_STREAMS_PER_KEY),
            ("console", sum(self.streams.values()) >= MAX_STREAMS)) if over), None)
        if full:
            return live.paused(full)
        slot = live.LivePage((self.streams, session.id), (self.key_streams, key))  # before awaits
        try:
            changes, page = await live.followed(
                lambda channels: self.gateway.changes(key, customer_id, channels),
                lambda shown: self.customer_page(key, customer_id, live=shown), named)
        except BaseException as exc:
            slot.release()
            if isinstance(exc, GatewayError):
                why = live.paused_by(exc)
                return live.paused(why) if why else \
                    web.plain(exc.detail, STATUS_OF.get(exc.kind, 502))
            raise
        lang = i18n.language(request.headers.get("accept-language"))
        template = self.templates.get_template("_live.html")

        def update(shown: views.CustomerPage) -> str:
            return live.event("update", template.render(
                t=i18n.labels(lang), page=shown, session=session, csrf_field=CSRF_FIELD,
                recorded=""))

        async def stream() -> AsyncIterator[str]:
            try:
                async with contextlib.aclosing(changes):
                    yield update(page)
                    async for changed in changes:
                        if self.sessions.get(session.id, touch=False) is not session:
                            # signed out, or idle past the bound: the page is no activity
                            yield live.event("gone", "signed out")
                            return
                        if not changed:
                            yield ": heartbeat\n\n"
                            continue
                        yield update(await self.customer_page(key, page.customer_id,
                                                              live=True))
            except GatewayError as exc:
                why = live.paused_by(exc)
                yield live.event("paused", why) if why else \
                    live.event("gone", exc.detail or exc.kind)
            finally:
                slot.release()

        body = stream()
        # a stream never started: the client went away (asyncio closes `changes`, its
        # watches, as it finalizes the generator)
        weakref.finalize(body, slot.release)
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})

    async def respond(self, request: Request) -> Response:
        """Sends an outcome once: a repeat of one the session sent (a double click, a form
        sent again) is not sent again (and one sent again after a timeout carries the same
        idempotency key, so the gateway records it once)."""
        form = await request.form()
        session = request.state.session
        customer_id, decision_id, action_id, outcome = (_field(form, name) for name in (
            "customer_id", "decision_id", "action_id", "outcome"))
        # an agent answers a decision the page showed, within the gateway's own bounds
        if outcome not in OUTCOMES or not 0 < len(customer_id) <= MAX_ID_LENGTH \
                or not 0 < len(decision_id) <= MAX_DECISION_ID_LENGTH \
                or not 0 < len(action_id) <= MAX_ACTION_ID_LENGTH:
            return self.render(request, "error.html", 400, kind="bad_request", detail="",
                               subject="")
        answered = (decision_id, action_id)
        if answered in session.answered:  # sent, or being sent (then the page says so)
            recorded = session.answered[answered] or ""
        else:
            session.answered[answered] = None  # before the await: a second click finds it
            while len(session.answered) > MAX_ANSWERED:
                session.answered.popitem(last=False)
            try:
                learned = await self._answer(session.key, customer_id, decision_id, action_id,
                                             outcome)
            except BaseException as exc:
                # unconfirmed, however (a failure, a bug, the request cancelled): the action
                # is not left "being sent" for good, so the agent may answer it again
                session.answered.pop(answered, None)
                if not isinstance(exc, GatewayError):
                    raise
                if exc.code == "DEADLINE_EXCEEDED":  # sent, maybe recorded, answer lost
                    return self.render(request, "error.html", STATUS_OF["maybe_recorded"],
                                       kind="maybe_recorded", detail="", subject=customer_id)
                return self.failure(request, exc, customer_id)
            # the action was answered before (a reply lost to a timeout, another session):
            # the gateway kept that answer, whatever this one said, and the history shows it
            recorded = ANSWERED_EARLIER if learned == pb.LEARNED_FROM_DUPLICATE else outcome
            session.answered[answered] = recorded
        if recorded:
            session.notices[customer_id] = recorded
            while len(session.notices) > MAX_ANSWERED:
                session.notices.popitem(last=False)
        return self.redirect(request, "/customer?" + urlencode(
            {"id": customer_id, **({"recorded": recorded} if recorded else {})}))

    async def _answer(self, key: str, customer_id: str, decision_id: str, action_id: str,
                      outcome: str) -> int:
        """Respond to the decision the page showed. The page's own read is a preview, which
        takes no outcome: answered before the live part brought the logged one (paused at a
        cap, no script, a quick click), the answer goes to the decision a read showing the
        agent's channel logs now, if it shows the action too, under the preview's idempotency
        key (sent again after a timeout, recorded once)."""
        channel = self.config.channel
        try:
            return await self.gateway.respond(key, customer_id, channel, decision_id, action_id,
                                              outcome)
        except GatewayError as exc:
            if exc.kind != "invalid" or PREVIEWED not in exc.detail:
                raise
        shown = (await self.gateway.profile(key, Lookup(customer_id),
                                            shown_channel=channel)).current.get(channel)
        if shown is None or action_id not in [a.action_id for a in
                                              shown.actions[:views.ACTIONS_SHOWN]]:
            raise GatewayError("invalid", f"{action_id} is no longer among the next best actions "
                                          f"on {channel}: answer them as they are now")
        return await self.gateway.respond(key, customer_id, channel, shown.decision_id,
                                          action_id, outcome, answering=decision_id)

    # -- operators -----------------------------------------------------------------------------

    async def operator(self, request: Request, draft: str = "", checked=None,
                       problem: str = "") -> Response:
        key = request.state.session.key
        try:
            status = await self.gateway.status(key)
            running = await self.gateway.running_catalog(key)
            info, message = await self.running_summary(key, running.yaml)
        except GatewayError as exc:
            return self.failure(request, exc)
        return self.render(request, "operator.html", 400 if problem else 200, status=status,
                           draining=views.draining(status), info=info, message=message,
                           draft=draft, checked=checked, problem=problem)

    async def running_summary(self, key: str, text: str) -> Checked:
        """`validated` for the running catalog, compiled (by the gateway) once per catalog, not
        once per view: a catalog of thousands of actions takes a while to compile. What is
        kept is derived from the text, which the key has just read itself; a gateway failure
        is not kept. (A gateway upgraded under an unchanged catalog is asked again once the
        catalog changes or the console restarts.)"""
        digest = hashlib.sha256(text.encode()).digest()
        if self.running is None or self.running[0] != digest:
            self.running = (digest, await self.validated(key, text))
        return self.running[1]

    async def validated(self, key: str, text: str) -> Checked:
        """The catalog checked by the gateway; GatewayError for a failure other than
        "invalid"."""
        try:
            return await self.gateway.validate(key, text), None
        except GatewayError as exc:
            if exc.kind != "invalid":
                raise
            return None, exc.detail

    async def validate(self, request: Request) -> Response:
        draft = _field(await request.form(), "catalog")
        try:
            checked = await self.validated(request.state.session.key, draft)
        except GatewayError as exc:
            return self.failure(request, exc)
        return await self.operator(request, draft, checked, problem=checked[1] or "")


def create_app(config: ConsoleConfig, auth: Auth, gateway: GatewayClient | None = None
               ) -> ASGIApp:
    console = Console(config, auth, gateway)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if console.gateway is None:
            console.gateway = GatewayClient(config.target)
        yield
        await console.gateway.close()

    signed_in = Guard(console)
    routes = [
        Route("/signin", signed_in.open(console.signin_page)),
        Route("/signin", signed_in.open(console.signin, post=True), methods=["POST"]),
        Route("/signout", signed_in(console.signout, post=True), methods=["POST"]),
        Route("/", signed_in(console.home)),
        Route("/customer", signed_in(console.customer)),
        Route("/customer/find", signed_in(console.find, post=True), methods=["POST"]),
        # a live page asked for again (a tab shown again, a paused one after a while) is the
        # browser's doing, not the agent's: it keeps no session from idling out
        # and a live page's script's alone: a link, a frame or another origin's page that
        # opened it would log a decision and hold watches for a customer the agent never saw
        Route("/customer/live", signed_in(console.live, touch=False, own_page=True)),
        Route("/customer/respond", signed_in(console.respond, post=True), methods=["POST"]),
        Route("/operator", signed_in(console.operator)),
        Route("/operator/validate", signed_in(console.validate, post=True,
                                              body_bytes=MAX_BODY_BYTES), methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("kairos.cluster.console", "static")]),
              name="static"),
    ]
    trusted = Middleware(TrustedHostMiddleware, allowed_hosts=list(config.hosts),
                         www_redirect=False)
    return web.secured(Starlette(routes=routes, lifespan=lifespan, middleware=[trusted]),
                       config.dashboard, config.hosts)


def _forget_cookie(request: Request, response: Response, name: str) -> None:
    # Secure as it was set: a browser takes no __Host- cookie without it, a deletion neither
    https = request.url.scheme == "https"
    response.delete_cookie(cookie_name(name, https), path="/", secure=https)


def _searchable(by: str, wanted: str) -> bool:
    return by in SEARCH_KINDS and 0 < len(wanted) <= MAX_ID_LENGTH


def _labels(request: Request) -> dict[str, str]:
    return i18n.labels(i18n.language(request.headers.get("accept-language")))


def _field(form: FormData, name: str) -> str:
    """A form's text field; "" if it is missing or a file (multipart may send one as any)."""
    value = form.get(name)
    return value if isinstance(value, str) else ""
