"""The contract's requests, checked against the catalog and turned into runtime requests.

Everything here raises InputError naming the field (prefixed, inside a batch or stream, with
`events[i].`), before anything is routed; but an event type a channel-bound key's channel may
not send is refused as the key's (Denied: `check_sender`). The checks of a customer id, a
channel and a placement are the core's (`kairos.core.request`), and those of an event's
attributes the engine's (`DecisionEngine.check_attributes`), the same the shards apply: a batch
with one bad value is refused whole, before any of its events is applied.
Every id a caller sends has a length cap (customer ids, aliases, idempotency keys, event ids,
decision ids, event types, action ids; an alias's anonymous id, longer than a customer id may
be, is bounded as its alias is), checked here on every RPC, so nothing unbounded is
kept in memory, journals or snapshots; and those it names a customer or a request by hold no
control characters (`check_plain`), so none is taken for an id the cluster makes itself.
An alias's anonymous id ("~type:value") is whom an answer to a request by the alias, or by
that id, names to a key without profile:read (`alias_answered`). A Respond by it, from any key,
goes to the anonymous customer it names, and again as the alias only where that customer's
shard refuses it as a decision issued to none of the ids it tried (`retried_as_alias`), and
the alias resolves to a customer that first send did not reach (decisions.py `_learned`).
"""
from __future__ import annotations

import time
from typing import Any, Collection, Mapping, NamedTuple

from kairos.core.compiler import CompiledCatalog, Outcome
from kairos.core.engine import DecisionEngine
from kairos.core.errors import InputError
from kairos.core.request import (MAX_DECISION_ID_LENGTH, MAX_KEY_LENGTH, channel_code,
                                 check_bounded, check_customer, check_key,
                                 check_plain, checked_vector, placement_codes, quoted)
from kairos.v1 import decision_pb2 as pb

from kairos.cluster import protocol
from kairos.cluster.gateway import wire
from kairos.cluster.gateway.auth import Denied, caller, has_scope
from kairos.cluster.identity import (ANONYMOUS, alias_key, anonymous_alias, anonymous_id,
                                     check_linkable)
from kairos.cluster.settings import CLOCK_SKEW_S, OUTCOME_WINDOW_S
from kairos.cluster.shard.outcomes import NOT_ISSUED, issued_at

PROFILE_SCOPE = "profile:read"  # what the customer's profile holds: which aliases are theirs


class Who(NamedTuple):
    """Whom a request names: a customer id, or an alias (its directory key) to resolve."""

    customer_id: str | None
    alias_key: str | None

    def via(self, customer_id: str) -> str | None:
        """What an event or outcome by this alias, resolved to `customer_id`, carries as its
        `via` (protocol.Event): the alias's anonymous id, by which the customer's shard holds
        it back while a link of the alias into the customer is under way (linkhold.py); None
        for a request by id, or by an alias that resolved to its own anonymous customer."""
        if self.alias_key is None or customer_id == anonymous_id(self.alias_key):
            return None
        return anonymous_id(self.alias_key)


def who(message) -> Who:
    """The customer a request names (`customer_id` or `alias`), checked. A forget's are not
    held to `check_plain`: it erases what was kept before ids were."""
    erasing = isinstance(message, pb.ForgetRequest)
    if message.WhichOneof("customer") == "alias":
        key = alias_key(message.alias.type, message.alias.value, "alias")
        if not erasing:
            check_plain(message.alias.value, "alias.value")
        return Who(None, key)
    if not message.customer_id:
        raise InputError("customer_id", "is required (or an alias)")
    if anonymous_alias(message.customer_id) is None:  # else bounded as its alias is
        check_customer(message.customer_id, "customer_id")
    if not erasing:
        check_plain(message.customer_id, "customer_id")
    return Who(message.customer_id, None)


def alias_answered(who: Who) -> str | None:
    """The customer id an answer (a Decide's, a watch's push, an ingested event's decision) to
    a request by alias, or by an alias's anonymous id ("~type:value"), carries for a key
    without profile:read: the id as named, whether or not the alias is linked (its shard
    answers the anonymous id of a linked one with a redirect to the customer), so that no such
    answer tells which aliases are whose (GetProfile, which does, needs the scope). None: the
    customer's own (a request by a customer's id, or a key with profile:read)."""
    named = named_id(who)
    if named is None or not named.startswith(ANONYMOUS) or has_scope(PROFILE_SCOPE):
        return None
    return named


