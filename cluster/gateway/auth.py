"""API keys: who may call what, and for which channel; checked before any handler runs.

Keys are YAML (or JSON), from a file (`kairos up --keys FILE`) or the KAIROS_API_KEYS variable:

    keys:
      - key: "web-7f3a..."          # sent in the x-api-key metadata entry: random, e.g.
        name: web-frontend          # secrets.token_urlsafe(32) (see _check_secret)
        channel: web                # optional: the key may only act on this channel
        scopes: [decide, ingest, respond, watch]
      - key: "ops-..."
        name: operators
        scopes: [admin, profile:read]
      - key: "crm-..."
        name: identity-sync
        scopes: [identity]          # may link aliases (LinkIdentity), whatever its channel
      - key: "agent-..."
        name: console-agent         # the agent's console (cluster/console/)
        scopes: [profile:read, respond, watch, status:read]

An entry has only these fields. One the loader does not know (`chanel`), or a `channel` that
names no channel (empty, null, a list), refuses the whole file: read as unbound, such a key
would act on every channel.
Without keys, auth is off, which the gateway allows only on a loopback address.

Scopes: decide, ingest, respond, watch, profile:read, admin, identity (LinkIdentity: links
an alias to a customer, which moves every channel's history; an unbound key with ingest may
also link, a channel-bound one may not), and feedback (with respond: offline outcomes, which
name no decision; the handler asks `has_scope`), and status:read (the cluster's status and
the running catalog, read only: GetClusterStatus, GetCatalog and ValidateCatalog, which
change nothing; an operator's screen needs them without the admin scope's catalog switches,
scaling and drains), and log:read (ExportDecisionLog: the decision log, every channel's
decisions with the customers' profiles as they saw them, so for unbound keys only; an unbound
admin key may too). A profile block holds every channel's history, so narrowing an export to
a bound key's channel would still show it the others': a bound key is refused whatever its
scopes, admin included. So are the admin scope's changes (ForgetCustomer, which erases every
channel's history, the catalog's switches, scaling, drains): each acts on every channel.

Every kairos.v1 method has a `Rule` in RULES: the scope a key needs, where the request names a
channel, and what a channel-bound key may do (`Rule.bound`):
  - "must match": every channel the request names (each event's, in a stream or batch) must be
    the key's; an empty channel is refused too, so a bound key cannot act outside its channel by
    leaving the channel out; and an event's type must be one the catalog lets that channel
    send (`events.<type>.channels`: requests.check_sender), since what an event changes (the
    consent of every channel) is the customer's, not its label's;
  - "filters output": the answer holds the key's channel only (GetProfile's current decisions);
  - "unbound only": a bound key is refused, unless it has one of the rule's `unbinds` scopes
    (LinkIdentity's identity); an `also` scope alone does not let it through;
  - "any": the binding does not matter.
`AuthInterceptor` checks the key and the scope from the call's metadata before the handler
runs and before the request is parsed: a missing or unknown key fails with
UNAUTHENTICATED, a key without the scope with PERMISSION_DENIED. A method with no rule is
refused, so a new RPC stays closed until it is given one; health and reflection are open.
The channel is inside the request, which only the handler parses: the handler passes it to
`check_channel`, which holds it against the key the interceptor attached to the call.
"""
from __future__ import annotations

import contextvars
import hmac
import ipaddress
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import grpc
import yaml

from kairos.core.catalog import NAME_RE

SCOPES = ("decide", "ingest", "respond", "watch", "profile:read", "admin", "identity",
          "feedback", "status:read", "log:read")
log = logging.getLogger("kairos.gateway")
KEYS_ENV = "KAIROS_API_KEYS"  # where `kairos up` and its gateways find keys without --keys
METADATA_KEY = "x-api-key"
KEY_FIELDS = ("key", "name", "channel", "scopes")  # an entry's, and no others
# A key is a secret only if it cannot be guessed: the gateway answers wrong keys at gRPC's
# speed, with no limit. 96 bits: 2^96 guesses at a million a second is 10^15 years.
MIN_LENGTH = 16
MIN_BITS = 96
MIN_DISTINCT = 8
MAKE_KEY = ("make one with `python -c \"import secrets; print(secrets.token_urlsafe(32))\"` "
            "(43 characters, 256 random bits)")
_FIELD_RE = re.compile(r"[A-Za-z_]{1,20}")


MATCH, FILTER, UNBOUND, ANY = "must match", "filters output", "unbound only", "any"


