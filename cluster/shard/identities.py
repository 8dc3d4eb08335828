"""Identity on a shard: the alias directory's requests, the steps of a link, and the steps
of forgetting a customer (see cluster/identity.py for both sagas and the Directory).

The directory (this shard's share of it) answers Resolve, Link, Unlink and Retire for the
aliases of its partitions. A link's Claim notes the alias as the customer's in the directory's
share of the customer's partition (identity.py), until its Merge or the Unclaim of a link
refused at step 1; Take hands an anonymous customer's state over and leaves a redirect
(requests still on their way to the anonymous id answer MERGED); Merge folds the state into
the customer once per link id; Settle drops the state the redirect kept for retries. Each
customer remembers the aliases and the links merged into it (`CustomerIdentities`), in its
block, so a retried link merges once even after the customer moved or was passivated, and a
forget finds its aliases there (or answers UNAVAILABLE when the home is damaged). Every link
step is refused (CONFLICT) once its link is buried by a forget (that of a link claimed before
the forget began); a Claim or Merge to a customer whose forget is under way is refused
FORGETTING, as the customer's other requests are (dispatch.py), so a link begun meanwhile cannot
re-create it. A forget also buries the customer itself (`Directory.forgotten_at`), so an
outcome of a decision issued to it before cannot bring it back (customers.py). Homes are
deleted only once a snapshot covers the records saying so (journaling.py: `delete_later`).
"""
from __future__ import annotations

from typing import Any

import msgpack

from kairos.cluster.identity import ANONYMOUS, NAMES_ANOTHER, Directory, link_id, link_ids
from kairos.cluster.protocol import (BEING_FORGOTTEN, Bury, Busy, Claim, Conflict, Forget,
                                     Forgotten, Invalid, Link, Merge, Merged, Ok, Reply, Resolve,
                                     Retire, Settle, Take, Unavailable, Unclaim, Unlink)
from kairos.cluster.shard.decisionlog import DecisionLog
from kairos.cluster.shard.context import ShardContext, touch
from kairos.cluster.shard.journaling import Journaling
from kairos.cluster.shard.residency import HomeDamaged, Residency
from kairos.cluster.settings import ALIASES_PER_CUSTOMER, SHARD_ROUND_BYTES
from kairos.cluster.shard.rounds import taken_budget
from kairos.cluster.shard.watches import Watches
from kairos.cluster.storage import blocks

_pack = msgpack.Packer(use_bin_type=True).pack
_BIN_HEADER = 4  # a state's bin header past an empty one's (msgpack's bin 32: 5 bytes, not 1)
# the answer to a request for a customer whose forget is under way (its aliases not yet retired
# resolve to it): applied, it would re-create the customer the forget is erasing
FORGETTING = Unavailable(reason=BEING_FORGOTTEN)


class CustomerIdentities:
    """Per resident customer: the aliases merged into it and the links that merged them
    (blocks written before Claims were noted in the directory also hold aliases claimed)."""

    def __init__(self) -> None:
        self._of: dict[str, dict[str, list[str]]] = {}

    def aliases(self, customer_id: str) -> list[str]:
        return list(self._of.get(customer_id, {}).get("aliases", []))

    def claim(self, customer_id: str, key: str) -> dict[str, list[str]]:
        """Note that the alias names the customer (or is about to); its identities."""
        mine = self._of.setdefault(customer_id, {"aliases": [], "links": []})
        if key not in mine["aliases"]:
            mine["aliases"].append(key)
        return mine

    def link(self, customer_id: str, key: str) -> bool:
        """Note that the alias names the customer; whether its link is new (and note it)."""
        mine = self.claim(customer_id, key)
        if any(link in mine["links"] for link in link_ids(key, customer_id)):
            return False
        mine["links"].append(link_id(key, customer_id))
        return True

    # -- riding along in the customer's block (residency.py) ----------------------------------

    def extra(self, customer_id: str) -> dict[str, Any]:
        return dict(self._of.get(customer_id, {}))

    def restore(self, customer_id: str, extra: dict[str, Any]) -> None:
        for part in ("aliases", "links"):
            if extra.get(part):
                mine = self._of.setdefault(customer_id, {"aliases": [], "links": []})
                mine[part].extend(x for x in extra[part] if x not in mine[part])

    def drop(self, customer_id: str, evicted: bool) -> None:
        self._of.pop(customer_id, None)


