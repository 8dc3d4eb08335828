"""Agents' sessions: an API key, presented once, becomes a session cookie; every POST carries
the session's CSRF token.

The cookie holds only an opaque random id (the key stays in this process's memory), is
HttpOnly (no script reads it), SameSite=Strict (the browser leaves it out of every request
another site's page starts, a link followed included: the console answers such a link with a
page that asks for the same URL again from its own origin, which does carry it; web.py) and
Secure when the console is served over TLS, and then named with the __Host- prefix
(`cookie_name`: no sibling subdomain can set it). It is set again as the agent works
(REISSUE_S), so it lasts IDLE_S after the agent's last page, as the session does (a live
page's stream, which the browser asks for again by itself, is not the agent's work). Sessions
live in memory, bounded in number (the least recently used goes first; MAX_SESSIONS_PER_KEY a
key, so that one agent signing in over and over pushes out only its own) and in idle time: a
console restart signs everyone out, which is what a restart of a desk application does too.

A visitor who has not signed in keeps nothing in the console: anyone who reaches it makes
visitors (any web page an agent opens can send it cookie-less requests), so they must cost
no memory and push nothing out. A visitor's cookie (VISITOR_COOKIE, its own name, so it never
replaces a signed-in session's) holds a random nonce, and the sign-in form's CSRF token is
an HMAC of that nonce and the time, with a secret of this process: checked on the POST, good
for SIGNIN_FORM_S. Signing in makes a new session, so nothing a visitor held is worth anything
after it.

Failed sign-ins are bounded (`SignInLimit`), so that nobody who reaches the console guesses keys
at its speed: past SIGNIN_FAILURES within SIGNIN_WINDOW_S from one address (an IPv6 one's /64,
which one host holds whole), or SIGNIN_FAILURES_ALL from every address together (a guesser with
many addresses), sign-ins are refused (429) until the oldest of those failures is
SIGNIN_WINDOW_S old, without the key being looked at. A sign-in that succeeds counts for
nothing.

Which keys may sign in is the gateway's key set (`kairos.cluster.gateway.auth.Auth`, read
from the same file or variable): a key with the scopes the console needs (CONSOLE_SCOPES) and
without the admin scope, so a session can never switch catalogs, scale or drain.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from kairos.cluster.gateway.auth import ApiKey, Auth

COOKIE = "kairos_console"  # a signed-in session's id
VISITOR_COOKIE = "kairos_console_visitor"  # a visitor's nonce, which the sign-in token binds
HOST_PREFIX = "__Host-"  # the cookies' names over HTTPS (cookie_name)
CSRF_FIELD = "csrf"
CONSOLE_SCOPES = frozenset({"profile:read", "respond", "watch"})
# what more a console key may have: the operator page (status:read), and the fallback
# decision for a customer whose record cannot be read in time (decide)
OPTIONAL_SCOPES = frozenset({"status:read", "decide"})
REFUSED_SCOPES = frozenset({"admin"})  # what an agent's console must never be able to do
MAX_SESSIONS = 10_000  # signed in
MAX_SESSIONS_PER_KEY = 64  # an agent's browsers and tabs; past it the key's oldest goes
IDLE_S = 8 * 3600.0  # an agent's shift
REISSUE_S = 600.0  # how often an active agent's cookie is set again (with a new max-age)
SIGNIN_FORM_S = 3600.0  # how long a sign-in form's token is good for
# outcomes a session remembers having sent (a double click's second is not sent again)
MAX_ANSWERED = 1_000
# what a session keeps as sent for an action the gateway had an answer to already (its
# LEARNED_FROM_DUPLICATE): which answer that was, the customer's history says (the templates
# name it too)
ANSWERED_EARLIER = "earlier"
NONCE_LENGTH = 43  # secrets.token_urlsafe(32)'s
MAX_ISSUED_DIGITS = 12  # a sign-in token's time in seconds, for the next 30,000 years
MAX_KEY_LENGTH = 256  # a sign-in form's key field: keys are short secrets, not documents
SIGNIN_WINDOW_S = 300.0  # how long a failed sign-in counts against its address
SIGNIN_FAILURES = 10  # failed sign-ins an address may make within the window
# every address's together: the console's guesses per window, however many addresses guess
SIGNIN_FAILURES_ALL = 300
SIGNIN_ADDRESSES = 10_000  # addresses whose failures are kept; the least recent goes first


class SignInRefused(Exception):
    """Why a presented key does not sign in (said to the agent as it is: it names no key)."""


@dataclass
class Session:
    id: str
    csrf: str
    last_seen: float
    key: str | None = None  # None: not signed in
    agent: str = ""  # the key's name
    scopes: frozenset[str] = field(default_factory=frozenset)
    cookie_set: float = 0.0  # when its cookie was last sent (0: never)
    # (decision id, action id) -> the outcome sent (or ANSWERED_EARLIER), None while it is
    # being sent
    answered: OrderedDict[tuple[str, str], str | None] = field(default_factory=OrderedDict)
    # customer id -> the answer just sent for them, for the notice on the page it redirects
    # to (taken once: a link to that page from elsewhere says nothing)
    notices: OrderedDict[str, str] = field(default_factory=OrderedDict)

    @property
    def signed_in(self) -> bool:
        return self.key is not None


class Sessions:
    """The console's sessions, by cookie id."""

    def __init__(self, auth: Auth, channel: str, *, max_sessions: int = MAX_SESSIONS,
                 idle_s: float = IDLE_S):
        self._auth = auth
        self._channel = channel
        self._idle_s = idle_s
        self._max = max_sessions
        self._pool: OrderedDict[str, Session] = OrderedDict()
        self._secret = secrets.token_bytes(32)  # a restart voids the sign-in forms shown

    def get(self, cookie: str | None, now: float | None = None, touch: bool = True
            ) -> Session | None:
        """The live session the cookie names, else None. `touch`: the agent acted, so the
        idle time starts again (a live page checking on its session is not the agent)."""
        now = time.time() if now is None else now
        session = self._pool.get(cookie or "")
        if session is None:
            return None
        if now - session.last_seen > self._idle_s:
            del self._pool[session.id]
            return None
        if touch:
            session.last_seen = now
            self._pool.move_to_end(session.id)
        return session

    def visitor(self, nonce: str | None, now: float | None = None) -> Session:
        """A visitor's session, kept nowhere: its id is the nonce of its cookie (a new one
        when the cookie has none that could be ours), its CSRF token the sign-in form's."""
        if not nonce or len(nonce) != NONCE_LENGTH:
            nonce = secrets.token_urlsafe(32)
        now = time.time() if now is None else now
        issued = str(int(now))
        return Session(nonce, f"{issued}.{self._mac(nonce, issued)}", now)

    def csrf_valid(self, session: Session, presented: str | None,
                   now: float | None = None) -> bool:
        """Whether a POST's token is its session's (compared in constant time): a signed-in
        session's own, or a sign-in form's issued for the visitor's nonce within
        SIGNIN_FORM_S."""
        if not presented:
            return False
        if session.signed_in:
            return hmac.compare_digest(session.csrf.encode(), presented.encode())
        issued, _, mac = presented.partition(".")
        now = time.time() if now is None else now
        # ASCII digits, and few: isdigit() passes "²", which int() refuses, as it does 5,000 1s
        return issued.isascii() and issued.isdigit() and len(issued) <= MAX_ISSUED_DIGITS \
            and 0 <= now - int(issued) <= SIGNIN_FORM_S and \
            hmac.compare_digest(self._mac(session.id, issued).encode(), mac.encode())

    def _mac(self, nonce: str, issued: str) -> str:
        return hmac.new(self._secret, f"{nonce}.{issued}".encode(), hashlib.sha256).hexdigest()

    def sign_in(self, session: Session, presented: str) -> Session:
        """The signed-in session that replaces `session` (new id and CSRF token), or
        SignInRefused."""
        key = self.check_key(presented)
        self.end(session)
        mine = [s.id for s in self._pool.values() if s.key == presented]  # least recent first
        for old in mine[:max(0, len(mine) - MAX_SESSIONS_PER_KEY + 1)]:
            del self._pool[old]  # the key's own: one key never pushes other agents out
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.time(),
                          presented, key.name, key.scopes)
        self._pool[session.id] = session
        while len(self._pool) > self._max:
            self._pool.popitem(last=False)
        return session

    def cookie_due(self, session: Session, now: float | None = None) -> bool:
        """Whether a response sets the session's cookie again: a new session's first, then
        one every REISSUE_S while the agent works, so the cookie lasts as long as the
        session."""
        now = time.time() if now is None else now
        if now - session.cookie_set < REISSUE_S:
            return False
        session.cookie_set = now
        return True

    def check_key(self, presented: str) -> ApiKey:
        if not presented or len(presented) > MAX_KEY_LENGTH:
            raise SignInRefused("unknown key")
        key = self._auth.identify(presented)
        if key is None:
            raise SignInRefused("unknown key")
        missing = CONSOLE_SCOPES - key.scopes
        if missing:
            raise SignInRefused(f"the key lacks the scopes {', '.join(sorted(missing))}")
        if key.scopes & REFUSED_SCOPES:
            raise SignInRefused("the key has the admin scope: sign in with a key of the "
                                "console's scopes only")
        if key.channel not in (None, self._channel):
            raise SignInRefused(f"the key is bound to the channel {key.channel}, and this "
                                f"console's agents work on {self._channel}")
        return key

    def end(self, session: Session) -> None:
        self._pool.pop(session.id, None)


