"""Which outcomes a shard takes: those naming a decision a shard of this cluster issued and an
action it showed, at a bounded rate per customer.

Decision ids are sealed as they leave a shard: to the engine's id `seal` adds the time it was
issued, a short keyed MAC (BLAKE2b) over the customer, the id, that time, the channel and the
tags that follow, and per action shown a tag, the same MAC over the action instead, with a
secret every shard reads from the store (created once, before the first shard starts). The
first MAC is checked first, so a forger guesses one MAC per Respond for each id the decision
may have been issued to (the customer, and the anonymous ids of its links and merged aliases:
customers.py `_issued_to`), whatever the id's length (checking the action's tag alone, an id of a
thousand made-up tags was a thousand guesses). A preview's (protocol.Decide's `log` False:
GetProfile's decision for a channel its caller does not show) first MAC covers PREVIEW_MARK as
well, a decision's nothing more, as before previews were marked (so ids already issued still
open: previews issued before, as decisions): shown to nobody, a preview takes no outcome, and
without the secret its mark cannot be taken off. So
any shard can check an outcome without keeping anything per decision: after restarts,
passivation and moves, and for a customer that has no profile yet (a Decide creates none). An
outcome naming a made-up id, a preview, another customer's decision, an action the decision did
not show, another channel, a decision issued more than OUTCOME_WINDOW_S ago, or one issued
before its customer was forgotten (customers.py) is refused (INVALID_ARGUMENT) and changes
nothing. A
customer's outcomes past OUTCOMES_PER_CUSTOMER within any OUTCOME_RATE_WINDOW_S (a sliding
window, counted by each shard process: `OutcomeRate`) are refused (RESOURCE_EXHAUSTED), so
even a real decision replayed over and over steers the models at that rate at most; refused
ones count too, so guesses at a customer's decisions are held to that rate as well. A retry
of an outcome recorded before (its idempotency key, customers.py) is neither counted nor
refused: it answers DUPLICATE, records nothing and checks no seal, so it
teaches nothing and tells a guesser nothing about a decision. Outcomes that name no decision
(offline feedback) are not sealed; only the gateway lets them through, for keys with the
feedback scope.
With a store the shards do not share ("memory"), each shard has a secret of its own: outcomes
of decisions issued before their customer's partition moved are refused.

A decision's shown action learns each label (positive: accept or convert; negative: reject or
ignore) once, whichever outcomes report it. The engine's memo says so for the decisions it
keeps; `TaughtLabels` keeps it beyond them: a record per label taught (keys.py's store, apart
from the idempotency keys: neither pushes the other's records out), in the
customer's block ("label_records": its home, its partition's snapshot and handoff, folded in
by a link, erased by a forget) and journaled with the outcome that taught it (replay teaches
it again). A label taught within OUTCOME_WINDOW_S (as long as the decision takes outcomes) and
among the customer's LABELS_PER_CUSTOMER most recent is not taught again; past those, it is.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
from array import array
from bisect import bisect_right
from collections import OrderedDict
from typing import Callable, Iterable

import msgpack

from kairos.core.decision import Decision
from kairos.core.errors import InputError

from kairos.cluster.settings import (LABELS_PER_CUSTOMER, OUTCOME_RATE_WINDOW_S, OUTCOME_WINDOW_S,
                                    OUTCOMES_PER_CUSTOMER)
from kairos.cluster.shard.keys import IdempotencyKeys
from kairos.cluster.storage.store import Store

SECRET_META = "outcome-secret"  # the store's meta entry holding the cluster's sealing secret
TAG_BYTES = 6  # 48 bits a forger must guess, one Respond per guess
TAG_CHARS = 8  # base64 of TAG_BYTES
RATE_REFUSAL = "outcomes for this customer within"  # in why one is refused (load tests tell it)
# why an outcome is refused whose decision none of the ids tried was issued (the gateway
# sends a Respond by an anonymous id refused so again as its alias: requests.retried_as_alias)
NOT_ISSUED = "no decision issued to this customer showed"
# what a preview's MAC over the whole decision covers in place of a decision's empty action
PREVIEW_MARK = "preview"
PREVIEWED = ("a preview (GetProfile's decision for a channel its caller does not show), shown "
             "to nobody: it takes no outcomes")
# customers that left the rate's window dropped per outcome at most: a call adds one at most,
# so they drain, and none drops a burst of customers on the loop at once
RATE_DROPPED_PER_CALL = 4
# an id's issue time as `seal` writes it; a longer run (an id may hold 8,448 characters) would
# be a number no float holds, and the gateway's check of an outcome's time ended UNKNOWN
_ISSUED_RE = re.compile("[0-9a-f]{1,16}")
_packb = msgpack.Packer().pack  # msgpack.packb makes a Packer per call


def outcome_secret(store: Store) -> bytes:
    """The cluster's sealing secret, created in the store the first time. The controller asks
    for it before it starts any shard, so shards starting together read the same one."""
    secret = store.get_meta(SECRET_META)
    if secret is None:
        store.put_meta(SECRET_META, secrets.token_bytes(32))
        secret = store.get_meta(SECRET_META)
    return secret


class DecisionSeal:
    def __init__(self, secret: bytes, clock: Callable[[], float]):
        # keyed once: each MAC starts from a copy (keying one hashes a block of the key)
        self._keyed = hashlib.blake2b(key=secret, digest_size=TAG_BYTES)
        self._clock = clock

    def seal(self, decision: Decision, preview: bool = False) -> Decision:
        """The decision, its id sealed: `<engine id>.<issued, hex s>.<MAC><a tag per action>`;
        a `preview`'s MAC marked so (module doc)."""
        issued = f"{int(self._clock()):x}"
        shared = (decision.customer_id, decision.decision_id, issued, decision.channel)
        signer = self._signer(*shared)
        tags = "".join([_tag(signer, a.action_id) for a in decision.actions])
        whole = _tag(self._signer(*shared, tags), PREVIEW_MARK if preview else "")
        return _with_id(decision, f"{decision.decision_id}.{issued}.{whole}{tags}")

    def opened(self, issued_to: Iterable[str], decision_id: str, channel: str,
               action_id: str) -> tuple[str, str, int]:
        """The engine's id of a sealed decision that showed `action_id` on `channel` to one of
        the customers `issued_to` within OUTCOME_WINDOW_S, that customer, and when it was
        issued (a whole second, rounded down); InputError naming `decision_id` otherwise (a
        preview's says so)."""
        try:
            engine_id, issued, when, sealed = _parts(decision_id)
        except ValueError:
            raise InputError("decision_id", "not a decision id Kairos issued") from None
        if not self._clock() - OUTCOME_WINDOW_S <= when:
            raise InputError("decision_id", f"issued more than {OUTCOME_WINDOW_S:g} s ago: "
                                            f"too old for outcomes")
        whole, tags = sealed[:TAG_CHARS], sealed[TAG_CHARS:]
        for customer_id in issued_to:
            shared = (customer_id, engine_id, issued, channel)
            signer = self._signer(*shared, tags)
            if not hmac.compare_digest(whole, _tag(signer, "")):
                if hmac.compare_digest(whole, _tag(signer, PREVIEW_MARK)):
                    raise InputError("decision_id", PREVIEWED)
                continue
            tag = _tag(self._signer(*shared), action_id)
            if any(hmac.compare_digest(tag, tags[i:i + TAG_CHARS])
                   for i in range(0, len(tags), TAG_CHARS)):
                return engine_id, customer_id, when
        raise InputError("decision_id", f"{NOT_ISSUED} {action_id!r} on {channel}")

    def _signer(self, *shared: str):
        """A keyed BLAKE2b over what every tag of a decision shares (the customer, the engine's
        id, the time issued, the channel; and for the MAC over the whole, the tags), to be
        copied for each action (packed with msgpack, so no two different inputs read the
        same: the action's bytes, or the whole's mark, follow a complete array, of four
        strings or five)."""
        signer = self._keyed.copy()
        signer.update(_packb(shared))
        return signer


