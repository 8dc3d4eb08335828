"""What a decision request names, checked against the catalog, and the catalog's answer when
the request cannot be decided.

The engine, the gateway and the shard check the same things (a customer id, a channel and one
of its placements) with the same InputError messages; the gateway answers with the fallback
decision when a shard misses the deadline. The ids callers send are also held to `check_plain`
where they enter the cluster (the gateway, a shard's data plane), not by the engine, which
replays journals holding ids kept before that rule.
"""
from __future__ import annotations

import re
import uuid
from typing import Any, NamedTuple

import numpy as np

from .catalog import MAX_VALUE, FieldSpec
from .compiler import CompiledCatalog
from .decision import Decision, RankedAction
from .errors import InputError

MAX_CUSTOMER_ID_LENGTH = 256  # characters in a customer id
# characters in a profile's id: a customer's, or an anonymous visitor's, which names the alias
# ("~<type, at most 32>:<value, at most 256>", cluster/identity.py)
MAX_PROFILE_ID_LENGTH = MAX_CUSTOMER_ID_LENGTH + 34
MAX_KEY_LENGTH = 256  # characters in an idempotency key or an event id
MAX_STRING_LENGTH = MAX_VALUE  # characters in one string field or context value
# characters in a decision id: a shard's sealed id is about 48 characters and 8 more per
# action shown (a decision shows at most 1,024)
MAX_DECISION_ID_LENGTH = 8_448


class PlacementCodes(NamedTuple):
    """A channel and one of its placements, as codes into the compiled catalog."""

    channel: int
    placement: int


def shown(value: Any) -> str:
    """A value as an input error shows it: its type, then its repr."""
    return f"{type(value).__name__} {value!r}"


QUOTED = 64  # characters of a caller's value an input error quotes


def quoted(value: Any) -> str:
    """A caller's value as an input error quotes it: a string's first QUOTED characters (and
    its length, when cut), never all of a long one; anything else whole (the contract's
    fields are strings: only an in-process caller passes another type)."""
    if not isinstance(value, str) or len(value) <= QUOTED:
        return repr(value)
    return f"{value[:QUOTED]!r}... ({len(value)} characters)"


def check_customer(customer_id: Any, field: str = "customer_id",
                   limit: int = MAX_CUSTOMER_ID_LENGTH) -> str:
    """The customer id, if it is a non-empty string of at most `limit` characters; else
    InputError."""
    if not isinstance(customer_id, str) or not customer_id:
        raise InputError(field, f"expected a non-empty string, got {shown(customer_id)}")
    if len(customer_id) > limit:
        raise InputError(field, f"at most {limit} characters, got {len(customer_id)}")
    return customer_id


# what no id a caller names a customer, an alias or a request by may hold: C0 and C1 control
# characters and DEL (no id needs one; the cluster's own keys hold a NUL, keys.py's outcome
# keys, so that no caller's id is one; and a log or a terminal reads them as escapes), and
# lone surrogates (no UTF-8 encodes one, so a journal could not write it: gRPC's strings
# cannot carry one, an in-process caller's can)
_NOT_IN_IDS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def check_plain(value: str, field: str) -> str:
    """The id, if it holds none of the characters ids may not (`_NOT_IN_IDS`); else
    InputError naming the first one."""
    if value.isprintable():  # as no control character or surrogate is: most ids, at once
        return value
    found = _NOT_IN_IDS.search(value)
    if found is not None:
        raise InputError(field, f"character U+{ord(found.group()):04X} at {found.start() + 1}: "
                                f"ids hold no control characters (U+0000-U+001F, "
                                f"U+007F-U+009F) or lone surrogates")
    return value


def check_key(value: str, field: str, limit: int) -> str:
    """An optional id of a request (an idempotency key, an event or decision id) as a caller
    sends it: `check_bounded`'s, and `check_plain`."""
    return check_plain(check_bounded(value, field, limit), field)