@dataclass(frozen=True)
class Rule:
    """What a call needs: a key with `scope` (or with one of `also`); `channel` is the
    request's field naming the channel, and `bound` what a channel-bound key may do (MATCH:
    the handler holds the field against the key with `check_channel`; FILTER: the handler
    shows only `visible_channel()`; UNBOUND: the interceptor refuses a bound key unless it
    has one of `unbinds`)."""

    scope: str
    channel: str | None = None
    bound: str = ANY
    also: tuple[str, ...] = ()
    unbinds: tuple[str, ...] = ()

    def __post_init__(self):
        assert self.bound in (MATCH, FILTER, UNBOUND, ANY), self.bound
        assert (self.channel is not None) == (self.bound == MATCH), self
        assert not self.unbinds or self.bound == UNBOUND, self
        assert set(self.unbinds) <= {self.scope, *self.also}, self


_DECISIONS = "/kairos.v1.DecisionService/"
_ADMIN = "/kairos.v1.AdminService/"
RULES: dict[str, Rule] = {
    _DECISIONS + "Decide": Rule("decide", "channel", MATCH),
    _DECISIONS + "Ingest": Rule("ingest", "channel", MATCH),
    _DECISIONS + "IngestStream": Rule("ingest", "channel", MATCH),  # of each event
    _DECISIONS + "IngestBatch": Rule("ingest", "events.channel", MATCH),
    _DECISIONS + "Respond": Rule("respond", "channel", MATCH),
    _DECISIONS + "WatchDecisions": Rule("watch", "channel", MATCH),
    _DECISIONS + "GetProfile": Rule("profile:read", bound=FILTER),
    _DECISIONS + "LinkIdentity": Rule("ingest", bound=UNBOUND, also=("identity",),
                                      unbinds=("identity",)),
    _DECISIONS + "ForgetCustomer": Rule("admin", bound=UNBOUND),
    _DECISIONS + "GetRoutes": Rule("decide", also=("ingest", "respond")),  # the routed calls
    _ADMIN + "ValidateCatalog": Rule("status:read", also=("admin",)),
    _ADMIN + "PutCatalog": Rule("admin", bound=UNBOUND),
    _ADMIN + "RollbackCatalog": Rule("admin", bound=UNBOUND),
    _ADMIN + "GetCatalog": Rule("status:read", also=("admin",)),
    _ADMIN + "GetClusterStatus": Rule("status:read", also=("admin",)),
    _ADMIN + "ScaleShards": Rule("admin", bound=UNBOUND),
    _ADMIN + "DrainNode": Rule("admin", bound=UNBOUND),
    _ADMIN + "ExportDecisionLog": Rule("log:read", bound=UNBOUND, also=("admin",)),
}
OPEN_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                           "grpc.reflection.v1.ServerReflection"})


class Denied(Exception):
    def __init__(self, authenticated: bool, reason: str):
        super().__init__(reason)
        self.authenticated = authenticated

    @property
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.PERMISSION_DENIED if self.authenticated \
            else grpc.StatusCode.UNAUTHENTICATED


@dataclass(frozen=True)
class ApiKey:
    """A configured key; `label`, set by `Auth`, is what its calls in flight count as
    (`inflight.key_label`): one per key, unique among the gateway's keys (names need not be),
    a string (its hash is cached), and None for a gateway's one key, which has the whole
    limit. The entries of one name and the same grants (scopes and channel: the old and new
    secrets of a key being rotated) are one key, of one label, and hold one share; entries of
    one name that grant otherwise are keys of their own."""

    name: str
    scopes: frozenset[str]
    channel: str | None = None
    label: str | None = None


def _check_fields(entry: dict, where: str) -> None:
    """ValueError for a field the loader does not know, or a `channel` that names no channel:
    read as absent, either would leave a key meant for one channel unbound. A field's name is
    quoted only when it reads as one (a secret written as a field's name stays unsaid)."""
    for field in entry:
        if field not in KEY_FIELDS:
            shown = f" '{field}'" if isinstance(field, str) and _FIELD_RE.fullmatch(field) \
                else ""
            raise ValueError(f"{where}: unknown field{shown} (fields: {', '.join(KEY_FIELDS)})")
    if "channel" in entry and not (isinstance(entry["channel"], str) and
                                   NAME_RE.fullmatch(entry["channel"])):
        raise ValueError(f"{where}: 'channel' must name one channel (lowercase letters, digits "
                         f"and '_'), got {_kind(entry['channel'])}; leave it out for a key of "
                         f"every channel")


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {str(value)[:64]!r}"


def estimated_bits(secret: str) -> float:
    """What guessing `secret` would take were it drawn at random from the character classes it
    uses (digits, lower case, upper case, anything else as ASCII's 32 punctuation marks): its
    length times log2 of their size. An upper bound: a key made by hand has far less."""
    classes = (str.isdigit, str.islower, str.isupper)
    used = [any(test(c) for c in secret) for test in classes]
    alphabet = sum(size for size, is_used in zip((10, 26, 26), used) if is_used)
    if any(not any(test(c) for test in classes) for c in secret):
        alphabet += 32
    return len(secret) * math.log2(alphabet) if alphabet > 1 else 0.0


