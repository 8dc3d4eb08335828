"""Agents' sessions: an API key, presented once, becomes a session cookie; every POST carries
the session's CSRF token.

The cookie holds only an opaque random id (the key stays in this process's memory), is
HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it) and Secure when
the console is served over TLS. A visitor who has not signed in gets an anonymous session too,
so the sign-in form carries a CSRF token like every other form; signing in replaces the
session's id, so an id planted before sign-in is worth nothing after it. Sessions live in
memory, bounded in number (the least recently used goes first) and in idle time: a console
restart signs everyone out, which is what a restart of a desk application does too.

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
REFUSED_SCOPES = frozenset({"admin"})  # what an agent's console must never be able to do
MAX_SESSIONS = 10_000
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

    def __init__(self, auth: Auth, *, max_sessions: int = MAX_SESSIONS,
                 idle_s: float = IDLE_S):
        self._auth = auth
        self._max = max_sessions
        self._idle_s = idle_s
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def get(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The live session the cookie names, else None."""
        now = time.time() if now is None else now
        session = self._by_id.get(cookie or "")
        if session is None:
            return None
        if now - session.last_seen > self._idle_s:
            del self._by_id[session.id]
            return None
        session.last_seen = now
        self._by_id.move_to_end(session.id)
        return session

    def start(self, now: float | None = None) -> Session:
        """A new anonymous session."""
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                          time.time() if now is None else now)
        self._by_id[session.id] = session
        while len(self._by_id) > self._max:
            self._by_id.popitem(last=False)
        return session

    def sign_in(self, session: Session, presented: str) -> Session:
        """The signed-in session that replaces `session` (new id and CSRF token), or
        SignInRefused."""
        key = self.check_key(presented)
        self.end(session)
        signed = self.start()
        signed.key, signed.agent, signed.scopes = presented, key.name, key.scopes
        return signed

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
        return key

    def end(self, session: Session) -> None:
        self._by_id.pop(session.id, None)


def csrf_valid(session: Session | None, presented: str | None) -> bool:
    """Whether a POST's token is its session's (compared in constant time)."""
    if session is None or not presented:
        return False
    return hmac.compare_digest(session.csrf.encode(), presented.encode())


def cookie_options(secure: bool) -> dict:
    """The session cookie's attributes (Starlette's set_cookie arguments)."""
    return {"httponly": True, "samesite": "strict", "secure": secure, "path": "/",
            "max_age": int(IDLE_S)}
