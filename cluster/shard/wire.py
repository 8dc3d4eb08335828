"""Requests from the arrays they crossed the data plane as, each field held to its declared
type before the round sees it.

A round applies its requests together: one whose channel is a list (unhashable in the
shard's indexes), whose idempotency key is a number (hashed as text) or whose partition is
2**70 (out of the int64 tables) would raise in the round and fail every caller's request in
it, rebuilding the shard. The peer is authenticated, so this guards against a faulty or
older client rather than a stranger; checked here, such a request answers Invalid by itself.
The checks come from the request types' own annotations (protocol.py), so a field added there
is checked without a line here. Requests built in this process are typed already and skip
this. What a field holds beyond its type (an attribute's value, a block's layout) is for its
handler to refuse, but for the ids a request keeps something under: they hold no control
characters (`check_plain`, the gateway's rule), so a client that skips the gateway's checks
cannot name what the shard keys by ids of its own.
"""
from __future__ import annotations

import math
import reprlib
import types
import typing
from typing import Any, NamedTuple, Union

from kairos.core.errors import InputError
from kairos.core.request import check_plain

from kairos.cluster import protocol
from kairos.cluster.protocol import Invalid, Request

_INT64 = 1 << 63
_ANY = None  # a field of any type (its handler checks it)


class _Field(NamedTuple):
    name: str
    types: frozenset | None  # the exact types it may have, or _ANY
    items: tuple[_Field, ...] = ()  # of a tuple-typed field, each item's


def _field(name: str, hint: Any) -> _Field:
    """What a value of `hint` (an annotation of protocol.py's requests) may be."""
    if hint is Any:
        return _Field(name, _ANY)
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        either = [_field(name, arg) for arg in typing.get_args(hint)]
        items = next((f.items for f in either if f.items), ())
        return _Field(name, frozenset().union(*(f.types for f in either)), items)
    if origin is tuple:  # arrives as a list: msgpack has one array type
        return _Field(name, frozenset({list, tuple}),
                      tuple(_field(name, arg) for arg in typing.get_args(hint)))
    # a caller may send a whole number for a float; bool is an int's subclass, not one of its
    # values
    return _Field(name, frozenset({int, float}) if hint is float else
                  frozenset({type(None) if hint is None else hint}))


def _fits(field: _Field, value: Any) -> bool:
    kind = type(value)
    if field.types is _ANY:
        return True
    if kind not in field.types:
        return False
    if kind is int:
        return -_INT64 <= value < _INT64
    if kind is float:
        return math.isfinite(value)
    if field.items and kind in (list, tuple):
        return len(value) == len(field.items) and all(map(_fits, field.items, value))
    return True


_FIELDS: dict[type, list[_Field]] = {
    cls: [_field(name, hint) for name, hint in typing.get_type_hints(cls).items()][1:]
    for cls in protocol.REQUESTS.values()}


# the requests that keep something under the ids they name, and those ids' fields; the others
# read or erase what is kept (a forget's steps, by ids kept before they were held to the rule)
_KEEPING = ("event", "decide", "outcome", "watch", "claim", "link", "take", "merge")
_IDS = ("customer_id", "key", "anonymous", "target", "link", "by", "idempotency_key",
        "decision_id")
_PLAIN: dict[type, tuple[int, ...]] = {
    protocol.REQUESTS[kind]: tuple(i for i, f in enumerate(protocol.REQUESTS[kind]._fields)
                                   if f in _IDS)
    for kind in _KEEPING}
# a Merge with no state (the forget saga's) is held to the rule by its customer only (_plain)
_STATELESS_MERGE = (protocol.Merge._fields.index("customer_id"),)


def typed(raw: Any) -> Request | Invalid:
    """A request from the array it travelled as, or why it is none: its unknown kind, its
    first field of another type than its kind declares, or an id it keeps something under
    holding a character no id may (`check_plain`)."""
    if type(raw) not in (list, tuple):  # a map would be read by its keys
        return Invalid(field="request", reason=f"not a request: a {type(raw).__name__}, not "
                       f"an array")
    try:
        request = protocol.request_from(raw)
    except ValueError as exc:
        return Invalid(field="kind", reason=str(exc))
    except TypeError as exc:  # more fields than its kind has, unhashable, not an array
        return Invalid(field="request", reason=f"not a request: {exc}")
    for field, value in zip(_FIELDS[type(request)], request[1:]):
        if not _fits(field, value):
            return Invalid(field=field.name, reason=f"the {request.kind} request's {field.name} "
                           f"may not be {type(value).__name__} {_shown(value)}")
    try:
        for i in _plain(request):
            if request[i]:
                check_plain(request[i], request._fields[i])
    except InputError as exc:
        return Invalid(field=exc.field, reason=exc.reason)
    return request


def _plain(request: Request) -> tuple[int, ...]:
    """The fields of the ids `request` keeps something under. A Merge with no state folds
    nothing: it is the forget saga's (sagas.py), settling a link whose alias may have been
    kept before ids were held to the rule, which the forget could never finish if refused;
    its customer is held to the rule all the same, as the Merge creates the customer and
    keeps the alias under it (a forget meeting a link of a customer kept before the rule,
    under way across the upgrade, is refused: Invalid, until that link settles)."""
    if type(request) is protocol.Merge and request.state is None:
        return _STATELESS_MERGE
    return _PLAIN.get(type(request), ())



def _shown(value: Any) -> str:
    """A short sketch of the value: reprlib cuts strings, containers and nesting as it goes (a
    whole repr of a deep one raises RecursionError, of a long one costs the round its time)."""
    return _SKETCH.repr(value[:41] if type(value) in (str, bytes) else value)


_SKETCH = reprlib.Repr()
_SKETCH.maxlevel, _SKETCH.maxstring, _SKETCH.maxother, _SKETCH.maxlong = 2, 40, 40, 40