class SignInLimit:
    """Failed sign-ins by address, in memory bounded by `addresses` (each keeps its last
    `failures`, the console's last `failures_all`): `wait_s` says for how long an address's
    sign-ins are refused, `failed` counts one."""

    def __init__(self, *, failures: int = SIGNIN_FAILURES, window_s: float = SIGNIN_WINDOW_S,
                 failures_all: int = SIGNIN_FAILURES_ALL, addresses: int = SIGNIN_ADDRESSES):
        self._failures = failures
        self._window_s = window_s
        self._addresses = addresses
        self._by_source: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque(maxlen=failures_all)

    def wait_s(self, address: str, now: float | None = None) -> float:
        """How long before `address` may try to sign in again (0: now)."""
        now = time.monotonic() if now is None else now
        return max(self._wait(self._by_source.get(_source(address)), now),
                   self._wait(self._all, now))

    def _wait(self, times: deque[float] | None, now: float) -> float:
        """Until the oldest of a full count of failures leaves the window (0: not full)."""
        if times is None or len(times) < times.maxlen:
            return 0.0
        return max(0.0, times[0] + self._window_s - now)

    def failed(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        source = _source(address)
        times = self._by_source.pop(source, None) or deque(maxlen=self._failures)
        times.append(now)
        self._by_source[source] = times  # the most recent last
        self._all.append(now)
        while len(self._by_source) > self._addresses:
            self._by_source.popitem(last=False)


def _source(address: str) -> str:
    """Whose attempt it is: the address, or an IPv6 address's /64 (a host is given a whole
    /64, and would otherwise guess from each of its addresses in turn)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP address (a test client's name)
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:  # an IPv4 client of a dual-stack socket
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


def cookie_name(name: str, https: bool) -> str:
    """A console cookie's name (COOKIE, VISITOR_COOKIE) as it is set and read: over HTTPS
    with the __Host- prefix, which a browser takes only from this very host, Secure, with
    Path=/ and no Domain, so that a sibling subdomain (of a console served as one of
    *.example.com) cannot set it for the console: no session fixation, no login CSRF. Plain
    HTTP (loopback, or any host with --insecure) cannot carry it (it needs Secure): the
    console serves no wildcard host name over it (server.served_hosts)."""
    return HOST_PREFIX + name if https else name


def cookie_options(secure: bool, max_age: float | None = IDLE_S) -> dict:
    """A console cookie's attributes (Starlette's set_cookie arguments); `max_age` None: the
    browser's session."""
    return {"httponly": True, "samesite": "strict", "secure": secure, "path": "/",
            "max_age": None if max_age is None else int(max_age)}