class IdentityRequests:
    def __init__(self, ctx: ShardContext, residency: Residency, journaling: Journaling,
                 directory: Directory, identities: CustomerIdentities,
                 decision_log: DecisionLog, watches: Watches):
        self._ctx = ctx
        self._watches = watches
        self._decision_log = decision_log
        self._residency = residency
        self._journaling = journaling
        self._directory = directory
        self._identities = identities
        # the round (its `touched`, one per round) and the state bytes its Takes handed over
        self._taken: tuple[dict[str, float], int] = ({}, 0)

    def resolve(self, batch: list[Resolve], touched: dict[str, float]) -> list[Reply]:
        """The customer an alias names: its linked customer, or its anonymous one (or, to a
        forget saga, the customer a forget under way retired it from)."""
        now = self._ctx.clock()
        return [Ok(value=self._directory.resolve(r.partition, r.key, now, r.for_forget))
                for r in batch]

    def claim(self, batch: list[Claim], touched: dict[str, float]) -> list[Reply]:
        """Step 0: note the alias as the customer's, so a forget finds it from here on, and
        when (a retry keeps its hold, or re-arms one ended: linkhold.ClaimHolds). The customer
        is not made resident: a link refused at step 1 leaves it no profile."""
        replies: list[Reply] = []
        for r in batch:
            if self._buried(r.partition, r.key, r.customer_id):
                replies.append(_refused(r.customer_id))
                continue
            refused = None if self._journaling.replaying else \
                self._forgetting(r) or self._claim_refusal(r)
            if refused is not None:
                replies.append(refused)
                continue
            # taken now, or, replayed, when it was taken (so a replayed retry re-arms its hold
            # as it did); an alias merged already (a link retried after it finished) holds
            # nothing back
            when = r.when if self._journaling.replaying else (
                None if r.key in self._identities.aliases(r.customer_id) else self._ctx.clock())
            self._directory.claim(r.partition, r.customer_id, r.key, when)
            self._journaling.record(r._replace(when=when))
            replies.append(Ok())
        return replies

    def _claim_refusal(self, r: Claim) -> Reply | None:
        """BUSY past the claims of links under way the directory keeps (identity.py);
        CONFLICT for an alias past ALIASES_PER_CUSTOMER (`_new_alias`); None for one the
        customer holds already (a retry)."""
        p, customer_id = r.partition, r.customer_id
        try:  # its block holds the aliases merged into it
            self._residency.activate(customer_id, p, create=False)
        except HomeDamaged as exc:
            return Unavailable(reason=str(exc))
        new = self._new_alias(r)
        if not isinstance(new, Ok):
            return new
        busy = self._directory.claim_refusal(p, customer_id)
        return None if busy is None else Busy(reason=busy)

    def _new_alias(self, r: Claim | Merge) -> Reply | None:
        """Of an alias the (resident) customer neither holds nor claimed: CONFLICT past
        ALIASES_PER_CUSTOMER (its block's and those claimed), which a forget's reply lists,
        else Ok; None for one it has (a retry)."""
        aliases = {*self._identities.aliases(r.customer_id),
                   *self._directory.claims(r.partition, r.customer_id)}
        if r.key in aliases:
            return None
        if len(aliases) >= ALIASES_PER_CUSTOMER:
            return Conflict(reason=f"customer {r.customer_id!r} has {len(aliases)} aliases, "
                                   f"KAIROS_ALIASES_PER_CUSTOMER: it takes no other")
        return Ok()

    def unclaim(self, batch: list[Unclaim], touched: dict[str, float]) -> list[Reply]:
        """A link refused at step 1: its alias is another customer's, which a forget of this
        one must not retire (nor erase the alias's anonymous profile, a later visitor's)."""
        for r in batch:
            if self._directory.unclaim(r.partition, r.customer_id, r.key):
                self._journaling.record(r)
        return [Ok()] * len(batch)

    def link(self, batch: list[Link], touched: dict[str, float]) -> list[Reply]:
        """Step 1: point the alias at the customer; CONFLICT if it names another one."""
        replies: list[Reply] = []
        for r in batch:
            if self._buried(r.partition, r.key, r.customer_id):
                replies.append(_refused(r.customer_id))
            elif self._directory.link(r.partition, r.key, r.customer_id) is not None:
                replies.append(Conflict(reason=f"alias {r.key!r} is linked to another "
                                               f"customer; forget that customer (or the "
                                               f"alias) first"))
            else:
                replies.append(Ok())
                self._journaling.record(r)
        return replies

    def unlink(self, batch: list[Unlink], touched: dict[str, float]) -> list[Reply]:
        """Forget an alias of a customer; whether it named that customer."""
        replies: list[Reply] = []
        for r in batch:
            unlinked = self._directory.unlink(r.partition, r.key, r.customer_id)
            replies.append(Ok(value=unlinked))
            if unlinked:
                self._journaling.record(r)
                self._journaling.erase_later(r.partition, r.customer_id)
        return replies

    def retire(self, batch: list[Retire], touched: dict[str, float]) -> list[Reply]:
        """A forget's step: unlink the alias from the forgotten customer and bury the link,
        so its step 1, arriving late, is refused; whether the alias named the customer, or
        NAMES_ANOTHER: a link of it to another customer won, and its anonymous profile (or
        the redirect and state it handed over) is that customer's, not to be erased.
        Finished (after the forget's Bury): whether the alias still resolved to it."""
        replies: list[Reply] = []
        for r in batch:
            now = self._when(r)
            p, key = r.partition, r.key
            if r.finished:
                released = self._directory.release(p, key, r.customer_id)
                replies.append(Ok(value=released))
                if self._journaling.replaying:
                    # a format-4 retire too (read as finished): the whole of its forget's step
                    self._directory.unlink(p, key, r.customer_id)
                    if not self._directory.link_buried(p, key, r.customer_id, now):
                        self._directory.bury(p, link_id(key, r.customer_id), now)
                elif released:
                    self._journaling.record(r)
                    self._journaling.erase_later(p, r.customer_id)
                continue
            if self._directory.unlink(p, key, r.customer_id):
                replies.append(Ok(value=True))
            elif self._directory.linked(p, key) is None:
                replies.append(Ok(value=False))
            else:
                replies.append(Ok(value=NAMES_ANOTHER))
            if replies[-1].value != NAMES_ANOTHER:
                self._directory.retire(p, key, r.customer_id, now)
            self._directory.bury(r.partition, link_id(r.key, r.customer_id), now)
            self._journaling.record(r._replace(when=now))
            self._journaling.erase_later(r.partition, r.customer_id)
        return replies

    def take(self, batch: list[Take], touched: dict[str, float]) -> list[Reply]:
        """Step 2: hand an anonymous customer's state over (None if it has none) and redirect
        its id. A retry of the same link gets the same state back. Replayed, the state comes
        from the record: the customer it was exported from is gone. The states a round hands
        over stay within `taken_budget` (rounds.py: its frame must hold them): a Take past it
        answers BUSY and changes nothing, for its link's caller to retry in a later round (as
        does one past the states kept for links not settled: identity.py); one whose state
        no round could hand over, or whose Merge no round could carry, answers CONFLICT and
        changes nothing (the link cannot finish: the caller is told why)."""
        replies: list[Reply] = []
        for r in batch:
            p, anonymous = r.partition, r.anonymous
            if self._buried(p, anonymous[len(ANONYMOUS):], r.target):
                replies.append(_refused(r.target))
                continue
            earlier = self._directory.handed_over(p, anonymous)
            if earlier is not None:  # the same link if to the same customer
                target, _, state = earlier
                replies.append(Ok(value=state if target == r.target else None))
                continue
            state = r.state if self._journaling.replaying else None
            try:
                resident = self._residency.activate(anonymous, p, create=False)
            except HomeDamaged as exc:  # its state cannot travel: the link waits
                replies.append(Unavailable(reason=str(exc)))
                continue
            if resident:
                if not self._journaling.replaying:
                    state = blocks.pack(self._residency.export([anonymous]))
                    refused = self._unsettled_full(p) or self._over_budget(r, len(state),
                                                                            touched)
                    if refused is not None:
                        replies.append(refused)
                        continue
                self._residency.evict(anonymous, p)
                self._journaling.delete_later(p, anonymous)
            touched.pop(anonymous, None)  # its changes this round left with it: none to push
            self._directory.leave_redirect(p, anonymous, r.target, r.link, state)
            self._journaling.record(r._replace(state=state))
            replies.append(Ok(value=state))
        return replies

    def _unsettled_full(self, partition: int) -> Busy | None:
        refused = self._directory.take_refusal(partition)
        return None if refused is None else Busy(reason=refused)

    def _over_budget(self, r: Take, size: int, touched: dict[str, float]) -> Reply | None:
        """The refusal of a state of `size` bytes past what the round may still hand over
        (None: it is counted in); CONFLICT for one no round can hand over, or whose Merge (the
        state and the link's ids: its key is shorter than its link) no round can take."""
        budget = taken_budget()
        merge = size + len(_pack(Merge(partition=-1 << 63, customer_id=r.target, link=r.link,
                                       key=r.link, state=b""))) + _BIN_HEADER
        if size > budget or merge > SHARD_ROUND_BYTES:
            return Conflict(reason=f"the anonymous customer's state packs to {size} bytes, and "
                                   f"a link hands over at most {budget} in a round and merges "
                                   f"at most {SHARD_ROUND_BYTES} (KAIROS_SHARD_ROUND_BYTES) of "
                                   f"state and ids: this link cannot finish")
        taken = self._taken[1] if self._taken[0] is touched else 0
        if taken + size > budget:
            return Busy(reason=f"this round handed over {taken} bytes of customers' states, "
                               f"and this one's {size} would pass its {budget}: retry the link")
        self._taken = (touched, taken + size)
        return None

    def merge(self, batch: list[Merge], touched: dict[str, float]) -> list[Reply]:
        """Step 3: fold handed-over state into the customer, once per link; whether this
        Merge bound the link (and folded its state, if any): a forget saga's Merge with no
        state that did folded nothing into the customer, and the link's own, late, folds
        nothing either (sagas.py). The link's claim is dropped: the block holds the alias."""
        replies: list[Reply] = []
        for r in batch:
            try:  # before any change: a state that fails to fold would fail the round
                block = None if r.state is None else _handed_over(r.state)
            except blocks.BlockCorrupt as exc:
                replies.append(Invalid(field="state", reason=str(exc)))
                continue
            if not self._customer_step(r, replies):
                continue
            # a client that skipped the Claim is held to the bound all the same
            refused = None if self._journaling.replaying else self._new_alias(r)
            if isinstance(refused, Conflict):
                replies.append(refused)
                continue
            unclaimed = self._directory.unclaim(r.partition, r.customer_id, r.key)
            if not self._identities.link(r.customer_id, r.key):
                if unclaimed:  # a retry's Claim, journaled: so is its end
                    self._journaling.record(Unclaim(partition=r.partition, key=r.key,
                                                    customer_id=r.customer_id, link=r.link))
                replies.append(Ok(value=False))
                continue
            self._journaling.record(r)
            if block is not None:
                self._residency.fold(r.customer_id, block)
                touch(touched, r.customer_id, self._ctx.clock())
                self._ctx.counts["merges"] += 1
            replies.append(Ok(value=True))
        return replies

    def settle(self, batch: list[Settle], touched: dict[str, float]) -> list[Reply]:
        """After a merge: the redirect need not keep the handed-over state any more."""
        for r in batch:
            self._directory.settle(r.partition, r.anonymous, r.link)
            self._journaling.record(r)
        return [Ok()] * len(batch)

    def forget(self, batch: list[Forget], touched: dict[str, float]) -> list[Reply]:
        """Erase customers from memory (the decision memo too) and the store (and, at the
        next `erase`, from the snapshots and the journal), and bury their links: whether each
        existed, and its aliases, for the caller to retire. A customer's aliases, those of
        links still under way (Claimed) included, are kept until its last step (a Bury
        `finished`), so a retried forget retires and releases them all. With `link`, the
        customer is a forgotten customer's alias's anonymous profile, and the link is buried
        here, so its Take, arriving late, is refused. Without, an anonymous customer whose
        link has not settled is answered MERGED (`_unsettled`) and changes nothing."""
        replies: list[Reply] = []
        for r in batch:
            # replayed, it is buried at the time it happened: a later decision to a customer
            # re-created under the id must keep taking outcomes after a restart
            now = self._when(r)
            p, customer_id = r.partition, r.customer_id
            unsettled = self._unsettled(r)
            if unsettled is not None:
                replies.append(unsettled)
                continue
            try:
                existed = resident = self._residency.activate(customer_id, p, create=False)
            except HomeDamaged as exc:
                if r.link is None and not customer_id.startswith(ANONYMOUS) and \
                        not self._journaling.replaying:
                    # the aliases merged into it are known only from its home: forgotten
                    # without them, they would keep naming the erased id
                    replies.append(Unavailable(reason=f"{exc}: it is forgotten once the home "
                                                      f"is restored from a backup, or removed "
                                                      f"(its aliases then stay linked)"))
                    continue
                # an alias's anonymous profile (which has none), or a forget done before:
                # forgotten all the same, its home deleted with the rest
                existed, resident = True, False
            if not resident:  # its timers go with it (a home the operator removed left them)
                self._residency.timers.woke(p, customer_id)
            aliases: list[str] = []
            if r.link is None:
                aliases = self._directory.start_forget(
                    p, customer_id, [*self._directory.drop_claims(p, customer_id),
                                     *self._identities.aliases(customer_id),
                                     *self._directory.unrelease(p, customer_id, now)])
            if not self._journaling.replaying:  # the sinks end its streams, on any gateway
                self._watches.forgotten(customer_id)
            if resident:
                self._residency.evict(customer_id, p)
            else:  # never seen, or its home damaged: a watch waiting for it would push the
                self._residency.drop_kept(customer_id)  # customer re-created under the id
            # nothing is decided or pushed for it after the round, which would bring it back
            touched.pop(customer_id, None)
            if existed:
                self._journaling.delete_later(p, customer_id)
            self._ctx.engine.forget(customer_id)
            self._decision_log.forget(customer_id)  # replayed too: an erasure a crash cut
            redirect = self._directory.handed_over(p, customer_id)
            merged_into = None
            # a forgotten customer's alias's redirect is dropped only if that customer's link
            # left it: one of another customer's link (which won the alias) is that one's
            if redirect is not None and (r.link is None or
                                         self._directory.redirected_by(p, customer_id, r.link)):
                self._directory.drop_redirect(p, customer_id)  # with the state it handed over
                existed, merged_into = True, redirect[0]
            for link in [link_id(key, customer_id) for key in aliases] + [r.link]:
                if link is not None:
                    self._directory.bury(p, link, now)
            # even one without a profile: a decision issued to it takes outcomes, which would
            # create one
            self._directory.bury_customer(p, customer_id, now)
            replies.append(Forgotten(existed=existed, aliases=aliases, merged_into=merged_into))
            if existed:
                self._ctx.counts["forgotten"] += 1
            self._journaling.record(r._replace(when=now))
            self._journaling.erase_later(p, customer_id)
        return replies

    def _unsettled(self, r: Forget) -> Merged | None:
        """MERGED, naming the link's customer, for an anonymous customer whose state a link
        handed over and has not settled (None otherwise): the state is on its way there, in
        the link's caller, so dropping it here would not stop its Merge. The forget saga
        settles that link as merging nothing first (sagas.py), then forgets it again; a
        forget of a forgotten customer's alias's profile (`link`) drops the state, its Merge
        refused by the link's tombstone on the customer's shard."""
        redirect = self._directory.handed_over(r.partition, r.customer_id)
        if r.link is not None or redirect is None or redirect[2] is None or \
                self._journaling.replaying:
            return None
        return Merged(customer_id=redirect[0])

    def bury(self, batch: list[Bury], touched: dict[str, float]) -> list[Reply]:
        """A forget's aliases are retired: its customer's requests are taken again, and the
        aliases are kept (from the forget's time: replayed, as it happened) until they are
        released too, `finished`: then nothing but the buried links is left."""
        for r in batch:
            p, customer_id = r.partition, r.customer_id
            if r.finished:
                ended = self._directory.released(p, customer_id)
            else:
                when = self._directory.forgotten_at(p, customer_id)
                ended = self._directory.end_forget(p, customer_id,
                                                   self._ctx.clock() if when is None else when)
            if ended:
                self._journaling.record(r)
                self._journaling.erase_later(p, customer_id)
        return [Ok()] * len(batch)

    def _when(self, r: Forget | Retire) -> float:
        """When the step happened: now, or replayed, the time its record keeps, so a restart
        does not lengthen TOMBSTONE_S (a peer's is not trusted: a faulty one's 0 would bury
        a link already expired)."""
        if r.when is None or not self._journaling.replaying:
            return self._ctx.clock()
        return r.when

    def _customer_step(self, r: Merge, replies: list[Reply]) -> bool:
        """Whether a link's step on its customer goes on (the customer is then resident);
        a step of a buried link is answered refused."""
        if self._buried(r.partition, r.key, r.customer_id):
            replies.append(_refused(r.customer_id))
            return False
        # a link claimed before the forget is buried by it: this holds a client that skipped
        # the Claim (refused now) to the same
        forgetting = None if self._journaling.replaying else self._forgetting(r)
        if forgetting is not None:
            replies.append(forgetting)
            return False
        try:
            self._residency.activate(r.customer_id, r.partition)
        except HomeDamaged as exc:
            replies.append(Unavailable(reason=str(exc)))
            return False
        return True

    def _forgetting(self, r: Claim | Merge) -> Unavailable | None:
        """FORGETTING for a step of a link to a customer whose forget is under way: a Claim
        after the forget noted the customer's aliases would go unretired, and a Merge would
        re-create the customer the forget is erasing."""
        if self._directory.being_forgotten(r.partition, r.customer_id, self._ctx.clock()):
            return FORGETTING
        return None

    def _buried(self, partition: int, key: str, customer_id: str) -> bool:
        return self._directory.link_buried(partition, key, customer_id, self._ctx.clock())


def _handed_over(state: bytes) -> dict[str, Any]:
    """The one-customer block a Take handed over; BlockCorrupt for anything else."""
    block = blocks.unpack(state)
    blocks.validate(block)
    if len(block["ids"]) != 1 or type(block["extras"][0]) is not dict:
        raise blocks.BlockCorrupt("a handed-over state holds one customer's block")
    return block


def _refused(customer_id: str) -> Conflict:
    return Conflict(reason=f"customer {customer_id!r} was forgotten while this link was under "
                           f"way (or less than TOMBSTONE_S ago): its steps are refused")