def named_id(who: Who) -> str | None:
    """The id a request names its customer by: its customer id, or its alias's anonymous id
    (None: it names neither, a channel's watch)."""
    return who.customer_id if who.alias_key is None else anonymous_id(who.alias_key)


def retried_as_alias(who: Who, refused: InputError) -> Who | None:
    """Whom a Respond the shard refused may be sent again as: one by an alias's anonymous id
    ("~type:value"), refused because no decision issued to any id the shard tried showed the
    action (NOT_ISSUED), as that alias, resolved through the directory as a Respond by the
    alias is (and sent only where it resolves to a customer the first try did not reach:
    decisions.py `_learned`). A Decide by the alias answers a key without profile:read that id
    (`alias_answered`) for a decision issued to the customer the alias is linked to, whose
    shard finds it from the alias (`Who.via`); the id's own shard sends it there only while
    its redirect lasts (identity.REDIRECTS_PER_PARTITION), and once that is gone, holds the
    alias's own decisions alone (a visitor never linked, or a fresh anonymous profile by the
    id), which the first try, by the id as named, reaches. None: the refusal stands (another
    refusal, an id not of an alias's form, a Respond by alias)."""
    if refused.field != "decision_id" or not refused.reason.startswith(NOT_ISSUED) or \
            who.customer_id is None:
        return None
    key = anonymous_alias(who.customer_id)
    return None if key is None else Who(None, key)


def named(message) -> str:
    """The customer a request names, for a message."""
    if message.WhichOneof("customer") == "alias":
        return f"with alias {message.alias.type}:{message.alias.value!r}"
    return repr(message.customer_id)


def require(value: str, field: str) -> None:
    if not value:
        raise InputError(field, "is required")


def link_target(request: pb.LinkRequest) -> None:
    """A link's alias and customer, checked."""
    alias_key(request.alias.type, request.alias.value)
    check_plain(request.alias.value, "alias.value")
    require(request.customer_id, "customer_id")
    check_plain(check_customer(request.customer_id), "customer_id")
    check_linkable(request.customer_id)


def view(catalog: CompiledCatalog, channel: str, placement: str) -> tuple[str, str]:
    """The channel and placement (the channel's first placement when empty), checked."""
    ch, pl = placement_codes(catalog, channel, placement)
    return channel, catalog.placement_names[ch][pl]


def shown_channel(catalog: CompiledCatalog, request: pb.ProfileRequest) -> str | None:
    """The channel whose decision a GetProfile's caller shows (`shown_channel`), checked; None
    for none."""
    if not request.shown_channel:
        return None
    channel_code(catalog, request.shown_channel, "shown_channel")
    return request.shown_channel


def context_request(catalog: CompiledCatalog, request: pb.DecideRequest) -> dict[str, Any]:
    """A decision request's context: its keyed values, and its vectors (declared vector keys,
    of their size, within their bounds) still packed, as the shard's engine reads them."""
    values = declared_values("context", request.context, catalog.context_names)
    for name, packed in request.vectors.items():
        check_bounded(name, "vectors key", MAX_KEY_LENGTH)  # before it names the field
        where = f"vectors.{name}"
        spec = catalog.catalog.context[catalog.context_index[name]] \
            if name in catalog.context_index else None
        if spec is None or spec.type != "vector":
            declared = [c.name for c in catalog.catalog.context if c.type == "vector"]
            raise InputError(where, f"not a vector context key (declared vectors: "
                                    f"{', '.join(declared) or 'none'})")
        if name in values:
            raise InputError(where, "also given in context")
        checked_vector(where, spec, packed)
        values[name] = packed
    return values