def _check_secret(secret: object, where: str) -> None:
    """ValueError for a key that is plainly guessable: short, with whitespace, under MIN_BITS
    by estimated_bits, or of fewer than MIN_DISTINCT characters (`aaaa...`, `abab...`, which
    the estimate alone would pass once long enough). It never quotes the key."""
    if not isinstance(secret, str) or len(secret) < MIN_LENGTH or \
            any(c.isspace() for c in secret):
        raise ValueError(f"{where}: 'key' must be a string of at least {MIN_LENGTH} "
                         f"characters, without whitespace; {MAKE_KEY}")
    if estimated_bits(secret) < MIN_BITS or len(set(secret)) < MIN_DISTINCT:
        raise ValueError(f"{where}: 'key' is too easily guessed (it needs at least "
                         f"{MIN_DISTINCT} different characters, and {MIN_BITS} bits as if "
                         f"random over the kinds of character it uses: e.g. 17 letters and "
                         f"digits); {MAKE_KEY}")


def _labels(keys: list[ApiKey]) -> list[str | None]:
    """Each entry's `ApiKey.label`, of `keys` in the file's order. Entries equal but for their
    secret (one name, the same grants: the old and new secrets of a key being rotated) are one
    key, of one label: its name, suffixed by the place of its first entry where keys of one
    name grant otherwise (another channel or other scopes, or an unnamed "key 1" and one so
    named); by that place, all of them, should a name read as another's suffixed label (each
    then ends with an index of its own); None for a gateway of one key."""
    places: dict[ApiKey, list[int]] = {}  # each key (its label aside): its entries' places
    for i, key in enumerate(keys):
        places.setdefault(replace(key, label=None), []).append(i)
    for key, of in places.items():
        if len(of) > 1:  # as meant while a key is rotated; a name reused by mistake shows here
            log.info("keys[%s] are one key, %r (one share of the in-flight limit, one bound on "
                     "its streams): one name, the same scopes and channel", "], keys[".join(
                         map(str, of)), key.name)
    first = {key: of[0] for key, of in places.items()}
    if len(first) < 2:
        return [None] * len(keys)
    repeated = Counter(key.name for key in first)
    labels = {key: key.name if repeated[key.name] == 1 else f"{key.name} (keys[{i}])"
              for key, i in first.items()}
    if len(set(labels.values())) < len(labels):
        labels = {key: f"{key.name} (keys[{i}])" for key, i in first.items()}
    return [labels[replace(key, label=None)] for key in keys]


class Auth:
    def __init__(self, keys: dict[str, ApiKey]):
        labels = _labels(list(keys.values()))
        self._keys = [(secret.encode(), replace(key, label=label))
                      for (secret, key), label in zip(keys.items(), labels)]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @classmethod
    def load(cls, text: str | None) -> "Auth":
        """Keys from YAML text (None or empty: auth off). ValueError for text that is not
        a keys document, naming the place but never quoting it (it holds the secrets)."""
        if not text or not text.strip():
            return cls({})
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise ValueError(f"API keys: not valid YAML{where}") from None
        entries = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise ValueError("API keys: expected a mapping with a 'keys' list")
        keys = {}
        for i, entry in enumerate(entries):
            where = f"API keys: keys[{i}]"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected a mapping of {', '.join(KEY_FIELDS)}")
            if isinstance(entry.get("name"), str):
                where += f" ({entry['name'][:64]!r})"
            _check_fields(entry, where)
            _check_secret(entry.get("key"), where)
            scopes = entry.get("scopes")
            if not isinstance(scopes, list) or not scopes:
                raise ValueError(f"{where}: 'scopes' must be a non-empty list")
            unknown = [s for s in scopes if s not in SCOPES]
            if unknown:
                raise ValueError(f"{where}: unknown scope {unknown[0]!r} (scopes: "
                                 f"{', '.join(SCOPES)})")
            if entry["key"] in keys:
                raise ValueError(f"{where}: the same key appears twice")
            keys[entry["key"]] = ApiKey(str(entry.get("name", f"key {i}")),
                                        frozenset(scopes), entry.get("channel"))
        return cls(keys)

    def identify(self, presented: str | None) -> ApiKey | None:
        """The key whose secret was presented. Every configured secret is compared in
        constant time, so how long this takes says nothing about how close a guess was."""
        candidate = (presented or "").encode()
        found = None
        for secret, key in self._keys:
            if hmac.compare_digest(secret, candidate):
                found = key
        return found

    def check(self, metadata, rule: Rule | str, method: str = "") -> ApiKey | None:
        """The caller's key if the rule admits it (None with auth off); raises Denied
        otherwise. A bare scope stands for a rule that needs just that."""
        if not self.enabled:
            return None
        presented = next((value for name, value in metadata or () if name == METADATA_KEY),
                         None)
        key = self.identify(presented if isinstance(presented, str) else None)
        if key is None:
            raise Denied(False, f"missing or unknown API key (send it as '{METADATA_KEY}')")
        if isinstance(rule, str):
            rule = Rule(rule)
        if not key.scopes & {rule.scope, *rule.also}:
            wanted = " or ".join(f"'{scope}'" for scope in (rule.scope, *rule.also))
            raise Denied(True, f"key '{key.name}' lacks the {wanted} scope")
        if rule.bound == UNBOUND and key.channel and not key.scopes & set(rule.unbinds):
            others = " or ".join(f"'{scope}'" for scope in rule.unbinds)
            raise Denied(True, f"key '{key.name}' is for channel '{key.channel}', and "
                               f"{method or 'this method'} is for unbound keys only (rule: "
                               f"{UNBOUND}" + (f"; or a key with the {others} scope"
                                               if rule.unbinds else "") + ")")
        return key


