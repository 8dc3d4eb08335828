"""The most bytes an IngestBatch's answer can take, known before any of its events is routed.

A batch is answered an ack per event, and the acks of the events that ask for a decision
(decide_placement) carry it: 10,000 events of a 300 KB request asking a placement of 12 actions
made a 14 MB answer. A gRPC client receives at most 4 MiB by default and fails a larger answer
RESOURCE_EXHAUSTED, which tells it to retry, though every event was applied: a retry applied
them again. So a batch whose answer could pass settings.MAX_ANSWER_BYTES is refused whole,
INVALID_ARGUMENT naming `events`, before any of it is routed (`check`).

The bound, in protobuf's wire bytes, adds:
- what the answer echoes of the request, field for field no larger there: each ack's event_id,
  and its decision's customer_id, the customer the event named (or, for an event by alias,
  the alias's anonymous id "~type:value": `requests.alias_answered`, shorter than the alias's
  two fields). The request's size bounds them all: MAX_MESSAGE_BYTES, which leaves room enough
  for most batches, or else `EventBatch.ByteSize()` (70-80 ns an event);
- each ack's own fields (ACK_BYTES);
- each decision asked for, that placement's most (`_placement_bytes`, once per compiled
  catalog): its top_k longest action entries among the channel's actions (an action's id, group
  and treatment come from the catalog; an IngestAck's decision carries no agent text nor
  explanation), its sealed decision id, the channel's, placement's and catalog's names;
- to a key with profile:read, the decision for an event by alias or by an anonymous id names
  the customer the alias is linked to, not the request's: OTHER_CUSTOMER more each.
A shard may decide by a catalog the gateway has not compiled yet, in the moments after a switch:
MAX_ANSWER_BYTES leaves 64 KiB below 4 MiB for that. A batch near the bound whose decisions the
new catalog makes larger by more (a larger top_k, longer ids) is applied, and its answer may pass
a client's receive limit, which fails it RESOURCE_EXHAUSTED, as before. The server sets no send
limit of its own: an AdminService answer holds a catalog of up to 4 MiB.
"""
from __future__ import annotations

import heapq
import weakref
from typing import Sequence

from kairos.core.compiler import CompiledCatalog
from kairos.core.errors import InputError
from kairos.core.request import MAX_KEY_LENGTH, MAX_PROFILE_ID_LENGTH
from kairos.v1 import decision_pb2 as pb

from kairos.cluster import protocol
from kairos.cluster.gateway.auth import has_scope
from kairos.cluster.gateway.requests import PROFILE_SCOPE, Who
from kairos.cluster.identity import ANONYMOUS
from kairos.cluster.settings import MAX_ANSWER_BYTES, MAX_MESSAGE_BYTES
from kairos.cluster.shard.outcomes import TAG_CHARS