def declared_values(where: str, values: Mapping[str, pb.Value], declared: Collection[str]
                    ) -> dict[str, Any]:
    """A map of values, of no more keys than are declared: the shard names any undeclared
    key in its refusal, but a map of more keys than its data plane carries (a request of
    under 1 MiB can hold 65,537) would not reach it, and would close the connection every
    gateway call to that shard was using."""
    if len(values) > len(declared):
        raise InputError(where, f"{len(values)} keys, but only {len(declared)} are declared "
                                f"({', '.join(sorted(declared)) or 'none'})")
    field = f"{where} key"
    for name in values:
        check_bounded(name, field, MAX_KEY_LENGTH)
    return wire.values_in(where, values)


def event_request(event: pb.Event, catalog: CompiledCatalog, where: str = ""
                  ) -> tuple[Who, protocol.Event]:
    """Whom an event names, and its runtime request, checked. The request's customer id is
    empty for an event by alias, until the alias is resolved."""
    try:
        return _event_request(event, catalog)
    except InputError as exc:
        if not where:
            raise
        # prefixed here, once it failed: a batch's every event named its fields before
        raise InputError(where + exc.field, exc.reason) from None
    except Denied as exc:  # which of a batch's 10,000 events the key may not send
        if not where:
            raise
        raise Denied(exc.authenticated, f"{where.rstrip('.')}: {exc}") from None


def _event_request(event: pb.Event, catalog: CompiledCatalog) -> tuple[Who, protocol.Event]:
    customer = who(event)
    check_key(event.event_id, "event_id", MAX_KEY_LENGTH)
    check_key(event.idempotency_key, "idempotency_key", MAX_KEY_LENGTH)
    e = catalog.event_index.get(event.type)
    if e is None:
        check_bounded(event.type, "type", MAX_KEY_LENGTH)
        raise InputError("type", f"unknown event type {quoted(event.type)} (declared: "
                                 f"{', '.join(catalog.event_names)})")
    check_sender(catalog, event, e,
                 channel_code(catalog, event.channel, "channel") if event.channel else None)
    if event.decide_placement:
        decide_placement(catalog, event)
    when = stated_time("time", event)
    attributes = declared_values("attributes", event.attributes,
                                 catalog.event_fields[event.type])
    DecisionEngine.check_attributes(catalog, event.type, attributes)
    return customer, protocol.Event(
        customer_id=customer.customer_id or "", event_type=event.type, time=when,
        attributes=attributes,
        idempotency_key=event.idempotency_key or None,
        decide=(event.channel, event.decide_placement) if event.decide_placement else None)


def check_sender(catalog: CompiledCatalog, event: pb.Event, e: int, ch: int | None) -> None:
    """The catalog lets callers send `event`, of type code `e`, naming channel code `ch` (None:
    none). A type a timer fires is refused whoever sends it, unless the catalog says it is
    `also_sent`. A channel the type's `channels` leave out is refused as the key's
    (PERMISSION_DENIED) for a key bound to it (`check_channel` has the event name the key's
    channel, so the key may not send the type at all), and as the event's (INVALID_ARGUMENT)
    for an unbound key, which chose the channel; a caller that names none is an unbound key
    (the CRM), whom no type's channels restrict. Two tuple reads by code an event; the texts
    are made only for a refusal."""
    if not catalog.event_sent[e]:
        timer = next(t.name for t in catalog.catalog.timers if t.fire == event.type)
        raise InputError("type", f"{event.type} is fired by the catalog's timer '{timer}', "
                                 f"never sent by a caller (unless the catalog says "
                                 f"events.{event.type}.also_sent: true)")
    if ch is None or catalog.event_channels[e][ch]:
        return
    rule = (f"the catalog's events.{event.type}.channels: "
            f"[{', '.join(catalog.catalog.events[e].channels or ())}]")
    key = caller()
    if key is not None and key.channel:
        raise Denied(True, f"key '{key.name}' is for channel '{key.channel}', which may not "
                           f"send {event.type} events ({rule})")
    raise InputError("channel", f"{event.type} events are not sent on channel "
                                f"'{event.channel}' ({rule})")


def decide_placement(catalog: CompiledCatalog, event: pb.Event) -> None:
    """An event's `decide_placement`, checked here as well as on its shard: a batch or a
    stream refused for it at the shard has had its other events routed already."""
    if not event.channel:
        raise InputError("channel", "decide_placement needs the channel")
    try:
        placement_codes(catalog, event.channel, event.decide_placement)
    except InputError as exc:
        raise InputError("decide_placement", exc.reason) from None