def _with_id(decision: Decision, decision_id: str) -> Decision:
    """The decision, every field as it was but its id: its fields copied at once, where
    Decision(...) sets each through object.__setattr__ (frozen), 2.6 us against 0.6, and
    dataclasses.replace takes twice as long as that (Decision has no __post_init__ to run)."""
    sealed = object.__new__(Decision)
    sealed.__dict__.update(vars(decision), decision_id=decision_id)
    return sealed


def issued_at(decision_id: str) -> int | None:
    """When a sealed id says its decision was issued (a whole second, rounded down); None for
    what is not a sealed id. Unproven: `DecisionSeal.opened` proves it, as the MAC covers it."""
    try:
        return _parts(decision_id)[2]
    except ValueError:
        return None


def _parts(decision_id: str) -> tuple[str, str, int, str]:
    """A sealed id's engine id, issue time (hex, and as a number) and MACs; ValueError for
    what is not one."""
    engine_id, issued, sealed = decision_id.rsplit(".", 2)
    if not _ISSUED_RE.fullmatch(issued):
        raise ValueError(f"not an issue time: {issued[:20]!r}")
    return engine_id, issued, int(issued, 16), sealed


def _tag(signer, action_id: str) -> str:
    mac = signer.copy()
    mac.update(action_id.encode())
    return base64.urlsafe_b64encode(mac.digest()).decode()


