"""What a link under way holds back on its customer's shard: the events and outcomes that came
to the customer by way of the alias being linked.

From a link's step 1 (identity.py) the alias names the customer, but the visitor's idempotency
keys reach the customer only with the link's Merge (step 3). A visitor's request retried by
alias meanwhile (the gateway resolved the alias to the customer, or the client followed the
anonymous id's MERGED redirect: both set the request's `via`, the anonymous id it named) would
be applied on the customer, and again with the visitor's state the Merge folds in. So it is
refused BUSY (retry shortly), keyed or not (an unkeyed one let through would overtake a keyed
one of the same stream), until the Merge drops the claim, or for LINK_HOLD_S after the alias's
first claim at most (`Directory.linking`), for a link whose caller gave up between its steps.
After the Merge the visitor's keys, the customer's now, answer the retry as a duplicate.

The customer's own requests carry no `via` and are not held back, but for its events and
outcomes later in the round (any sender's) than a held one, which would overtake it
(BEHIND_LINKING). A Busy reply (an Unavailable would not) also has the host refuse its sender's
later batches' requests for the customer (refusals.py), and the client give up the rest of the
caller's call (transport/client.py). A sender older than `via` names none, and its requests
are not held: the window stays open for them. A Decide that records its impressions is not
held: it carries no idempotency key, so a retried one records them twice, link or not.
"""
from __future__ import annotations

from typing import Callable

from kairos.cluster.identity import Directory
from kairos.cluster.protocol import Busy, Event, Outcome, Reply

# the kinds held back: those a visitor's state, merged, could hold a second time
HOLDS = frozenset({"event", "outcome"})
LINKING = Busy(reason="a LinkIdentity of the alias this request named into its customer is "
                      "under way: this request was not applied; retry it shortly, with the "
                      "same idempotency key (KAIROS_LINK_HOLD_S at most)")
BEHIND_LINKING = Busy(reason="an earlier request for this customer, by way of an alias whose "
                             "LinkIdentity is under way, was held back: this one was not "
                             "applied either, so as not to overtake it; retry it shortly")


class LinkHold:
    def __init__(self, directory: Directory, clock: Callable[[], float]) -> None:
        self._directory = directory
        self._clock = clock
        # the latest round that held a request back (its replies list, one per round), and the
        # customers it held
        self._round: tuple[list, set[str]] = ([], set())

    def held(self, request: Event | Outcome, round_: list[Reply | None]) -> Busy | None:
        """LINKING for a request that came by way of an alias whose link into its customer is
        under way; BEHIND_LINKING for a request of a customer held back earlier in the round
        (`round_`: its replies); None for one to serve."""
        if request.via is not None and self._directory.linking(
                request.partition, request.customer_id, request.via, self._clock()):
            if self._round[0] is not round_:
                self._round = (round_, set())
            self._round[1].add(request.customer_id)
            return LINKING
        holding, held = self._round
        return BEHIND_LINKING if holding is round_ and request.customer_id in held else None