class OutcomeRequest(NamedTuple):
    """A Respond, checked: whom it names, and the outcome for the shard."""

    who: Who
    action_id: str
    channel: str
    outcome: str
    time: float
    decision_id: str | None  # None: offline (the caller's key has the feedback scope)
    value: float | None  # what a convert was worth
    idempotency_key: str | None  # recorded once per customer


def outcome_request(request: pb.Outcome, catalog: CompiledCatalog) -> OutcomeRequest:
    """A Respond's customer, decision, action (one the catalog offers on the channel),
    outcome and time, checked. The decision id is required unless the outcome is offline: an
    outcome credits the decision a shard issued (the shard checks that it did, and that it
    showed the action). Whether the caller may send offline outcomes is the handler's check."""
    customer = who(request)
    ch = channel_code(catalog, request.channel)
    a = catalog.action_index.get(request.action_id)
    if a is None:
        check_bounded(request.action_id, "action_id", MAX_KEY_LENGTH)
        raise InputError("action_id", f"unknown action {quoted(request.action_id)}")
    if not catalog.offered[a, ch]:
        raise InputError("action_id", f"action {request.action_id!r} is not offered on "
                                      f"{request.channel}")
    if request.outcome == pb.OUTCOME_KIND_UNSPECIFIED:
        raise InputError("outcome", "must be set (impression, accept, reject, ignore or "
                                    "convert)")
    try:
        outcome = Outcome(request.outcome).name.lower()
    except ValueError:
        raise InputError("outcome", f"unknown outcome {request.outcome}") from None
    if request.offline and request.decision_id:
        raise InputError("decision_id", "an offline outcome names no decision")
    if not request.offline:
        require(request.decision_id, "decision_id")
        check_key(request.decision_id, "decision_id", MAX_DECISION_ID_LENGTH)
    # the shard's engine checks the value (a convert's, in range) before anything is kept
    value = request.value if request.HasField("value") else None
    check_key(request.idempotency_key, "idempotency_key", MAX_KEY_LENGTH)
    return OutcomeRequest(customer, request.action_id, request.channel, outcome,
                          outcome_time(request),
                          None if request.offline else request.decision_id, value,
                          request.idempotency_key or None)


def outcome_time(request: pb.Outcome) -> float:
    """A Respond's time (`stated_time`); one stated for a decision, not more than CLOCK_SKEW_S
    before the decision was issued: an impression or a reject dated before its decision falls
    out of the contact policies' windows it should count in. The issue time is the one the
    id states, which the shard proves (`DecisionSeal.opened`: the id's MAC covers it).
    An offline one, not more than OUTCOME_WINDOW_S ago: the bound of an outcome that names a
    decision, so offline feedback is news no longer than it. Not the catalog's longest
    contact-policy window: a catalog without policies would refuse every dated one, and a
    catalog switch would change what a batch of feedback may hold."""
    when = stated_time("time", request)
    if not request.HasField("time"):
        return when
    if request.offline:
        age = time.time() - when
        if age > OUTCOME_WINDOW_S:
            raise InputError("time", f"{age:.0f} s ago (an offline outcome's at most "
                                     f"KAIROS_OUTCOME_WINDOW_S, {OUTCOME_WINDOW_S:g} s)")
        return when
    issued = issued_at(request.decision_id)
    if issued is not None and when < issued - CLOCK_SKEW_S:
        raise InputError("time", f"{issued - when:.0f} s before the decision it names was "
                                 f"issued (at most KAIROS_CLOCK_SKEW_S, {CLOCK_SKEW_S:g} s)")
    return when


def stated_time(where: str, message: Any) -> float:
    """An event's or an outcome's time: as given, at most CLOCK_SKEW_S ahead of now; else
    now."""
    now = time.time()
    when = wire.optional_time_in(where, message, "time")
    if not when:  # not given (or the epoch itself, which meant now as well)
        return now
    if when > now + CLOCK_SKEW_S:
        raise InputError(where, f"{when - now:.0f} s ahead of this gateway's clock (at most "
                                f"KAIROS_CLOCK_SKEW_S, {CLOCK_SKEW_S:g} s)")
    return when
