"""Sessions, sign-in keys and CSRF tokens, without a browser or a gateway."""
from __future__ import annotations

import os
import stat

import pytest

from kairos.cluster.console.server import CONSOLE_KEYS_FILE, keys_text
from kairos.cluster.console.session import (REISSUE_S, SIGNIN_FORM_S, Sessions, SignInLimit,
                                            SignInRefused, cookie_options)
from kairos.cluster.gateway.auth import KEYS_ENV, Auth

AGENT = "agent-key-0123456789abcdef"
KEYS = f"""
keys:
  - {{key: "{AGENT}", name: agent-7, scopes: [profile:read, respond, watch]}}
  - {{key: "reader-0123456789abcdef", name: reader, scopes: [profile:read]}}
  - {{key: "admin-0123456789abcdef", name: ops, scopes: [profile:read, respond, watch, admin]}}
  - {{key: "web-0123456789abcdef", name: web, channel: web,
     scopes: [profile:read, respond, watch]}}
"""


@pytest.fixture
def sessions() -> Sessions:
    return Sessions(Auth.load(KEYS), "call_center", max_sessions=3, idle_s=60)


def test_a_key_with_the_consoles_scopes_signs_in_under_a_new_id(sessions):
    visitor = sessions.visitor(None)
    signed = sessions.sign_in(visitor, AGENT)
    assert signed.signed_in and signed.agent == "agent-7"
    assert signed.id != visitor.id and signed.csrf != visitor.csrf  # no session fixation
    assert sessions.get(visitor.id) is None and sessions.get(signed.id) is signed
    again = sessions.sign_in(signed, AGENT)  # signing in again ends the session it replaces
    assert sessions.get(signed.id) is None and sessions.get(again.id) is again


@pytest.mark.parametrize("key, why", [
    ("", "unknown key"), ("wrong-0123456789abcdef", "unknown key"), ("x" * 300, "unknown key"),
    ("reader-0123456789abcdef", "lacks the scopes respond, watch"),
    ("admin-0123456789abcdef", "admin scope"),  # the console can never change the catalog
    ("web-0123456789abcdef", "bound to the channel web"),  # would fail on every page
])
def test_other_keys_are_refused(sessions, key, why):
    with pytest.raises(SignInRefused, match=why):
        sessions.sign_in(sessions.visitor(None), key)


def test_sessions_expire_when_idle_and_the_oldest_go_past_the_bound(sessions):
    first = sessions.sign_in(sessions.visitor(None), AGENT)
    first.last_seen = 0
    assert sessions.get(first.id, now=59) is first
    assert sessions.get(first.id, now=100, touch=False) is first  # a live page's check...
    assert sessions.get(first.id, now=120, touch=False) is None  # ...keeps nobody signed in
    assert sessions.get(first.id, now=200) is None
    made = [sessions.sign_in(sessions.visitor(None), AGENT) for _ in range(4)]
    assert sessions.get(made[0].id) is None and sessions.get(made[-1].id) is made[-1]
    assert sessions.get(None) is None and sessions.get("forged") is None


def test_visitors_are_kept_nowhere_and_push_no_sign_in_out(sessions):
    """Any page an agent opens can send the console cookie-less requests: they cost no
    memory, so neither an agent's session nor a visitor's pending sign-in form goes."""
    agents = [sessions.sign_in(sessions.visitor(None), AGENT) for _ in range(3)]
    pending = sessions.visitor(None)
    for _ in range(10_000):
        sessions.visitor(None)
    assert all(sessions.get(agent.id) is agent for agent in agents)
    assert len(sessions._pool) == 3 and sessions.get(pending.id) is None
    assert sessions.csrf_valid(sessions.visitor(pending.id), pending.csrf)


def test_csrf_tokens_must_be_the_sessions_own(sessions):
    one = sessions.sign_in(sessions.visitor(None), AGENT)
    other = sessions.sign_in(sessions.visitor(None), AGENT)
    assert sessions.csrf_valid(one, one.csrf)
    assert not sessions.csrf_valid(one, other.csrf)
    assert not sessions.csrf_valid(one, None) and not sessions.csrf_valid(one, "")


def test_a_sign_in_forms_token_is_bound_to_its_visitor_and_expires(sessions):
    visitor = sessions.visitor(None, now=1000)
    assert sessions.visitor(visitor.id).id == visitor.id  # the cookie's nonce, kept
    assert sessions.visitor("x" * 500).id != "x" * 500  # not one of ours: a new one
    assert sessions.csrf_valid(visitor, visitor.csrf, now=1000 + SIGNIN_FORM_S)
    assert not sessions.csrf_valid(visitor, visitor.csrf, now=1001 + SIGNIN_FORM_S)
    assert not sessions.csrf_valid(visitor, visitor.csrf, now=999)  # issued in the future
    other = sessions.visitor(None, now=1000)
    assert not sessions.csrf_valid(other, visitor.csrf, now=1000)  # another browser's
    issued, _, mac = visitor.csrf.partition(".")
    assert not sessions.csrf_valid(visitor, f"{int(issued) + 1}.{mac}", now=1001)
    assert not sessions.csrf_valid(visitor, "", now=1000)
    signed = sessions.sign_in(visitor, AGENT)
    assert not sessions.csrf_valid(signed, visitor.csrf)  # died with the sign-in