class OutcomeRate:
    """Outcomes per customer in a sliding window: one is refused once OUTCOMES_PER_CUSTOMER
    of the customer's were counted within the last OUTCOME_RATE_WINDOW_S, so no window of
    that length, wherever it starts, holds more (fixed windows let twice the limit through
    around a window's turn: a burst at its end, another at the next one's start). Kept: the
    times of a customer's outcomes counted in the last window, at most the limit's (8 bytes
    each; a lone one as a float, 64 bytes less than an array of one, as most customers have
    one), and only for customers with one there, or whose latest left it but who were not
    dropped yet: each call drops at most RATE_DROPPED_PER_CALL of those (one call dropping
    every customer of a burst held the shard's loop: a million, a second), and counts no time
    that left the window. Per shard process: a restart or a partition's move starts them
    again. Timed by `steady`, a monotonic clock (the Shard's `steady`): on the wall clock a
    step forward let twice the limit through, one back held refusals for its length.
    Customers are counted under a keyed digest of their id (`_named`), not the id, so nothing
    that erases a customer (ForgetCustomer: from memory at once) leaves its id here, where it
    stayed until drained (the digest: 0.4 us an outcome, and 16 bytes, where the id took its
    length)."""

    def __init__(self, steady: Callable[[], float], secret: bytes):
        """`secret`: the cluster's (any would do: no digest leaves the process)."""
        self._clock = steady
        # keyed once, as DecisionSeal's: each digest starts from a copy
        self._keyed = hashlib.blake2b(key=secret, digest_size=16, person=b"kairos-rate")
        self._now = -math.inf  # the latest time read: a test's clock stepped back counts from it
        # a customer's counted times, ascending, under `_named`; customers by their latest, the
        # oldest first
        self._times: OrderedDict[bytes, float | array] = OrderedDict()

    def refusal(self, customer_id: str) -> str | None:
        """Count one outcome of the customer (None); past its limit, why it is refused (not
        counted)."""
        self._now = now = max(self._now, float(self._clock()))  # a float: see `_latest`
        since = now - OUTCOME_RATE_WINDOW_S  # counted times after it are in the window
        kept = self._times
        drops = RATE_DROPPED_PER_CALL  # left to this call: it adds one at most, so they drain
        while drops and kept and _latest(next(iter(kept.values()))) <= since:
            kept.popitem(last=False)
            drops -= 1
        customer = self._named(customer_id)
        times = kept.get(customer, ())
        if isinstance(times, float):
            times = (times,)
        left = bisect_right(times, since)  # those that left the window, ignored
        if len(times) - left >= OUTCOMES_PER_CUSTOMER:
            return (f"more than {OUTCOMES_PER_CUSTOMER} {RATE_REFUSAL} "
                    f"{OUTCOME_RATE_WINDOW_S:g} s")
        if left == len(times):
            kept[customer] = now
        elif isinstance(times, array):  # in place: a copy per outcome cost O(limit)
            if left:
                del times[:left]
            times.append(now)
        else:
            kept[customer] = array("d", (times[0], now))
        kept.move_to_end(customer)
        return None

    def _named(self, customer_id: str) -> bytes:
        named = self._keyed.copy()
        named.update(customer_id.encode())
        return named.digest()


def _latest(kept: float | array) -> float:
    return kept if isinstance(kept, float) else kept[-1]


class TaughtLabels(IdempotencyKeys):
    """The engine's TaughtLabels: a customer state of its own (module doc)."""

    def __init__(self, clock: Callable[[], float]):
        super().__init__(clock, "label_records", LABELS_PER_CUSTOMER, OUTCOME_WINDOW_S,
                         legacy=None)

    def taught(self, customer_id: str, decision_id: str, action_id: str,
               positive: bool) -> bool:
        return self.get(customer_id, _label_key(decision_id, action_id, positive)) is not None

    def teach(self, customer_id: str, decision_id: str, action_id: str,
              positive: bool) -> None:
        self.remember(customer_id, _label_key(decision_id, action_id, positive), 0)


def _label_key(decision_id: str, action_id: str, positive: bool) -> str:
    """The key of a label: the engine's id of the decision (unique to the engine that issued
    it), not the sealed one, which outcomes of the same decision need not spell alike."""
    return f"{decision_id}\x00{action_id}\x00{'+' if positive else '-'}"