# The key the interceptor admitted the current call with (None: auth is off). Each call runs in
# its own task, so what one call sets no other sees; a call that never passed the interceptor
# sees _UNCHECKED, and check_channel refuses it.
_UNCHECKED: Any = object()
_caller: contextvars.ContextVar[ApiKey | None] = contextvars.ContextVar("kairos_caller",
                                                                        default=_UNCHECKED)


def _admitted() -> ApiKey | None:
    key = _caller.get()
    if key is _UNCHECKED:
        raise Denied(True, "the call was not admitted by the gateway's auth interceptor")
    return key


def passed() -> bool:
    """Whether the current call passed the auth interceptor (auth off, it passes every call
    with a rule): the interceptors after it see a call it refuses too, whose handler its
    refusal replaces, and admit nothing for it."""
    return _caller.get() is not _UNCHECKED


def caller() -> ApiKey | None:
    """The key the current call was admitted with (None: auth is off)."""
    return _admitted()


def check_channel(channel: str) -> None:
    """Raise Denied unless the current call's key may act on `channel` (the MATCH rule: a key
    bound to a channel may act on that one only, and not on none)."""
    key = _admitted()
    if key is None or not key.channel:
        return
    if not channel:
        raise Denied(True, f"key '{key.name}' is for channel '{key.channel}', and the request "
                           f"names no channel (rule: channel {MATCH})")
    if channel != key.channel:
        raise Denied(True, f"key '{key.name}' is for channel '{key.channel}', not "
                           f"'{channel}' (rule: channel {MATCH})")


def has_scope(scope: str) -> bool:
    """Whether the current call's key has `scope` (every key does with auth off), for what a
    handler allows beyond its rule."""
    key = _admitted()
    return key is None or scope in key.scopes


def require_scope(scope: str, reason: str) -> None:
    """Raise Denied (PERMISSION_DENIED, saying `reason`) unless the current call's key has
    `scope`, for what a request asks beyond its method's rule."""
    if not has_scope(scope):
        raise Denied(True, reason)


def visible_channel() -> str | None:
    """The one channel the current call's answer may show (the FILTER rule): the key's, or
    None when every channel may be shown (an unbound key, or auth off)."""
    key = _admitted()
    return None if key is None else key.channel or None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks each call's key and scope against RULES before its handler runs."""

    def __init__(self, auth: Auth):
        self.auth = auth

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        rule = RULES.get(details.method)
        if rule is None:
            if details.method[1:].rpartition("/")[0] in OPEN_SERVICES:
                return await continuation(details)
            handler = await continuation(details)
            return handler and refusal(handler, grpc.StatusCode.PERMISSION_DENIED,
                                       f"{details.method} has no access rule")
        try:
            _caller.set(self.auth.check(details.invocation_metadata, rule, details.method))
        except Denied as exc:
            handler = await continuation(details)
            return handler and refusal(handler, exc.code, str(exc))
        return await continuation(details)


def refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str
            ) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind that fails the call with `code` without parsing the
    request (it has no deserializer)."""
    async def refuse(request_or_iterator, context) -> None:
        await context.abort(code, details)

    make = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}
    return make[handler.request_streaming, handler.response_streaming](refuse)


EVERY_ADDRESS = ("0.0.0.0", "::", "")  # bind addresses that listen on every interface


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
