"""A round's requests handed to the parts that serve them, by kind, and the answers given
before any part sees one.

Requests arrive typed (protocol.py) or as the arrays they travel as (wire.py types them; one
that is not a request answers Invalid by itself). Runs of the same kind go to their handler
together (one kernel call serves a batch); per-customer order is request order. Before a run
goes, each of its requests is admitted, or answered here: MOVED (its partition is not here,
or its sender's map is older than the one that gave it to this shard), MERGED (an anonymous
customer since linked into another one: send it there), CROWDED (a customer not resident, past
the resident limit's overflow), FORGETTING (its customer's forget is under way), a link's hold
(linkhold.py), Unavailable (a damaged home, found by loading the customer: residency.py
`probe`) or UNSEEN_WATCHED (a watch of a customer not seen yet, past SHARD_UNSEEN_WATCHES).
A replay applies what was acknowledged: it is neither crowded nor held. `refused` counts the
Busy replies given (CROWDED, an outcome past its customer's rate, a link's hold, UNSEEN_WATCHED):
ShardHost refuses their senders' later requests, looking for them only in a round raising it.
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterable, Sequence

from kairos.cluster import protocol
from kairos.cluster.identity import Directory
from kairos.cluster.protocol import CUSTOMER_KINDS, Invalid, Merged, Reply, Request
from kairos.cluster.shard import wire
from kairos.cluster.shard.context import ShardContext
from kairos.cluster.shard.handoff import Handoff
from kairos.cluster.shard.identities import FORGETTING
from kairos.cluster.shard.journaling import Journaling
from kairos.cluster.shard.linkhold import HOLDS, LinkHold, Senders
from kairos.cluster.shard.ownership import Ownership
from kairos.cluster.shard.residency import Residency
from kairos.cluster.shard.watches import Watches

# a run of admitted requests of one kind, and the round's changed customers -> a reply each
Handler = Callable[[list, dict[str, float]], list[Reply]]
_TYPED = frozenset(protocol.REQUESTS.values())
# the kinds whose handlers load their customer before anything else: a damaged home is found
# first (residency.py `probe`); an outcome is checked before its customer is loaded
PROBED = frozenset({"event", "decide", "profile", "watch"})
# the kinds refused FORGETTING while their customer's forget is under way: an outcome too, as
# an offline one (no decision to check against the forget's tombstone) would re-create it
GUARDED = PROBED | {"outcome"}
# the kinds that make their customer if it has no home (and a Decide that records its
# impression): refused at the resident ceiling
CREATES = frozenset({"event", "outcome"})
# the answer to a request that would bring a customer in past the resident limit's overflow
CROWDED = protocol.Busy(reason="this shard holds as many customers as it may: try again "
                               "shortly, as it passivates idle ones")
UNSEEN_WATCHED = protocol.Busy(reason="this shard watches as many customers not seen yet as it "
                                      "may (KAIROS_SHARD_UNSEEN_WATCHES): try again once those "
                                      "customers are seen or their streams close")


class Dispatch:
    def __init__(self, ctx: ShardContext, ownership: Ownership, journaling: Journaling,
                 residency: Residency, directory: Directory, link_hold: LinkHold,
                 handoff: Handoff, watches: Watches, handlers: dict[str, Handler]):
        self._ctx = ctx
        self._ownership = ownership
        self._journaling = journaling
        self._residency = residency
        self._directory = directory
        self._link_hold = link_hold
        self._handoff = handoff
        self._watches = watches
        self.handlers = handlers  # kind -> the part's handler of its runs
        self.refused = 0  # Busy replies given (module doc)
        self.crowded = False  # refused CROWDED since the shard's last tick cleared it

    def run(self, requests: Sequence[Request | list | tuple], routed: Sequence[int] | None,
            senders: Senders | None) -> tuple[list[Reply], dict[str, float]]:
        """Replies in request order, and the round's changed customers (-> the latest change)
        for their watches. `routed`: per request, the map version its sender routed it under
        (None: any); `senders`: the round's runs of requests by sender (linkhold.py)."""
        self._link_hold.round(senders)
        typed = [r if type(r) in _TYPED else wire.typed(r) for r in requests]
        kinds = [None if isinstance(r, Invalid) else r.kind for r in typed]
        replies: list[Reply | None] = [None if kind else r for r, kind in zip(typed, kinds)]
        touched: dict[str, float] = {}  # customer -> latest change in the round, for watches
        try:
            for kind, run in itertools.groupby(range(len(typed)), kinds.__getitem__):
                if kind is None:
                    continue
                admitted = self._admitted(kind, typed, routed, run, replies)
                answers = self.handlers[kind]([typed[k] for k in admitted], touched)
                if kind == "outcome":  # the outcome rate's
                    self.refused += sum(type(a) is protocol.Busy for a in answers)
                for k, reply in zip(admitted, answers):
                    replies[k] = reply
        finally:
            self._residency.round_done()
        return replies, touched

    def _admitted(self, kind: str, requests: list[Request], routed: Sequence[int] | None,
                  run: Iterable[int], replies: list[Reply | None]) -> list[int]:
        """The requests of a run served here; the rest are answered in `replies` (module
        doc)."""
        directory, ownership, journaling = self._directory, self._ownership, self._journaling
        redirects = directory.redirecting and kind in CUSTOMER_KINDS
        crowded = kind in CUSTOMER_KINDS and not journaling.replaying
        admitted = []
        for k in run:
            request = requests[k]
            reply = ownership.moved(request.partition, None if routed is None else routed[k])
            if reply is None and routed is not None and ownership.arriving:
                # its sender saw the map moving it here, whatever the answer below
                self._handoff.routed_here(request.partition)
            if reply is None and redirects:
                target = directory.redirect_of(request.customer_id)
                reply = None if target is None else Merged(customer_id=target)
            if reply is None and crowded and not self._admits(kind, request):
                reply = CROWDED
                self.refused += 1
                self._ctx.counts["crowded"] += 1
                self.crowded = True
            if reply is None and kind in GUARDED and not journaling.replaying and \
                    directory.being_forgotten(request.partition, request.customer_id,
                                              self._ctx.clock()) \
                    and (kind != "watch" or request.active):
                reply = FORGETTING
            if reply is None and kind in HOLDS and not journaling.replaying:
                reply = self._link_hold.held(request, k)
                self.refused += reply is not None  # Busy: its sender's later ones wait too
            if reply is None and kind in PROBED:
                damaged = self._residency.probe(request.customer_id, request.partition)
                reply = None if damaged is None else protocol.Unavailable(reason=damaged)
            # after the probe: a customer it loaded from its home is not one not seen yet
            if reply is None and crowded and kind == "watch" and request.active and \
                    not self._watches.admits(request.customer_id):
                reply = UNSEEN_WATCHED
                self.refused += 1
            if reply is None:
                admitted.append(k)
            else:
                replies[k] = reply
        return admitted

    def _admits(self, kind: str, request: Request) -> bool:
        """Whether the request may come in at the resident ceiling (`Residency.admits`): a
        watch's unregistration always, as refused its stream's end would leak the watch."""
        if kind == "watch" and not request.active:
            return True
        creates = kind in CREATES or kind == "decide" and bool(request.record_impression)
        return self._residency.admits(request.customer_id, request.partition, creates)
