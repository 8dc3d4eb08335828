"""The runtime's protocol: every request a client sends a shard, every reply a shard gives,
and every record a shard journals, as named types.

Each is a NamedTuple whose first field says what it is (a request's or record's `kind`, a
reply's `status`), so it packs with msgpack as a plain array in the field order below. The
journal's records kept the layout they had as positional tuples, so journals written before
these types were named still replay (as format 1). On the data plane two shapes changed (a
Take always carries its `state` field, an EventAck always four fields), so its handshake's
protocol number went to 2 and a client and a shard of different versions refuse each other
rather than misread. Readers use names (`request.customer_id`, `reply.map_version`);
`request_from`, `reply_from` and `record_from` turn arrays that crossed a socket or came out
of a journal back into these types.

Construct with keywords (`Moved(map_version=7)`): the first field has a default so that no
caller ever writes the kind or status by hand.

Requests are routed by their `route_key` (the third field: a customer id, or an alias key for
the directory's requests) to the partition it hashes to; the client fills in `partition`.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Union

# -- reply statuses ---------------------------------------------------------------------------
OK = "ok"
MOVED = "moved"  # the partition is not (or no longer) here: re-send under a newer map
INVALID = "invalid"  # bad input; nothing was applied
MISSING = "missing"  # no customer by that id
MERGED = "merged"  # an anonymous customer since linked into another: re-send to that one
CONFLICT = "conflict"  # contradicts the state (an alias linked to another customer)
BUSY = "busy"  # the shard's queue is full; nothing was applied
# the shard is recovering or its store failed: nothing applied, except a round that failed
# after a journal sync covered it (the rebuild replays it): a caller retries with its key
UNAVAILABLE = "unavailable"

NOT_MINE = 0  # the map version in a MOVED reply when the shard never owned the partition
UNROUTED = -1  # the partition of a request the client has not routed yet

# The journal's record format. 1: frames without a format number (before records were named);
# 2: the same records, frames carry this number; 3: outcomes carry a convert's value (older
# records read with none); 4: outcomes carry an idempotency key (older ones read with none),
# and a refused link's claim is dropped by an `unclaim` record; 5: a retire carries `finished`
# (older ones read as finished); 6: a retire carries its time (older ones may not: replayed at
# the replay's), a bury whether its forget's aliases are released (older ones read as
# released); 7: outcomes carry `via`, a claim its time (older claims read with none: they hold
# nothing back, shard/linkhold.py). A journal from a newer format is refused.
JOURNAL_FORMAT = 7
# a shard's refusal of a request for a customer whose forget is under way (shard/dispatch.py),
# which the gateway passes on as it is (calls.py)
BEING_FORGOTTEN = ("this customer is being forgotten; nothing was applied: its requests are "
                   "refused until ForgetCustomer finishes, TOMBSTONE_S at most: retry "
                   "ForgetCustomer")
# a shard's reply to a Decide it reached after its `expires`: its caller had the fallback, so
# it was not decided (the gateway treats it as no answer: the fallback, if it still waits)
EXPIRED = "the caller stopped waiting before the shard reached this Decide: not decided"


# -- requests ---------------------------------------------------------------------------------

class Event(NamedTuple):
    """Apply an event. With an idempotency key, a key seen before for the same customer is
    not applied again. With `decide` = (channel, placement), the decision for that view after
    the event comes back in the acknowledgement. `via`: the anonymous id ("~" + an alias key)
    its caller named, when the event reaches another customer by way of that alias (the
    gateway resolved it, or the client followed its MERGED), which a link of the alias under
    way holds back (shard/linkhold.py); None for an event by the customer's own id."""

    kind: str = "event"
    partition: int = UNROUTED
    customer_id: str = ""
    event_type: str = ""
    time: Any = None
    attributes: dict | None = None
    idempotency_key: str | None = None
    decide: tuple[str, str | None] | None = None
    via: str | None = None


