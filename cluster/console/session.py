"""Agents' sessions: an API key, presented once, becomes a session cookie; every POST carries
the session's CSRF token.

The cookie holds only an opaque random id (the key stays in this process's memory), is
HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it) and Secure when
the console is served over TLS. A visitor who has not signed in gets an anonymous session too,
so the sign-in form carries a CSRF token like every other form; signing in replaces the
session's id, so an id planted before sign-in is worth nothing after it. Sessions live in
memory, bounded in number (the least recently used goes first; MAX_SESSIONS_PER_KEY a key, so
that one agent signing in over and over pushes out only its own) and in idle time: a console
restart signs everyone out, which is what a restart of a desk application does too.
Anonymous sessions have a pool of their own: anyone who reaches the console makes them (any
web page an agent opens can send it cookie-less requests), so they must never push a
signed-in session out.

Which keys may sign in is the gateway's key set (`kairos.cluster.gateway.auth.Auth`, read
from the same file or variable): a key with the scopes the console needs (CONSOLE_SCOPES) and
without the admin scope, so a session can never switch catalogs, scale or drain.
"""
from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from kairos.cluster.gateway.auth import ApiKey, Auth

COOKIE = "kairos_console"
CSRF_FIELD = "csrf"
CONSOLE_SCOPES = frozenset({"profile:read", "respond", "watch"})
# what more a console key may have: the operator page (status:read), and the fallback
# decision for a customer whose record cannot be read in time (decide)
OPTIONAL_SCOPES = frozenset({"status:read", "decide"})
REFUSED_SCOPES = frozenset({"admin"})  # what an agent's console must never be able to do
MAX_SESSIONS = 10_000  # signed in
MAX_SESSIONS_PER_KEY = 64  # an agent's browsers and tabs; past it the key's oldest goes
MAX_ANONYMOUS = 10_000  # visitors on their way to the sign-in form
IDLE_S = 8 * 3600.0  # an agent's shift
MAX_KEY_LENGTH = 256  # a sign-in form's key field: keys are short secrets, not documents


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

    @property
    def signed_in(self) -> bool:
        return self.key is not None


class Sessions:
    """The console's sessions, by cookie id."""

    def __init__(self, auth: Auth, channel: str, *, max_sessions: int = MAX_SESSIONS,
                 max_anonymous: int = MAX_ANONYMOUS, idle_s: float = IDLE_S):
        self._auth = auth
        self._channel = channel
        self._idle_s = idle_s
        self._pools: tuple[tuple[OrderedDict[str, Session], int], ...] = (
            (OrderedDict(), max_anonymous), (OrderedDict(), max_sessions))

    def get(self, cookie: str | None, now: float | None = None, touch: bool = True
            ) -> Session | None:
        """The live session the cookie names, else None. `touch`: the agent acted, so the
        idle time starts again (a live page checking on its session is not the agent)."""
        now = time.time() if now is None else now
        for pool, _ in self._pools:
            session = pool.get(cookie or "")
            if session is None:
                continue
            if now - session.last_seen > self._idle_s:
                del pool[session.id]
                return None
            if touch:
                session.last_seen = now
                pool.move_to_end(session.id)
            return session
        return None

    def start(self, now: float | None = None) -> Session:
        """A new anonymous session."""
        return self._add(Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                                 time.time() if now is None else now))

    def sign_in(self, session: Session, presented: str) -> Session:
        """The signed-in session that replaces `session` (new id and CSRF token), or
        SignInRefused."""
        key = self.check_key(presented)
        self.end(session)
        signed_in, _ = self._pools[True]
        mine = [s.id for s in signed_in.values() if s.key == presented]  # least recent first
        for old in mine[:max(0, len(mine) - MAX_SESSIONS_PER_KEY + 1)]:
            del signed_in[old]  # the key's own: one key never pushes other agents out
        return self._add(Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                                 time.time(), presented, key.name, key.scopes))

    def _add(self, session: Session) -> Session:
        pool, limit = self._pools[session.signed_in]
        pool[session.id] = session
        while len(pool) > limit:
            pool.popitem(last=False)
        return session

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
        for pool, _ in self._pools:
            pool.pop(session.id, None)


def csrf_valid(session: Session | None, presented: str | None) -> bool:
    """Whether a POST's token is its session's (compared in constant time)."""
    if session is None or not presented:
        return False
    return hmac.compare_digest(session.csrf.encode(), presented.encode())


def cookie_options(secure: bool) -> dict:
    """The session cookie's attributes (Starlette's set_cookie arguments)."""
    return {"httponly": True, "samesite": "strict", "secure": secure, "path": "/",
            "max_age": int(IDLE_S)}
