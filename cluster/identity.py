"""Identity: aliases, the alias directory, and what a link leaves behind.

An alias is a (type, value) pair a channel knows a customer by: a cookie, a device id, an
e-mail address. The directory that maps aliases to customers is partitioned like the
customers, by the hash of the alias key, so it scales and moves with the shards and needs no
other store. An alias nobody has linked yet stands for an anonymous customer whose id is the
alias key behind a `~`; anonymous customers get profiles like anyone else.

Linking an alias to a customer runs in four steps, each idempotent, so a retried link merges
exactly once (see KairosClient.link):

0. the customer's shard notes the alias as the customer's (Claim), before anything points at
   the customer, so a forget that comes between any two later steps knows the alias. The note
   is kept in the directory's share of the customer's partition, not in the customer's home,
   so that a customer nobody has seen gets no profile from a link that is refused; a link
   refused at step 1 drops it again (Unclaim: the alias is another customer's);
1. the alias's directory shard points the alias at the customer (new requests go there);
2. the anonymous profile's shard hands its state over and leaves a redirect, so requests
   already on their way to the anonymous id follow it to the customer;
3. the customer's shard folds the state in, remembering the link (and the alias) in the
   customer's block so a retry is a no-op; the claim is dropped, the block holding the alias
   from here. So the directory keeps claims only of links under way (or whose client died
   before step 3: of at most CLAIMED_PER_PARTITION customers in a partition).

From step 1 the alias names the customer, but the visitor's idempotency keys reach it only at
step 3: meanwhile the customer's shard holds back the events and outcomes that come to it by
way of the alias (`via`), for LINK_HOLD_S after the alias's claim at most, re-armed by a
link retried later (cluster/shard/linkhold.py), so that a visitor's request retried by alias
is not applied on the customer and again with the visitor's state.

Forgetting a customer is a saga too (KairosClient.forget): the customer's shard erases it,
keeps the aliases it had (Claimed or linked) until the saga completes, and buries each of its
links; then each alias is retired (unlinked and its link buried) on its directory shard and
its anonymous profile forgotten (its link buried there too), unless the alias names another
customer (a link of it lost to that customer's: the profile and its redirect are the other
customer's); then Bury ends the refusal of the customer's requests; then each alias is
released (a Retire `finished`): from its Retire until then (TOMBSTONE_S at most) it resolves,
for a forget saga only (Resolve `for_forget`), to the forgotten customer, so that a forget by
the alias, cut and retried, finishes this one, releasing the alias even when cut after the
Bury; other callers get its anonymous customer, so their requests do not re-create the
forgotten one. Last, a Bury `finished` drops the alias list, which the customer's shard keeps
till then (TOMBSTONE_S at most), so that a retry by id, cut after the Bury, releases the
aliases too. A customer
whose home is damaged is not forgotten (UNAVAILABLE) until the home is restored or removed:
the aliases merged into it are known only from it.
A buried link refuses every step of that link for TOMBSTONE_S, wherever it arrives, so a step
of a link that began before the forget cannot re-create the customer or its alias. The
tombstones keep only fingerprints (a hash) of the link ids, so the erased ids are not kept.
A forget of an alias's anonymous customer (by the alias, or by that id) that finds its state
handed over by a link not settled yet is answered MERGED: the link's caller holds the state,
whose Merge dropping it here would not stop. The saga merges that link first, with no state
(a link merges once: the late Merge folds nothing), settles it, and forgets again. The
Forget names the customer of the settled redirect it dropped (`Forgotten.merged_into`): the
visitor's state may have reached it, which makes it the alias's visitor, forgotten too by a
forget by the alias. A link whose Take came after the Forget got nothing and is left alone.
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from typing import Any, Iterable

from kairos.core.errors import InputError
from kairos.core.request import quoted

from kairos.cluster.settings import TOMBSTONE_S, TOMBSTONES_PER_PARTITION
from kairos.cluster.shard.linkhold import ClaimHolds

ANONYMOUS = "~"  # prefix of anonymous customers' ids; customer ids may not start with it
MAX_ALIAS_TYPE = 32
ALIAS_TYPE = re.compile(rf"[a-z][a-z0-9_]{{0,{MAX_ALIAS_TYPE - 1}}}")
MAX_ALIAS_VALUE = 256
MAX_ANONYMOUS_ID = len(ANONYMOUS) + MAX_ALIAS_TYPE + 1 + MAX_ALIAS_VALUE  # "~type:value"
REDIRECTS_PER_PARTITION = 4096  # recent settled links whose anonymous ids still redirect
# Redirects still holding the state they handed over (Take done, Settle not yet) are not
# evicted to make room for new links: the anonymous profile's home is deleted, so that state
# is the only copy until the customer's shard merges it. Only a link client that died between
# Take and Settle leaves one behind; at this many in a partition, a Take that would hand a
# state over answers BUSY (retrying those links settles them) rather than dropping the oldest,
# acknowledged events and all (a bound on memory, four times the settled redirects').
UNSETTLED_PER_PARTITION = 16384
# Customers with aliases claimed by links not merged yet: only a link client that died between
# Claim and Merge leaves one behind; at this many in a partition, a Claim of another customer
# answers BUSY (retrying those links finishes them) rather than dropping the oldest's claims,
# which a forget of it needs to retire those aliases
CLAIMED_PER_PARTITION = 16384
# ...and claims per customer: links cancelled by their callers' deadlines between Claim and
# Merge, again and again, leave one each; at this many, its next Claim answers BUSY likewise
CLAIMS_PER_CUSTOMER = 64
# What Retire answers for an alias that names a customer other than the one forgotten
NAMES_ANOTHER = "names another"
_LINK_ID = re.compile(r"(?:[^\\>]|\\[\\>])*>(?:[^\\>]|\\[\\>])*")  # what `link_id` gives

log = logging.getLogger("kairos.shard")


def alias_key(alias_type: str, value: str, field: str = "alias") -> str:
    """The directory key of an alias, after checking it."""
    if not isinstance(alias_type, str) or not ALIAS_TYPE.fullmatch(alias_type):
        raise InputError(f"{field}.type", f"expected a lower-case name such as 'cookie' or "
                                          f"'email' (letters, digits, _), got "
                                          f"{quoted(alias_type)}")
    if not isinstance(value, str) or not value:
        raise InputError(f"{field}.value", "expected a non-empty string")
    if len(value) > MAX_ALIAS_VALUE:
        raise InputError(f"{field}.value", f"longer than {MAX_ALIAS_VALUE} characters")
    return f"{alias_type}:{value}"


def anonymous_id(key: str) -> str:
    return ANONYMOUS + key


def anonymous_alias(customer_id: str) -> str | None:
    """The key of the alias an anonymous id ("~type:value") names; None for any other id."""
    if not customer_id.startswith(ANONYMOUS) or len(customer_id) > MAX_ANONYMOUS_ID:
        return None
    alias_type, _, value = customer_id[len(ANONYMOUS):].partition(":")
    try:
        return alias_key(alias_type, value)
    except InputError:
        return None


def link_id(key: str, customer_id: str) -> str:
    """Linking the same alias to the same customer again is the same link; two links are
    two ids, whatever '>' their ids hold (each part's '\\' and '>' escaped)."""
    return f"{_escaped(key)}>{_escaped(customer_id)}"


def link_ids(key: str, customer_id: str) -> tuple[str, ...]:
    """The ids the link is known by: `link_id`, and, for ids holding '>' or '\\', the one
    Kairos gave it before (`key>customer_id`, which two links could share) in blocks,
    redirects, journals and tombstones, unless it reads as another link's `link_id`."""
    legacy, escaped = f"{key}>{customer_id}", link_id(key, customer_id)
    return (escaped,) if escaped == legacy or _LINK_ID.fullmatch(legacy) else (escaped, legacy)


def _escaped(part: str) -> str:
    return part.replace("\\", "\\\\").replace(">", "\\>")


def fingerprint(value: str, secret: bytes) -> str:
    """A one-way stand-in for an id, for what outlives the id's erasure (tombstones) and for
    logs. Keyed with the cluster's secret: an unkeyed hash of an e-mail address can be found
    again by hashing a list of addresses."""
    return hashlib.blake2b(value.encode(), key=secret[:64], digest_size=16,
                           person=b"kairos-id").hexdigest()


def check_linkable(customer_id: str, field: str = "customer_id") -> None:
    if customer_id.startswith(ANONYMOUS):
        raise InputError(field, f"ids starting with {ANONYMOUS!r} are anonymous profiles; "
                                f"link aliases to a known customer's id")


class Directory:
    """A shard's share of the alias directory, and the redirects of merged anonymous ids,
    both per partition so they move with their partition."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret  # keys the fingerprints of tombstones (the cluster's, in the store)
        self.aliases: dict[int, dict[str, str]] = {}  # partition -> alias key -> customer
        # partition -> anonymous id -> [customer, link id, the state handed over (until the
        # customer's shard confirms the merge)]
        self.redirects: dict[int, OrderedDict[str, list]] = {}
        # partition -> the anonymous ids of its redirects holding no state, oldest first:
        # the ones evicted to bound the redirects
        self._settled: dict[int, OrderedDict[str, None]] = {}
        self._redirected: dict[str, str] = {}  # anonymous id -> customer, for the hot path
        # partition -> fingerprint of a forgotten customer's link -> when it was buried
        self.buried: dict[int, OrderedDict[str, float]] = {}
        # partition -> fingerprint of a forgotten customer -> when: apart from the links', so
        # that erasing many customers (any id, seen or not) never pushes a link's out
        self.forgotten: dict[int, OrderedDict[str, float]] = {}
        # partition -> customer being forgotten -> its aliases until its Bury (then `releasing`)
        self.forgetting: dict[int, OrderedDict[str, list[str]]] = {}
        # partition -> customer buried -> [its aliases, when it was forgotten] until its forget
        # confirms them released (TOMBSTONE_S at most): a retry by id finds them again
        self.releasing: dict[int, OrderedDict[str, list]] = {}
        # partition -> alias key -> [customer being forgotten, when] from its Retire until
        # the forget is finished: the alias resolves to it meanwhile
        self.retiring: dict[int, OrderedDict[str, list]] = {}
        # partition -> customer -> the aliases its links under way claimed (until each merges,
        # is refused, or the customer is forgotten), the customer claiming last at the end
        self.claimed: dict[int, dict[str, list[str]]] = {}
        self.holds = ClaimHolds()  # what the claims hold back, and until when (`linking`)

    def claim(self, partition: int, customer_id: str, key: str,
              when: float | None = None) -> None:
        """Note the alias as claimed by the customer's link under way (`claim_refusal` said
        there is room: a snapshot's or a journal's claims are all noted again), at `when`
        (None: it holds nothing back; a claim again keeps its hold: ClaimHolds.claimed)."""
        mine = self.claimed.setdefault(partition, {})
        keys = mine[customer_id] = mine.pop(customer_id, [])
        self.holds.claimed(partition, customer_id, key, when, again=key in keys)
        if key not in keys:
            keys.append(key)

    def linking(self, partition: int, customer_id: str, via: str, now: float) -> bool:
        """Whether a request that came to the customer by way of `via` (an alias's anonymous
        id) meets a link of that alias into it under way (claimed, not merged) whose claim
        holds it back (ClaimHolds.linking): the visitor's keys reach the customer only with
        the link's Merge."""
        return via.startswith(ANONYMOUS) and self.holds.linking(
            partition, customer_id, via[len(ANONYMOUS):], now)

    def claim_refusal(self, partition: int, customer_id: str) -> str | None:
        """Why a new claim by the customer is refused for now (None: it is not): a claim
        dropped to make room would leave a forget of the customer blind to that alias, which
        would keep naming the erased id."""
        mine = self.claimed.get(partition, {})
        keys = mine.get(customer_id)
        if keys is not None and len(keys) >= CLAIMS_PER_CUSTOMER:
            return (f"customer {customer_id!r} has {CLAIMS_PER_CUSTOMER} links under way "
                    f"(claimed, not merged): retry those links (LinkIdentity, the same alias "
                    f"and customer) to finish them, then this one")
        if keys is None and len(mine) >= CLAIMED_PER_PARTITION:
            return (f"its partition holds {CLAIMED_PER_PARTITION} customers with links under "
                    f"way (claimed, not merged): retry those links to finish them, then this "
                    f"one")
        return None

    def unclaim(self, partition: int, customer_id: str, key: str) -> bool:
        """The alias is no longer the claim of a link under way; whether it was."""
        mine = self.claimed.get(partition, {})
        keys = mine.get(customer_id, [])
        if key not in keys:
            return False
        keys.remove(key)
        self.holds.drop(partition, customer_id, key)
        if not keys:
            del mine[customer_id]
        return True

    def claims(self, partition: int, customer_id: str) -> list[str]:
        """The aliases the customer's links under way claimed."""
        return list(self.claimed.get(partition, {}).get(customer_id, []))

    def drop_claims(self, partition: int, customer_id: str) -> list[str]:
        """The aliases the customer's links under way claimed, no longer noted here."""
        self.holds.drop(partition, customer_id)
        return self.claimed.get(partition, {}).pop(customer_id, [])

    def resolve(self, partition: int, key: str, now: float, for_forget: bool = False) -> str:
        """The customer the alias is linked to; else, `for_forget`, the one a forget under way
        retired it from (a forget by the alias, retried, must find that customer again) within
        TOMBSTONE_S; else its anonymous customer."""
        retiring = self.retiring.get(partition, {}).get(key) if for_forget else None
        if retiring is not None and now - retiring[1] < TOMBSTONE_S:
            return self.linked(partition, key) or retiring[0]
        return self.linked(partition, key) or anonymous_id(key)

    def linked(self, partition: int, key: str) -> str | None:
        return self.aliases.get(partition, {}).get(key)

    def link(self, partition: int, key: str, customer_id: str) -> str | None:
        """Point the alias at the customer; the customer it already names, if another."""
        current = self.aliases.setdefault(partition, {}).setdefault(key, customer_id)
        return None if current == customer_id else current

    def unlink(self, partition: int, key: str, customer_id: str) -> bool:
        mine = self.aliases.get(partition, {})
        if mine.get(key) != customer_id:
            return False
        del mine[key]
        return True

    @property
    def redirecting(self) -> bool:
        return bool(self._redirected)

    def redirect_of(self, customer_id: str) -> str | None:
        return self._redirected.get(customer_id)

    def handed_over(self, partition: int, anonymous: str) -> list | None:
        return self.redirects.get(partition, {}).get(anonymous)

    def leave_redirect(self, partition: int, anonymous: str, customer_id: str, link: str,
                       state: bytes | None) -> None:
        self.drop_redirect(partition, anonymous)
        self.redirects.setdefault(partition, OrderedDict())[anonymous] = \
            [customer_id, link, state]
        self._redirected[anonymous] = customer_id
        if state is None:
            self._settle(partition, anonymous)

    def redirected_by(self, partition: int, anonymous: str, link: str) -> bool:
        """Whether the anonymous customer's redirect is the link's (by its id then, or now)."""
        entry = self.handed_over(partition, anonymous)
        return entry is not None and (
            link == entry[1] or link in link_ids(anonymous[len(ANONYMOUS):], entry[0]))

    def settle(self, partition: int, anonymous: str, link: str) -> None:
        """The merge is confirmed: the handed-over state is no longer needed."""
        entry = self.handed_over(partition, anonymous)
        if self.redirected_by(partition, anonymous, link) and entry[2] is not None:
            entry[2] = None
            self._settle(partition, anonymous)

    def _settle(self, partition: int, anonymous: str) -> None:
        settled = self._settled.setdefault(partition, OrderedDict())
        settled[anonymous] = None
        if len(settled) > REDIRECTS_PER_PARTITION:
            self.drop_redirect(partition, next(iter(settled)))

    def take_refusal(self, partition: int) -> str | None:
        """Why a Take handing a state over is refused for now (None: it is not): a state
        dropped to make room is the only copy of its visitor's acknowledged events."""
        if len(self.redirects.get(partition, ())) - len(self._settled.get(partition, ())) < \
                UNSETTLED_PER_PARTITION:
            return None
        return (f"its partition holds {UNSETTLED_PER_PARTITION} anonymous customers' states "
                f"handed over by links never merged (their callers gave up after step 2): "
                f"retry those links (LinkIdentity, the same alias and customer) to finish "
                f"them, then this one")

    def drop_redirect(self, partition: int, anonymous: str) -> None:
        self.redirects.get(partition, {}).pop(anonymous, None)
        self._settled.get(partition, {}).pop(anonymous, None)
        self._redirected.pop(anonymous, None)

    # -- tombstones of forgotten customers -----------------------------------------------------

    def bury(self, partition: int, link: str, when: float) -> None:
        """Refuse every step of the link for TOMBSTONE_S after `when`."""
        _bury(self.buried, partition, fingerprint(link, self.secret), when)

    def is_buried(self, partition: int, link: str, now: float) -> bool:
        when = self.buried.get(partition, {}).get(fingerprint(link, self.secret))
        return when is not None and now - when < TOMBSTONE_S

    def link_buried(self, partition: int, key: str, customer_id: str, now: float) -> bool:
        """Whether the link of the alias to the customer is buried, by any of its ids."""
        return any(self.is_buried(partition, link, now) for link in link_ids(key, customer_id))

    def bury_customer(self, partition: int, customer_id: str, when: float) -> None:
        """Note that the customer was forgotten at `when`, for TOMBSTONE_S (at most
        TOMBSTONES_PER_PARTITION a partition, the oldest going first)."""
        _bury(self.forgotten, partition, fingerprint(customer_id, self.secret), when)

    def forgotten_at(self, partition: int, customer_id: str) -> float | None:
        """When the customer was last forgotten, while its tombstone is kept."""
        return self.forgotten.get(partition, {}).get(fingerprint(customer_id, self.secret))

    def start_forget(self, partition: int, customer_id: str, aliases: Iterable[str]) -> list[str]:
        """Note the aliases a forget must retire (with those an earlier try noted); all of
        them. A customer without any is not noted: its forget has nothing left to do."""
        mine = self.forgetting.setdefault(partition, OrderedDict())
        pending = mine.get(customer_id, [])
        pending.extend(a for a in aliases if a not in pending)
        if pending:
            mine[customer_id] = pending
        while len(mine) > TOMBSTONES_PER_PARTITION:
            # only forgets whose client died before Bury pile up: a retry of the oldest
            # would no longer retire its aliases, so it must not go unseen
            gone, _ = mine.popitem(last=False)
            log.error("partition %d holds over %d forgets never finished: the oldest "
                      "(customer %s) is dropped, and a retry of it retires no alias",
                      partition, TOMBSTONES_PER_PARTITION, fingerprint(gone, self.secret))
        return list(pending)

    def being_forgotten(self, partition: int, customer_id: str, now: float) -> bool:
        """Whether the customer's forget is under way (not yet buried) and was tried less than
        TOMBSTONE_S ago, as its tombstone says: as long as its links' tombstones, which make a
        retry sound, last (and all the shard knows of when it began). Past that, a forget whose
        client died before its Bury no longer holds the customer's requests back; a retry
        still finds the aliases to retire."""
        if customer_id not in self.forgetting.get(partition, ()):  # the hot path: no hash
            return False
        when = self.forgotten_at(partition, customer_id)
        return when is not None and now - when < TOMBSTONE_S

    def retire(self, partition: int, key: str, customer_id: str, when: float) -> None:
        """The alias resolves to the customer until its forget is finished (`release`), for
        TOMBSTONE_S at most (a forget whose client died after its Bury leaves it)."""
        mine = self.retiring.setdefault(partition, OrderedDict())
        mine[key] = [customer_id, when]
        mine.move_to_end(key)
        while mine and (len(mine) > TOMBSTONES_PER_PARTITION or
                        next(iter(mine.values()))[1] <= when - TOMBSTONE_S):
            crowded = len(mine) > TOMBSTONES_PER_PARTITION
            _, (customer, _) = mine.popitem(last=False)
            if crowded:
                log.error("partition %d holds over %d aliases of forgets never finished: the "
                          "oldest (customer %s) is dropped, and a forget by it, retried, "
                          "finds that customer no more", partition, TOMBSTONES_PER_PARTITION,
                          fingerprint(customer, self.secret))

    def release(self, partition: int, key: str, customer_id: str) -> bool:
        """The customer's forget is finished: the alias no longer resolves to it; whether it
        did."""
        mine = self.retiring.get(partition, {})
        if mine.get(key, [None])[0] != customer_id:
            return False
        del mine[key]
        return True

    def end_forget(self, partition: int, customer_id: str, when: float) -> bool:
        """The forget's aliases are retired (its Bury): the customer's requests are taken
        again, and the aliases are kept until the forget releases them (`released`), for
        TOMBSTONE_S after `when` at most, so a retry by id, cut after this, releases them too;
        whether it was on."""
        aliases = self.forgetting.get(partition, {}).pop(customer_id, None)
        if aliases is None:
            return False
        self._keep(partition, customer_id, aliases, when)
        return True

    def _keep(self, partition: int, customer_id: str, aliases: list[str], when: float) -> None:
        mine = self.releasing.setdefault(partition, OrderedDict())
        mine[customer_id] = [aliases, when]
        mine.move_to_end(customer_id)
        while mine and (len(mine) > TOMBSTONES_PER_PARTITION or
                        next(iter(mine.values()))[1] <= when - TOMBSTONE_S):
            mine.popitem(last=False)  # its aliases' `retiring` entries are dropped by now too

    def unrelease(self, partition: int, customer_id: str, now: float) -> list[str]:
        """The aliases of the customer's forget, buried and not yet released less than
        TOMBSTONE_S ago, no longer kept here (a retry of the forget notes them again)."""
        aliases, when = self.releasing.get(partition, {}).pop(customer_id, ([], now))
        return aliases if now - when < TOMBSTONE_S else []

    def released(self, partition: int, customer_id: str) -> bool:
        """The forget's aliases are released: drop what is kept of it; whether any was."""
        buried = self.releasing.get(partition, {}).pop(customer_id, None)
        # a journal's Bury from before `released` was its forget's end: its list is dropped
        unburied = self.forgetting.get(partition, {}).pop(customer_id, None)
        return buried is not None or unburied is not None

    # -- partition handoff ---------------------------------------------------------------------

    def export(self, partitions: Iterable[int]) -> dict[str, Any]:
        return {"aliases": {p: self.aliases.get(p, {}) for p in partitions},
                "redirects": {p: list(self.redirects.get(p, {}).items()) for p in partitions},
                "buried": {p: list(self.buried.get(p, {}).items()) for p in partitions},
                "forgotten": {p: list(self.forgotten.get(p, {}).items()) for p in partitions},
                "forgetting": {p: list(self.forgetting.get(p, {}).items())
                               for p in partitions},
                "releasing": {p: list(self.releasing.get(p, {}).items())
                              for p in partitions},
                "retiring": {p: list(self.retiring.get(p, {}).items()) for p in partitions},
                "claimed": {p: self.claimed.get(p, {}) for p in partitions},
                **self.holds.export(partitions)}

    def load(self, payload: dict[str, Any]) -> None:
        for p, aliases in payload["aliases"].items():
            self.aliases[int(p)] = dict(aliases)
        for p, redirects in payload["redirects"].items():
            for anonymous, (customer_id, link, state) in redirects:
                self.leave_redirect(int(p), anonymous, customer_id, link, state)
        # snapshots and handoffs from before tombstones have neither
        for kind, marks in (("buried", self.buried), ("forgotten", self.forgotten)):
            for p, buried in payload.get(kind, {}).items():
                for mark, when in buried:
                    _bury(marks, int(p), mark, when)
        for p, forgetting in payload.get("forgetting", {}).items():
            for customer_id, aliases in forgetting:
                self.start_forget(int(p), customer_id, aliases)
        for p, releasing in payload.get("releasing", {}).items():
            for customer_id, (aliases, when) in releasing:
                self._keep(int(p), customer_id, list(aliases), when)
        for p, retiring in payload.get("retiring", {}).items():
            for key, (customer_id, when) in retiring:
                self.retire(int(p), key, customer_id, when)
        for p, claimed in payload.get("claimed", {}).items():
            for customer_id, keys in claimed.items():
                for key in keys:
                    self.claim(int(p), customer_id, key)
        self.holds.load(payload)

    def drop(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.aliases.pop(p, None)
            self.buried.pop(p, None)
            self.forgotten.pop(p, None)
            self.forgetting.pop(p, None)
            self.releasing.pop(p, None)
            self.retiring.pop(p, None)
            self.claimed.pop(p, None)
            self.holds.drop(p)
            self._settled.pop(p, None)
            for anonymous in self.redirects.pop(p, {}):
                self._redirected.pop(anonymous, None)

    def count(self) -> int:
        return sum(len(a) for a in self.aliases.values())


def _bury(marks: dict[int, OrderedDict[str, float]], partition: int, mark: str,
          when: float) -> None:
    mine = marks.setdefault(partition, OrderedDict())
    mine[mark] = when
    mine.move_to_end(mark)
    while mine and (len(mine) > TOMBSTONES_PER_PARTITION or
                    next(iter(mine.values())) <= when - TOMBSTONE_S):
        mine.popitem(last=False)