class Fire(NamedTuple):
    """A timer fell due (from a shard's tick; journaled like an event)."""

    kind: str = "fire"
    partition: int = UNROUTED
    customer_id: str = ""
    timer: str = ""
    due: float = 0.0


class Decide(NamedTuple):
    """Decide for a view. Not `log`: a preview (GetProfile's decision for a channel its
    caller does not show, seen by an agent beside the record): it is neither logged as
    evidence nor counted in the decisions per channel. GetProfile logs the decision of the
    channel its caller shows (`shown_channel`, or a channel-bound key's own). A preview's id is
    sealed as a preview's (shard/outcomes.py): a Respond naming it is refused. (Added last, with a default; the data
    plane's protocol went to 5 for it.) `expires`: the wall-clock time its caller stops
    waiting (None: it waits); a shard that reaches it later answers Unavailable(EXPIRED)
    and decides nothing: its caller had the fallback, and would never see the decision, the
    impressions it records or its log entry. Not journaled; added last, with a default."""

    kind: str = "decide"
    partition: int = UNROUTED
    customer_id: str = ""
    channel: str = ""
    placement: str | None = None
    context: dict | None = None
    max_actions: int = 0
    explain: bool = False
    now: float | None = None
    record_impression: bool = False
    log: bool = True
    expires: float | None = None


class Outcome(NamedTuple):
    """A response to a decision (impression, accept, reject, ignore, convert). `via`: as an
    Event's (journals before it: None)."""

    kind: str = "outcome"
    partition: int = UNROUTED
    customer_id: str = ""
    action_id: str = ""
    channel: str = ""
    outcome: str = ""
    when: Any = None
    decision_id: str | None = None
    value: float | None = None  # what a convert was worth (journals before it: None)
    idempotency_key: str | None = None  # recorded once per customer (journals before: None)
    via: str | None = None


class ReadProfile(NamedTuple):
    kind: str = "profile"
    partition: int = UNROUTED
    customer_id: str = ""
    now: float = 0.0


class WatchCustomer(NamedTuple):
    """Push the customer's changed best action for a view to the actor `sink`. `by`: the id
    the stream named, which stays when a link sends the request on to the customer, so that
    pushes name it and its unregistration removes its own registration (None: journals from
    before the field, and callers that name the customer itself)."""

    kind: str = "watch"
    partition: int = UNROUTED
    customer_id: str = ""
    sink: str = ""
    channel: str = ""
    placement: str | None = None
    active: bool = True
    by: str | None = None


class Forget(NamedTuple):
    """Erase a customer (identity.py: the forget saga). With `link`, the customer is the
    anonymous profile of a forgotten customer's alias, and that link is buried here (journals
    from before this field replay with None). `when`: the time the shard forgot it, which
    the journal keeps (None on the way in, and in journals from before the field)."""

    kind: str = "forget"
    partition: int = UNROUTED
    customer_id: str = ""
    link: str | None = None
    when: float | None = None


class Bury(NamedTuple):
    """A forget's step after its Retires: its aliases are retired, the customer's requests are
    no longer refused. Its shard keeps the aliases until its last step, `finished` (after
    the finished Retires: the aliases are released), so that a retry by id cut between the
    two finds them (journals of formats before 6, which dropped them here, replay with True)."""

    kind: str = "bury"
    partition: int = UNROUTED
    customer_id: str = ""
    finished: bool = False


class Claim(NamedTuple):
    """Step 0 of a link: the customer's shard notes the alias as the customer's (identity.py),
    so a forget sees it whatever step the link is at. `when`: the time the shard took it, from
    which the link's hold runs, or a retry's, which may re-arm it (shard/linkhold.py), which
    the journal keeps so that a replay decides as the shard did and a restart starts no hold
    (None on the way in; in journals from before the field, and for an alias merged into the
    customer already, None: it holds nothing)."""

    kind: str = "claim"
    partition: int = UNROUTED
    customer_id: str = ""
    key: str = ""
    link: str = ""
    when: float | None = None