@pytest.mark.parametrize("token", ["\u00b2.abc", "1" * 5000 + ".x"])
def test_a_malformed_sign_in_token_is_refused_not_failed_on(sessions, token):
    """isdigit() passed a superscript 2, which int() then refused, as it refuses 5,000
    digits: the sign-in answered 500 where any bad token gets 403."""
    assert not sessions.csrf_valid(sessions.visitor(None), token)


def test_the_cookie_is_set_again_as_the_agent_works(sessions):
    """The cookie's max-age is the idle bound: set once at sign-in, it would end an agent's
    working session IDLE_S after sign-in, however busy."""
    signed = sessions.sign_in(sessions.visitor(None), AGENT)
    assert sessions.cookie_due(signed, now=1000)  # the first
    assert not sessions.cookie_due(signed, now=1000 + REISSUE_S - 1)
    assert sessions.cookie_due(signed, now=1000 + REISSUE_S)
    assert not sessions.cookie_due(signed, now=1001 + REISSUE_S)


def test_the_cookie_is_http_only_strict_and_secure_over_tls():
    assert cookie_options(False) | {"secure": True} == cookie_options(True)
    assert cookie_options(True)["httponly"] and cookie_options(True)["samesite"] == "strict"
    assert cookie_options(False, None)["max_age"] is None  # a visitor's: the browser's session


def test_without_keys_the_console_makes_its_own_private_one(tmp_path, monkeypatch):
    monkeypatch.delenv(KEYS_ENV, raising=False)
    text, source = keys_text(None, tmp_path)
    assert source == str(tmp_path / CONSOLE_KEYS_FILE)
    assert stat.S_IMODE(os.stat(source).st_mode) == 0o600
    assert keys_text(None, tmp_path)[0] == text  # made once, kept
    sessions = Sessions(Auth.load(text), "call_center")
    key = text.split("key: ")[1].split()[0]
    assert sessions.sign_in(sessions.visitor(None), key).scopes >= {"profile:read", "status:read"}
    monkeypatch.setenv(KEYS_ENV, KEYS)  # the gateways' keys, when there are any
    assert keys_text(None, tmp_path) == (KEYS, f"${KEYS_ENV}")


def test_one_key_signing_in_over_and_over_pushes_out_only_its_own_sessions(monkeypatch):
    monkeypatch.setattr("kairos.cluster.console.session.MAX_SESSIONS_PER_KEY", 4)
    keys = KEYS + '  - {key: "other-agent-0123456789abcdef", name: agent-8, ' \
                  'scopes: [profile:read, respond, watch]}\n'
    pool = Sessions(Auth.load(keys), "call_center", max_sessions=10, idle_s=60)
    theirs = pool.sign_in(pool.visitor(None), "other-agent-0123456789abcdef")
    mine = [pool.sign_in(pool.visitor(None), AGENT) for _ in range(20)]
    assert pool.get(theirs.id) is theirs  # 20 sign-ins did not push the other agent out
    assert [pool.get(s.id) is s for s in mine] == [False] * 16 + [True] * 4


def test_an_address_past_its_failed_sign_ins_waits_until_the_oldest_leaves_the_window():
    limit = SignInLimit(failures=3, window_s=60, failures_all=100, addresses=100)
    for t in (0, 10, 20):
        assert limit.wait_s("192.0.2.7", now=t) == 0
        limit.failed("192.0.2.7", now=t)
    assert limit.wait_s("192.0.2.7", now=30) == 30  # until the failure at 0 is 60 s old
    assert limit.wait_s("::ffff:192.0.2.7", now=30) == 30  # the same address, IPv4-mapped
    assert limit.wait_s("192.0.2.8", now=30) == 0
    assert limit.wait_s("192.0.2.7", now=60) == 0
    limit.failed("192.0.2.7", now=60)  # the last three: 10, 20, 60
    assert limit.wait_s("192.0.2.7", now=61) == 9


def test_an_ipv6_host_counts_as_its_whole_64():
    limit = SignInLimit(failures=2, window_s=60, failures_all=100, addresses=100)
    limit.failed("2001:db8:0:1::1", now=0)
    limit.failed("2001:db8:0:1:ffff::2", now=1)
    assert limit.wait_s("2001:db8:0:1::3", now=2) == 58
    assert limit.wait_s("2001:db8:0:2::1", now=2) == 0


def test_every_address_together_is_limited_too_and_memory_is_bounded():
    limit = SignInLimit(failures=3, window_s=60, failures_all=5, addresses=4)
    for i in range(5):
        limit.failed(f"192.0.2.{i}", now=i)
    assert limit.wait_s("198.51.100.1", now=10) == 50  # an address that never failed
    assert limit.wait_s("198.51.100.1", now=60) == 0
    assert len(limit._by_source) == 4  # the least recent address went first
    assert "192.0.2.0" not in limit._by_source