def check_bounded(value: str, field: str, limit: int) -> str:
    """An optional string (empty: not given) of at most `limit` characters; else InputError.
    Every id a caller sends is kept or echoed somewhere (a journal, a snapshot, an ack), so
    none may be unbounded."""
    if len(value) > limit:
        raise InputError(field, f"at most {limit} characters, got {len(value)}")
    return value


def channel_code(compiled: CompiledCatalog, channel: str, field: str = "channel") -> int:
    """The channel's code; InputError listing the catalog's channels when it has no such one."""
    code = compiled.channel_index.get(channel)
    if code is None:
        raise InputError(field, f"unknown channel {quoted(channel)} (channels: "
                                f"{', '.join(compiled.channel_names)})")
    return code


def placement_codes(compiled: CompiledCatalog, channel: str,
                    placement: str | None) -> PlacementCodes:
    """The codes of a channel and of its placement, the channel's first when `placement` is
    empty or None; InputError listing the valid names otherwise."""
    ch = channel_code(compiled, channel)
    if not placement:
        return PlacementCodes(ch, 0)
    code = compiled.placement_index[ch].get(placement)
    if code is None:
        raise InputError("placement", f"unknown placement {quoted(placement)} of "
                                      f"{compiled.channel_names[ch]} (placements: "
                                      f"{', '.join(compiled.placement_names[ch])})")
    return PlacementCodes(ch, code)


def fallback_decision(compiled: CompiledCatalog, customer_id: str, channel: str,
                      placement: str | None = None, max_actions: int = 0) -> Decision:
    """The catalog's fallback for the channel, marked as such: those of its fallbacks offered
    at the placement, at most its top_k or `max_actions` (0: the top_k), as a decision shows;
    nothing is scored, so each action has priority 0 and weight 1, and no model version
    decided it."""
    ch, pl = placement_codes(compiled, channel, placement)
    # those offered at the placement, at most as many as it shows
    shown = [a for a in compiled.fallbacks.get(ch, ()) if compiled.offered[a, ch] >> pl & 1]
    top_k = int(compiled.placement_top_k[ch, pl])
    actions = tuple(RankedAction(compiled.action_ids[a],
                                 compiled.group_names[compiled.action_group[a]],
                                 compiled.treatments[a][ch], 0.0, 0.0, 0.0, 1.0,
                                 float(compiled.lever[a]), 0.0)
                    for a in shown[:min(max_actions or top_k, top_k)])
    return Decision(f"fallback-{uuid.uuid4().hex[:16]}", customer_id,
                    compiled.channel_names[ch], compiled.placement_names[ch][pl], actions,
                    compiled.version, 0, fallback=True)


def checked_vector(where: str, spec: FieldSpec, value: Any) -> np.ndarray:
    """A vector context value: `spec.size` numbers within the field's bounds, given as a
    sequence or NumPy array of numbers, or packed as little-endian float64 bytes (the gRPC
    contract's form: decoding is one copy whatever the size); else InputError."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) != 8 * spec.size:
            raise InputError(where, f"expected {spec.size} numbers packed in {8 * spec.size} "
                                    f"bytes, got {len(value)} bytes")
        numbers = np.frombuffer(value, "<f8")
    elif isinstance(value, (list, tuple, np.ndarray)):
        numbers = np.asarray(value)
        if numbers.dtype.kind not in "iuf":  # strings, bools, objects: not numbers
            raise InputError(where, f"expected {spec.size} numbers")
        numbers = numbers.astype(np.float64, copy=False)
        if numbers.shape != (spec.size,):
            raise InputError(where, f"expected {spec.size} numbers, got {numbers.size}")
    else:
        raise InputError(where, f"expected {spec.size} numbers, got {type(value).__name__}")
    # NaN fails both comparisons, so this also refuses what is not finite
    if not ((numbers >= spec.minimum) & (numbers <= spec.maximum)).all():
        raise InputError(where, f"every number must be between {spec.minimum:g} and "
                                f"{spec.maximum:g}")
    return numbers
