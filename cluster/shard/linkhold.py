"""What a link under way holds back on its customer's shard: the events and outcomes that came
to the customer by way of the alias being linked.

From a link's step 1 (identity.py) the alias names the customer, but the visitor's idempotency
keys reach the customer only with the link's Merge (step 3). A visitor's request retried by
alias meanwhile (the gateway resolved the alias to the customer, or the client followed the
anonymous id's MERGED redirect: both set the request's `via`, the anonymous id it named) would
be applied on the customer, and again with the visitor's state the Merge folds in. So it is
refused BUSY (retry shortly), keyed or not (an unkeyed one let through would overtake a keyed
one of the same stream), until the Merge drops the claim, or for LINK_HOLD_S after the alias's
claim at most (`ClaimHolds`), for a link whose caller gave up between its steps; a link retried
later has its claim hold again, a few times at most. After the Merge the visitor's keys, the
customer's now, answer the retry as a duplicate.

The customer's own requests carry no `via` and are not held back, but for its events and
outcomes later in the round than a held one from the same sender (a host's session), which
would overtake it in its sender's stream (BEHIND_LINKING); another sender's are served, as two
senders' requests have no order between them. The host gives a round's senders as runs of
requests, one per batch (`LinkHold.round`); a Shard used without a host knows none, and takes
its round's requests as one sender's. A Busy reply (an Unavailable would not) also has the host
refuse its sender's later batches' requests for the customer, Decides and reads included
(refusals.py), and the client give up the rest of the caller's call (transport/client.py). A
sender older than `via` names none, and its requests are not held: the window stays open for
them. A Decide that records its impressions is not held: it carries no idempotency key, so a
retried one records them twice, link or not.
"""
from __future__ import annotations

import bisect
import itertools
from typing import Callable, Iterable, Sequence

from kairos.cluster.protocol import Busy, Event, Outcome
from kairos.cluster.settings import LINK_HOLD_RENEWALS, LINK_HOLD_S

# the kinds held back: those a visitor's state, merged, could hold a second time
HOLDS = frozenset({"event", "outcome"})
LINKING = Busy(reason="a LinkIdentity of the alias this request named into its customer is "
                      "under way: this request was not applied; retry it shortly, with the "
                      "same idempotency key (KAIROS_LINK_HOLD_S at most)")
BEHIND_LINKING = Busy(reason="an earlier request for this customer, by way of an alias whose "
                             "LinkIdentity is under way, was held back: this one was not "
                             "applied either, so as not to overtake it; retry it shortly")
# a round's requests by sender: (sender, how many requests) per run, in the round's order
Senders = Sequence[tuple[str, int]]


class ClaimHolds:
    """The holds of the directory's claims, per partition: kept with the claims (snapshots,
    handoffs, the journal's Claims, each with its time) so that a restart or a move neither
    restores a hold that had ended nor prolongs one."""

    def __init__(self) -> None:
        # partition -> customer -> alias claimed -> [when its hold runs from, times re-armed]
        self.held: dict[int, dict[str, dict[str, list]]] = {}

    def claimed(self, partition: int, customer_id: str, key: str, when: float | None,
                again: bool) -> None:
        """Note a claim made at `when` (None: it holds nothing back). A claim `again` (the
        link retried) keeps its hold while more than half of it is left; one made later holds
        again from `when`, as the retried link's steps could otherwise run past the hold
        unheld, LINK_HOLD_RENEWALS times at most: however often its caller retries or repeats
        the link, a claim holds its alias's requests (1 + LINK_HOLD_RENEWALS) * LINK_HOLD_S at
        most."""
        hold = self.held.get(partition, {}).get(customer_id, {}).get(key)
        if when is None or again and hold is not None and (
                hold[1] >= LINK_HOLD_RENEWALS or abs(when - hold[0]) < LINK_HOLD_S / 2):
            return
        rearmed = int(again) + (hold[1] if hold is not None else 0)
        self.held.setdefault(partition, {}).setdefault(customer_id, {})[key] = [when, rearmed]

    def linking(self, partition: int, customer_id: str, key: str, now: float) -> bool:
        """Whether the customer's claim of the alias holds (requests by way of it) at `now`.
        Either side of now: a claim timed ahead of this clock (stepped back, or a peer's
        ahead: the claim moved with its partition) holds 2 * LINK_HOLD_S at most."""
        hold = self.held.get(partition, {}).get(customer_id, {}).get(key)
        return hold is not None and abs(now - hold[0]) < LINK_HOLD_S

    def drop(self, partition: int, customer_id: str | None = None,
             key: str | None = None) -> None:
        """Forget the holds of the alias's claim, of all the customer's, or (no customer) of
        all the partition's."""
        if customer_id is None:  # popped, not cleared: a handoff's export may hold it still
            self.held.pop(partition, None)
            return
        mine = self.held.get(partition, {})
        if key is None:
            mine.pop(customer_id, None)
        else:
            holds = mine.get(customer_id, {})
            holds.pop(key, None)
            if not holds:
                mine.pop(customer_id, None)
        if not mine:
            self.held.pop(partition, None)

    def export(self, partitions: Iterable[int]) -> dict[str, dict]:
        return {"claim_holds": {p: self.held.get(p, {}) for p in partitions}}

    def load(self, payload: dict) -> None:
        """A snapshot's or handoff's holds; one from before their re-arms keeps the claims'
        times only (`claimed_at`), one from before that none: its claims hold nothing back."""
        for p, customers in payload.get("claim_holds", {}).items():
            for customer_id, holds in customers.items():
                self.held.setdefault(int(p), {})[customer_id] = {
                    key: list(hold) for key, hold in holds.items()}
        for p, customers in payload.get("claimed_at", {}).items():
            for customer_id, times in customers.items():
                self.held.setdefault(int(p), {})[customer_id] = {
                    key: [when, 0] for key, when in times.items()}


class LinkHold:
    def __init__(self, linking: Callable[[int, str, str, float], bool],
                 clock: Callable[[], float]) -> None:
        self._linking = linking  # Directory.linking (identity.py keeps its ClaimHolds)
        self._clock = clock
        self._senders: Senders | None = None  # the round's (`round`)
        self._ends: list[int] | None = None  # where its runs end, once a hold needs a sender
        # customer -> the senders (None: not known) of the requests for it the round held
        self._held: dict[str, set[str | None]] = {}

    def round(self, senders: Senders | None) -> None:
        """A new round, of these senders (None: not known, its requests taken as one
        sender's). Nothing is looked up per request: a round that holds nothing back never
        asks whose one is."""
        self._senders, self._ends = senders, None
        if self._held:
            self._held = {}

    def held(self, request: Event | Outcome, k: int) -> Busy | None:
        """LINKING for a request that came by way of an alias whose link into its customer is
        under way; BEHIND_LINKING for a request (the round's `k`th) of a customer the round
        held one for from the same sender; None for one to serve."""
        if request.via is not None and self._linking(
                request.partition, request.customer_id, request.via, self._clock()):
            self._held.setdefault(request.customer_id, set()).add(self._sender(k))
            return LINKING
        senders = self._held.get(request.customer_id) if self._held else None
        return BEHIND_LINKING if senders is not None and self._sender(k) in senders else None

    def _sender(self, k: int) -> str | None:
        if self._senders is None:
            return None
        if self._ends is None:
            self._ends = list(itertools.accumulate(n for _, n in self._senders))
        return self._senders[bisect.bisect_right(self._ends, k)][0]