class Unclaim(NamedTuple):
    """Drop a link's claim (identity.py): a link refused at step 1 (the alias names another
    customer) sends it, so a forget of the customer leaves the alias alone. Also journaled
    for the claim a retried link's Merge drops."""

    kind: str = "unclaim"
    partition: int = UNROUTED
    customer_id: str = ""
    key: str = ""
    link: str = ""


class Resolve(NamedTuple):
    """The customer an alias names (on the alias's directory shard). `for_forget`: a forget
    saga's, which also finds the customer a forget under way retired the alias from (so a
    forget by the alias, cut and retried, finishes that customer's); other callers get the
    alias's anonymous customer then, so their requests do not re-create the forgotten one."""

    kind: str = "resolve"
    partition: int = UNROUTED
    key: str = ""
    for_forget: bool = False


class Link(NamedTuple):
    """Step 1 of a link: point the alias at the customer (identity.py)."""

    kind: str = "link"
    partition: int = UNROUTED
    key: str = ""
    customer_id: str = ""


class Unlink(NamedTuple):
    """Unlink an alias from a customer (a forget now Retires its aliases; journals from
    before replay this)."""

    kind: str = "unlink"
    partition: int = UNROUTED
    key: str = ""
    customer_id: str = ""


class Retire(NamedTuple):
    """A forget's step on an alias's directory shard: unlink the alias from the forgotten
    customer and bury the link, so a late step 1 of it is refused. Until the forget is
    `finished` (a last Retire, after its Bury), the alias resolves to the customer, so a
    forget by the alias, cut and retried, finishes the same customer's (journals of formats
    before 5, whose forgets left no alias resolving to the customer, replay with True).
    `when`: the time the shard retired it, which the journal keeps (None on the way in, and
    in journals from before the field), so a replay does not restart TOMBSTONE_S."""

    kind: str = "retire"
    partition: int = UNROUTED
    key: str = ""
    customer_id: str = ""
    finished: bool = False
    when: float | None = None


class Take(NamedTuple):
    """Step 2 of a link: the anonymous customer's state, handed over once per link. Its
    journal record carries the state, since replay cannot export it again."""

    kind: str = "take"
    partition: int = UNROUTED
    anonymous: str = ""
    link: str = ""
    target: str = ""
    state: bytes | None = None


class Merge(NamedTuple):
    """Step 3 of a link: fold the handed-over state into the customer, once per link. Ok,
    whether this Merge bound the link: a retry's (or a late one's) is False."""

    kind: str = "merge"
    partition: int = UNROUTED
    customer_id: str = ""
    link: str = ""
    key: str = ""
    state: bytes | None = None


class Settle(NamedTuple):
    """After a merge: the anonymous id's redirect keeps no state any more."""

    kind: str = "settle"
    partition: int = UNROUTED
    anonymous: str = ""
    link: str = ""


Request = Union[Event, Fire, Decide, Outcome, ReadProfile, WatchCustomer, Forget, Resolve,
                Link, Unlink, Take, Merge, Settle, Bury, Claim, Unclaim, Retire]
REQUESTS: dict[str, type] = {cls._field_defaults["kind"]: cls for cls in Request.__args__}
# requests that name a customer (the rest name an alias key or a link step's anonymous id)
CUSTOMER_KINDS = frozenset({"event", "decide", "outcome", "profile", "watch"})


def route_key(request: Request) -> str:
    """What a request is routed by: its customer id, alias key or anonymous id."""
    return request[2]


def request_from(raw: list | tuple) -> Request:
    """A request from the array it travelled as; ValueError for an unknown kind."""
    cls = REQUESTS.get(raw[0]) if raw else None
    if cls is None:
        raise ValueError(f"unknown request kind {raw[0] if raw else None!r}")
    return cls(*raw)


# -- journal records --------------------------------------------------------------------------