def _varint(n: int) -> int:
    """Bytes of a protobuf varint holding `n` (>= 0)."""
    return max(1, (n.bit_length() + 6) // 7)


def _field(size: int) -> int:
    """Bytes of a length-delimited field of `size` bytes: its tag, its length, them."""
    return size + (2 if size < 128 else 3 if size < 16384 else 1 + _varint(size))


def _utf8(text: str) -> int:
    return len(text.encode())


_UINT64 = 1 + 10  # a varint field's tag and its value, at most 10 bytes
_BOOL = 2
_DOUBLE = 1 + 8
# An ack without what it echoes: the `acks` field's tag and length (2 bytes: one without a
# decision is under 16 KiB), `sequence`, `duplicate`
ACK_BYTES = 1 + 2 + _UINT64 + _BOOL
# The longest an ack is without its decision (its event id, in UTF-8, 4 bytes a character at
# most): the length of one with a decision is counted in `_placement_bytes`
_ACK_MOST = ACK_BYTES + _field(4 * MAX_KEY_LENGTH)
# A decision's customer_id that the request did not name (UTF-8, up to 4 bytes a character)
OTHER_CUSTOMER = _field(4 * MAX_PROFILE_ID_LENGTH)
# A sealed decision id (shard/outcomes.py `DecisionSeal.seal`) but its tag per action: the
# engine's id (a random prefix of 9 characters, core/engine.py, and its count in hex, 16 at
# most), the time issued in hex (16 at most: outcomes._ISSUED_RE) and the MAC, each behind a dot
_DECISION_ID = 9 + 16 + 1 + 16 + 1 + TAG_CHARS
_RANKED_NUMBERS = 6 * _DOUBLE  # priority, propensity, value, context_weight, lever, selection
_DECISION_NUMBERS = _UINT64 + 2 * _BOOL  # model_version (an int64: 10 bytes if negative),
# fallback, control
REFUSED = ("the batch's answer could take {most} bytes ({decisions} of its events ask for a "
           "decision, each sent back in its ack), past the {limit} a gateway sends "
           "(KAIROS_MAX_ANSWER_BYTES; a gRPC client receives 4 MiB unless it raises its "
           "limit): nothing was applied; send its events in smaller batches, or ask fewer "
           "decisions (decide_placement) in one")

_by_catalog: weakref.WeakKeyDictionary[CompiledCatalog, dict[tuple[str, str] | None, int]] = \
    weakref.WeakKeyDictionary()


def decision_bytes(catalog: CompiledCatalog, checked: Sequence[tuple[Who, protocol.Event]]
                   ) -> int:
    """The most bytes the decisions the events `checked` by `catalog` ask for add to their
    batch's answer, beyond what the request's size covers, but OTHER_CUSTOMER (`check`)."""
    most = _by_catalog.get(catalog)
    if most is None:
        most = _by_catalog[catalog] = _placement_bytes(catalog)
    return sum([most[request.decide] for _, request in checked])


def check(request: pb.EventBatch, checked: Sequence[tuple[Who, protocol.Event]],
          decisions: int) -> None:
    """InputError naming `events` unless the answer to `request` (its events `checked`) is
    sure to fit in MAX_ANSWER_BYTES, its decisions taking at most `decisions` bytes
    (`decision_bytes` of its events). Each event is looked at again only for a batch that
    comes near it: a request's size, OTHER_CUSTOMER's events."""
    acks = ACK_BYTES * len(checked) + decisions
    others = len(checked) if decisions and has_scope(PROFILE_SCOPE) else 0  # at most
    if MAX_MESSAGE_BYTES + acks + OTHER_CUSTOMER * others <= MAX_ANSWER_BYTES:
        return
    if others:  # those asking for a decision by alias, or by an anonymous id
        others = sum([1 for who, event in checked if event.decide is not None and (
            who.alias_key is not None or who.customer_id.startswith(ANONYMOUS))])
    if (most := request.ByteSize() + acks + OTHER_CUSTOMER * others) > MAX_ANSWER_BYTES:
        decided = sum([1 for _, event in checked if event.decide is not None])
        raise InputError("events", REFUSED.format(most=most, decisions=decided,
                                                  limit=MAX_ANSWER_BYTES))


def _placement_bytes(catalog: CompiledCatalog) -> dict[tuple[str, str] | None, int]:
    """By (channel, placement), the most bytes the decision of an event asking for it adds to
    its ack, but its customer_id; None (no decision): 0. Once per catalog, on the event loop:
    6-7 ms for 2,000 actions on 6 channels (0.3 for the default catalog's)."""
    most: dict[tuple[str, str] | None, int] = {None: 0}
    # an action's RankedAction but its treatment, the one field a channel of its own
    fixed = [_field(_utf8(action_id)) + _field(_utf8(catalog.group_names[group]))
             + _RANKED_NUMBERS
             for action_id, group in zip(catalog.action_ids, catalog.action_group.tolist())]
    for c, channel in enumerate(catalog.channel_names):
        offered = [_field(fixed[a] + _field(_utf8(treatments[c])))
                   for a, treatments in enumerate(catalog.treatments) if c in treatments]
        for p, placement in enumerate(catalog.placement_names[c]):
            shown = heapq.nlargest(int(catalog.placement_top_k[c, p]), offered)
            decision = (_field(_DECISION_ID + TAG_CHARS * len(shown)) + _field(_utf8(channel))
                        + _field(_utf8(placement)) + sum(shown)
                        + _field(_utf8(catalog.version)) + _DECISION_NUMBERS)
            with_customer = decision + OTHER_CUSTOMER  # the longest its customer_id makes it
            ack = _ACK_MOST + _field(with_customer)
            # its field's tag and length, and what more the ack's length takes than ACK_BYTES'
            most[channel, placement] = _field(with_customer) - OTHER_CUSTOMER + _varint(ack) - 2
    return most