class EventRecord(NamedTuple):
    """An applied event, with the customer's sequence number for it (kept in the journal's
    layout; nothing reads it back: a customer's idempotency keys come back with its block)."""

    kind: str = "event"
    partition: int = 0
    customer_id: str = ""
    event_type: str = ""
    time: float = 0.0
    attributes: dict | None = None
    idempotency_key: str | None = None
    sequence: int = 0


# Every other change is journaled as the request that made it (a Take with its state).
Record = Union[EventRecord, Fire, Outcome, WatchCustomer, Forget, Link, Unlink, Take, Merge,
               Settle, Bury, Claim, Unclaim, Retire]
RECORDS: dict[str, type] = {cls._field_defaults["kind"]: cls for cls in Record.__args__}
# records whose third field is the customer they change: its LSN is stamped on the profile
STAMPED = frozenset({"event", "fire", "outcome", "merge", "watch", "forget", "claim"})


def record_from(raw: list | tuple, journal_format: int = JOURNAL_FORMAT) -> Record:
    """A record from a journal of `journal_format`; ValueError for what this version cannot
    read."""
    if not 1 <= journal_format <= JOURNAL_FORMAT:
        raise ValueError(f"journal format {journal_format} is newer than this Kairos reads "
                         f"({JOURNAL_FORMAT})")
    cls = RECORDS.get(raw[0]) if raw else None
    if cls is None:
        raise ValueError(f"unknown journal record kind {raw[0] if raw else None!r}")
    if (cls is Retire and journal_format < 5) or (cls is Bury and journal_format < 6):
        return cls(*raw)._replace(finished=True)
    return cls(*raw)


# -- replies ----------------------------------------------------------------------------------

class Ok(NamedTuple):
    """Done; `value` is the request's result (a Decision, a profile, a customer id, ...)."""

    status: str = OK
    value: Any = None


class EventAck(NamedTuple):
    """An event applied (or, `duplicate`, applied before under the same idempotency key):
    the customer's sequence number for it, and the decision the event asked for."""

    status: str = OK
    sequence: int = 0
    duplicate: bool = False
    decision: Any = None


class Forgotten(NamedTuple):
    """Whether the customer existed, and its aliases (for the caller to unlink); of an
    anonymous customer, the customer its settled link's redirect, dropped, named (the one
    that may hold its events)."""

    status: str = OK
    existed: bool = False
    aliases: list | None = None
    merged_into: str | None = None


class Moved(NamedTuple):
    status: str = MOVED
    map_version: int = NOT_MINE


class Invalid(NamedTuple):
    status: str = INVALID
    field: str = ""
    reason: str = ""


class Missing(NamedTuple):
    status: str = MISSING


class Merged(NamedTuple):
    status: str = MERGED
    customer_id: str = ""


class Conflict(NamedTuple):
    status: str = CONFLICT
    reason: str = ""


class Busy(NamedTuple):
    status: str = BUSY
    reason: str = ""  # empty: the shard is at its queue limit


class Unavailable(NamedTuple):
    status: str = UNAVAILABLE
    reason: str = ""


Reply = Union[Ok, EventAck, Forgotten, Moved, Invalid, Missing, Merged, Conflict, Busy,
              Unavailable]
_ERRORS: dict[str, type] = {MOVED: Moved, INVALID: Invalid, MISSING: Missing, MERGED: Merged,
                            CONFLICT: Conflict, BUSY: Busy, UNAVAILABLE: Unavailable}
# the OK reply's type per request kind (the rest answer Ok)
_OK_OF: dict[str, type] = {"event": EventAck, "forget": Forgotten}


def reply_from(raw: list | tuple, kind: str) -> Reply:
    """A reply, from the array it travelled as, to a request of `kind`."""
    status = raw[0]
    cls = _OK_OF.get(kind, Ok) if status == OK else _ERRORS.get(status)
    if cls is None:
        raise ValueError(f"unknown reply status {status!r}")
    return cls(*raw)
