"""Watches: who wants a customer's best action pushed when it changes.

A watch names a sink (an actor with `deliver`, usually a gateway that holds watch streams), a
channel and a placement. It is set per customer (WatchCustomer, journaled, and riding along
with the customer when it is passivated or moves) or for a whole channel (`watch_channel`,
from the controller, for outbound and orchestration). After each round the shard decides
again for every watched view of the customers the round changed, and pushes a decision only
when its ranked actions differ from the ones last pushed for that view (`shown`: it rides in
the customer's block when it leaves memory, and goes with its last watch of the view).
Pushes are best effort: one may repeat, and one may be missed. A shard restarted from the
store has `shown` as its partitions' snapshots and the customers' homes hold it, and its
replay of the journal after them decides nothing, so a best action pushed since may be pushed
again, unchanged, at the customer's next change. A push whose call timed out (sinks.py) stays
in `shown`, so the stream keeps the older action until the best one changes again; one that a
move dropped unsent is taken out of it (`unshown`), so the view is pushed at the customer's
next change wherever it is then.
Deciding again in the replay would not give back what was pushed (the models have moved on,
draws are random), and a `shown` that differs from what the stream last got holds back the
push that would correct it: a repeat is the lesser harm.

A customer's watch counts its registrations, each under the id it was registered by: a sink
registers a watch once per id and view however many streams follow it, and unregisters it
when the last leaves, so two registrations meet when a link merges an alias's anonymous
customer, watched, into a customer watched on the same view; the watch stays until both are
unregistered (the anonymous id's unregistration follows the redirect to the customer). There
is one registration per id: a sink's registration again by the same id (its unregistration
failed, a stream came again) is the one it has, which its next unregistration ends. A
decision pushed to a sink whose registrations name other ids than the customer's is a
`Pushed`, naming those ids, so the sink hands it to the streams that follow any of them.
A forget drops the customer's watches and tells each sink that held one (`Unwatched`, after
the round's pushes, best effort as they are, with the forget's time so that a late word ends
no watch registered since), so that the streams on every gateway end, not only those of the
gateway that served it.

A sink found Gone (its process died) has its watches dropped from memory, but the customers'
homes, the partitions' snapshots and the journal still hold its registrations: its name is
remembered (`gone`: a sink is a process incarnation, never named again), so that they are
left out as those customers come back, rather than push to it and drop it again each time.
The names ride in handoffs and to a shard rebuilt in place (handoff.py), but are not stored:
a shard restarted from the store remembers none, and a dead sink's registrations it recovers
are dropped again at their first push.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from kairos.core.decision import Decision
from kairos.core.errors import InputError
from kairos.core.request import placement_codes

from kairos.cluster.settings import SHARD_UNSEEN_WATCHES
from kairos.cluster.shard.context import ShardContext

# dead sinks remembered, the latest: one older than these that a stored registration still
# names is found Gone once more (at its next push) and remembered again
GONE_KEPT = 1024
# at the cap of customers watched but not seen yet, those seen since are taken out of the count
# at most this often (a walk of them all)
UNSEEN_PRUNE_S = 5.0

View = tuple[str, str, "str | None"]  # a customer's pushes: customer, channel, placement


@dataclass(frozen=True)
class Watch:
    """Who wants pushes, for which channel and placement."""

    sink: str
    channel: str
    placement: str | None = None


@dataclass(frozen=True)
class Pushed(Decision):
    """A decision pushed to a sink that also follows its customer by other ids (the anonymous
    ids of aliases linked into the customer while watched)."""

    also: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unwatched:
    """Sent to a sink after a forget dropped its watches of the customer: it ends the streams
    that follow the customer by any of `ids` (the customer's own, and the anonymous ids of
    aliases linked into it while watched), which no push would reach again. `at`: the
    forget's wall-clock time; a watch the sink registered after it (the word came late, the
    customer re-created, or an alias's anonymous id watched again) is not the one dropped."""

    customer_id: str
    ids: tuple[str, ...]
    at: float


@dataclass
class Push:
    sink: str
    decision: Decision | Unwatched
    also: tuple[str, ...] = ()  # the other ids the sink follows the customer by


class Watches:
    def __init__(self, ctx: ShardContext):
        self._ctx = ctx
        # customer -> watch -> the id of each registration (the customer's, or an anonymous
        # one linked into it since)
        self.by_customer: dict[str, dict[Watch, list[str]]] = {}
        self.channel: set[Watch] = set()  # every customer's changes on a channel
        # customer -> (channel, placement) -> the ranked actions last pushed
        self.shown: dict[str, dict[tuple[str, str | None], tuple[str, ...]]] = {}
        self.gone: dict[str, None] = {}  # sinks found Gone, oldest first
        self._named: dict[str, int] = {}  # sink -> the customers' watches naming it
        # partition -> its customers with watches (those a catalog switch took all of are
        # pruned as `unseen` reads them): snapshots and handoffs walk no other watches
        self._watched_in: dict[int, set[str]] = {}
        # customers watched while not resident (some seen since, until pruned): snapshots and
        # handoffs carry every such watch, so a leaked registration (its unregistration
        # failed) is kept for good and their number is capped (`admits`)
        self._unseen: set[str] = set()
        # those `admits` let in since the last prune: their round may not have registered
        # them yet (or it refused them: Invalid, a dead sink's), so the next one keeps them
        self._admitted: set[str] = set()
        self._pruned_at = -math.inf
        self.unseen_cap = SHARD_UNSEEN_WATCHES
        self._telling: list[Push] = []  # the forgets' word to sinks, not taken yet

    def admits(self, customer_id: str) -> bool:
        """Whether a registration for the customer may come in: not one that would watch more
        customers not seen yet than `unseen_cap`. A resident's, or one of a customer watched
        already, always; one admitted is counted at once, so a round's stay under the cap."""
        if customer_id in self.by_customer or customer_id in self._ctx.engine.table:
            return True
        now = self._ctx.clock()
        if len(self._unseen) >= self.unseen_cap and now >= self._pruned_at + UNSEEN_PRUNE_S:
            self._pruned_at, table, kept = now, self._ctx.engine.table, self._admitted
            self._unseen = {c for c in self._unseen if c not in table and
                            (c in self.by_customer or c in kept)}
            self._admitted = set()
        if len(self._unseen) >= self.unseen_cap:
            return False
        self._unseen.add(customer_id)
        self._admitted.add(customer_id)
        return True

    def validate(self, sink: str, channel: str, placement: str | None) -> Watch:
        """The watch, once the catalog knows its channel and placement (InputError if not)."""
        placement_codes(self._ctx.compiled, channel, placement)
        return Watch(sink, channel, placement or None)

    def watch_customer(self, customer_id: str, watch: Watch, active: bool,
                       by: str | None = None) -> None:
        """Register the watch (once more) by the id its stream named (`by`, by default the
        customer's: an anonymous id since linked, whose request followed the redirect here,
        names the stream's), or unregister that registration once (another if there is none
        by that id: one a link carried over before the request said its id)."""
        if watch.sink in self.gone:  # a late or replayed registration of a dead sink
            return
        by = customer_id if by is None else by
        mine = self.by_customer.setdefault(customer_id, {})
        if active:
            self._register(mine, watch, by)
            self._indexed(customer_id)
            if customer_id not in self._ctx.engine.table:  # a replay's too, not `admits`'s
                self._unseen.add(customer_id)
        elif watch in mine:
            ids = mine[watch]
            ids.remove(by if by in ids else ids[-1])
            if not ids:
                del mine[watch]
                self._unnamed([watch])
                shown = self.shown.get(customer_id, {})
                shown.pop((watch.channel, watch.placement), None)
                if not shown:
                    self.shown.pop(customer_id, None)
        if not mine:  # a watch of a customer never seen leaves nothing behind
            self._unwatched(customer_id)

    def watch_channel(self, sink: str, channel: str, placement: str | None,
                      active: bool = True) -> None:
        watch = self.validate(sink, channel, placement)
        if sink in self.gone:  # a late or replayed registration of a dead sink
            return
        if active:
            self.channel.add(watch)
        else:
            # what was pushed for the view goes with each customer as it leaves memory
            # (`drop`): walking every resident here would stall the shard
            self.channel.discard(watch)

    def drop_sinks(self, sinks: Iterable[str]) -> None:
        """Sinks went away (found Gone here, or by the shard that handed over partitions or
        that this one was rebuilt from): forget their watches, and what was pushed for their
        customers' views that no other watch names; and leave their registrations out
        wherever they come back from."""
        dead, passed = set(), set()
        for sink in sinks:  # the latest last
            passed.add(sink)
            if sink not in self.gone:  # else its customers' watches went when it was found
                dead.add(sink)
            self.gone.pop(sink, None)
            self.gone[sink] = None
        while len(self.gone) > GONE_KEPT:
            del self.gone[next(iter(self.gone))]
        # by every sink passed, known Gone or not: a channel watch has no other way out
        self.channel = {w for w in self.channel if w.sink not in passed}
        if not dead:
            return
        for sink in dead:
            self._named.pop(sink, None)
        channel = {(w.channel, w.placement) for w in self.channel}
        for customer_id in list(self.by_customer):
            mine = self.by_customer[customer_id]
            if all(w.sink not in dead for w in mine):
                continue
            mine = self.by_customer[customer_id] = {w: ids for w, ids in mine.items()
                                                    if w.sink not in dead}
            if not mine:
                self._unwatched(customer_id)
            watched = channel | {(w.channel, w.placement) for w in mine}
            shown = {v: best for v, best in self.shown.pop(customer_id, {}).items()
                     if v in watched}
            if shown:
                self.shown[customer_id] = shown

    def switched(self) -> None:
        """The catalog switched (the context has its engine): watches of channels and
        placements it no longer has go. The residents' are replaced as they are reloaded
        (`restore` checks them again); those of customers not seen yet stay, checked here.
        No sink is told: a gateway ends the streams on such a view itself once it compiles
        the catalog, and takes the refusal of their unregistration (Invalid) as done."""
        self.channel = {w for w in self.channel if w.channel in self._ctx.compiled.channel_index}
        kept = {}
        for customer_id, mine in self.by_customer.items():
            self._unnamed([w for w in mine if not self._known(w)])
            mine = {w: ids for w, ids in mine.items() if self._known(w)}
            if mine:
                kept[customer_id] = mine
        self.by_customer = kept

    def _known(self, watch: Watch) -> bool:
        try:
            self.validate(watch.sink, watch.channel, watch.placement)
        except InputError:
            return False
        return True

    def changes(self, touched: dict[str, float]) -> list[Push]:
        """Pushes for the watched views whose best actions changed, deciding as of each
        customer's latest change in the round."""
        engine = self._ctx.engine
        keys, encoded = [], []
        for customer_id, now in touched.items():
            # view -> sink -> the ids its registrations follow the customer by
            by_view: dict[tuple[str, str | None], dict[str, set[str]]] = {}
            for w in self.channel:
                by_view.setdefault((w.channel, w.placement), {}).setdefault(w.sink, set())
            for w, ids in self.by_customer.get(customer_id, {}).items():
                by_view.setdefault((w.channel, w.placement), {}).setdefault(
                    w.sink, set()).update(ids)
            for (channel, placement), sinks in by_view.items():
                keys.append((customer_id, (channel, placement), sinks))
                encoded.append(engine.encode_request(customer_id, channel, placement, None, now))
        pushes, pushed = [], set()
        for (customer_id, view, sinks), decision in zip(
                keys, engine.decide_encoded(encoded, remember=False)):
            best = tuple(a.action_id for a in decision.actions)
            shown = self.shown.setdefault(customer_id, {})
            if shown.get(view) != best:
                shown[view] = best
                self._ctx.counts["nba_changes"] += 1
                pushes.extend(Push(sink, decision, tuple(sorted(ids - {customer_id})))
                              for sink, ids in sinks.items())
                pushed.add(decision.decision_id)
        # only a pushed decision's id leaves the shard, for outcomes to name: the memo keeps
        # no other, which would push out of it one that a client may answer
        engine.remember_held(pushed)
        return pushes

    def forgotten(self, customer_id: str) -> None:
        """The customer is being forgotten, its watches with it (`drop`): each sink that
        watches it is told, after the round's pushes (`unwatched`), to end the streams that
        follow it by any id its registrations name. Not for a replayed forget (identities.py):
        the streams the sinks hold now may have come since, on registrations the replay keeps,
        and would end at every restart."""
        ids: dict[str, set[str]] = {}
        for w, by in self.by_customer.get(customer_id, {}).items():
            ids.setdefault(w.sink, {customer_id}).update(by)
        now = self._ctx.clock()
        self._telling.extend(Push(sink, Unwatched(customer_id, tuple(sorted(named)), now))
                             for sink, named in ids.items())

    def unwatched(self) -> list[Push]:
        """What `forgotten` has for the sinks since it was last asked."""
        telling, self._telling = self._telling, []
        return telling

    def sinks(self) -> set[str]:
        """The sinks the customers' watches name (sinks.py asks them whether they are Gone:
        a watch of a customer not seen yet gets no push that would find so), counted as they
        come and go: a walk over every watched customer would hold the shard's loop."""
        return set(self._named)

    # -- watches of customers not seen yet ride along with their partition (handoff.py) --------

    def unseen(self, partitions: Iterable[int]) -> dict[str, list[list]]:
        """The watches of the partitions' customers that are not resident (a watch of a
        customer nobody has seen waits for its first event), registrations as `extra` lists
        them: a resident's go in its block, a passivated one's in its home."""
        table, unseen = self._ctx.engine.table, {}
        for p in partitions:
            watched = {c for c in self._watched_in.pop(p, ()) if c in self.by_customer}
            if watched:
                self._watched_in[p] = watched
            unseen.update((c, self.extra(c)["watches"]) for c in watched if c not in table)
        return unseen

    def take_unseen(self, unseen: dict[str, list[list]]) -> None:
        """Add the registrations `unseen` carried (from another shard's `unseen`)."""
        for customer_id, registrations in unseen.items():
            self.restore(customer_id, {"watches": registrations})
        # admitted where they were registered: counted, not refused
        self._unseen.update(c for c in unseen if c in self.by_customer)

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """The partitions moved away: forget the watches of their customers still here (those
        not seen yet, once the residents are evicted); their new owner has them."""
        for p in partitions:
            for customer_id in self._watched_in.pop(p, ()):
                self._unseen.discard(customer_id)
                if customer_id in self.by_customer:
                    self._unnamed(self.by_customer.pop(customer_id))

    def unshown(self, views: Iterable[View]) -> None:
        """The pushes of these views were dropped unsent (sinks.py's `flush`): what was
        pushed for them is not known, so the next decision for each is pushed. A customer
        passivated since keeps what its home says."""
        for customer_id, channel, placement in views:
            shown = self.shown.get(customer_id, {})
            shown.pop((channel, placement), None)
            if not shown:
                self.shown.pop(customer_id, None)

    # -- a customer's watches ride along in its block (residency.py) ---------------------------

    def extra(self, customer_id: str) -> dict[str, Any]:
        """A registration each: [sink, channel, placement, the id it was registered by]; and
        what was last pushed for each view still watched, [channel, placement, actions], so
        that the customer back in memory (after a passivation, a move, a restart from the
        snapshot or home that holds it) does not push its unchanged best actions again."""
        extra: dict[str, Any] = {"watches": [[w.sink, w.channel, w.placement, by]
                                             for w, ids in self.by_customer.get(
                                                 customer_id, {}).items() for by in ids]}
        shown = self.shown.get(customer_id)
        if shown:  # a view no longer watched leaves it here (the last watch of a channel)
            views = self._views(customer_id)
            kept = [[channel, placement, list(best)]
                    for (channel, placement), best in shown.items()
                    if (channel, placement) in views]
            if kept:
                extra["shown"] = kept
        return extra

    def restore(self, customer_id: str, extra: dict[str, Any]) -> None:
        """Add the registrations, each by the id it names (a row of a block from before
        that field names none: the customer's own; `folded` names a folded one's)."""
        for sink, channel, placement, *by in extra["watches"]:
            if sink in self.gone:
                continue
            try:
                watch = self.validate(sink, channel, placement)
            except InputError:  # the channel or placement left the catalog
                continue
            mine = self.by_customer.setdefault(customer_id, {})
            if by:
                self._register(mine, watch, by[0])
            elif watch in mine:  # an old block has a row a registration, all the customer's
                mine[watch].append(customer_id)  # own (`folded` names a folded one's)
            else:
                self._register(mine, watch, customer_id)
        if customer_id in self.by_customer:
            self._indexed(customer_id)
        # blocks from before it was carried have none (`folded` takes a folded one's out; the
        # blocks of c3e6ef1 name whose it is, "shown_by", which is the customer's then)
        shown = extra.get("shown")
        if shown:
            views = self._views(customer_id)
            shown = {(channel, placement): tuple(best) for channel, placement, best in shown
                     if (channel, placement) in views}
            if shown:
                self.shown[customer_id] = {**shown, **self.shown.get(customer_id, {})}

    def drop(self, customer_id: str, evicted: bool) -> None:
        if customer_id in self.by_customer:
            self._unnamed(self.by_customer[customer_id])
            self._unwatched(customer_id)
        if evicted:  # what was last pushed for its views is in its block (`extra`)
            self.shown.pop(customer_id, None)

    def _views(self, customer_id: str) -> set[tuple[str, str | None]]:
        """The views pushed for the customer: every channel watch's and its own watches'."""
        return {(w.channel, w.placement) for w in self.channel} | \
            {(w.channel, w.placement) for w in self.by_customer.get(customer_id, {})}

    def _register(self, mine: dict[Watch, list[str]], watch: Watch, by: str) -> None:
        if watch not in mine:
            mine[watch] = []
            self._named[watch.sink] = self._named.get(watch.sink, 0) + 1
        if by not in mine[watch]:
            mine[watch].append(by)

    def _indexed(self, customer_id: str) -> None:
        self._watched_in.setdefault(self._ctx.partition_of(customer_id), set()).add(customer_id)

    def _unwatched(self, customer_id: str) -> None:
        """The customer has no watch left (`_unnamed` is told of those it had)."""
        del self.by_customer[customer_id]
        self._unseen.discard(customer_id)
        self._watched_in.get(self._ctx.partition_of(customer_id), set()).discard(customer_id)

    def _unnamed(self, watches: Iterable[Watch]) -> None:
        """The watches left the customers' (each was one of a customer's)."""
        for w in watches:
            self._named[w.sink] -= 1
            if not self._named[w.sink]:
                del self._named[w.sink]


def checked_unseen(value: Any) -> dict[str, list[list]]:
    """Watches of customers not seen yet as a handoff or a snapshot carries them (`unseen`),
    from another process or the store: ValueError unless each is a customer id with its
    registrations, [sink, channel, placement or None, and the id it was registered by]."""
    def registration(row: Any) -> bool:
        return isinstance(row, (list, tuple)) and len(row) in (3, 4) and \
            all(isinstance(x, str) for x in (row[0], row[1], *row[3:])) and \
            (row[2] is None or isinstance(row[2], str))
    if not isinstance(value, dict) or not all(
            isinstance(c, str) and isinstance(rows, (list, tuple)) and
            all(registration(row) for row in rows) for c, rows in value.items()):
        raise ValueError("watches of customers not seen yet that are not customer ids with "
                         "registrations")
    return value


def folded(extra: dict[str, Any], anonymous_id: str) -> dict[str, Any]:
    """A folded anonymous customer's block extra as the customer takes it in (residency.py's
    fold): what was pushed went to the anonymous id's streams, not the customer's, so it is
    left out; a registration an old block names no id for is the anonymous id's (else the
    customer's own unregistration could end it, or the anonymous stream's the customer's)."""
    extra = {k: v for k, v in extra.items() if k not in ("shown", "shown_by")}
    extra["watches"] = [[sink, channel, placement, *(by or [anonymous_id])]
                        for sink, channel, placement, *by in extra["watches"]]
    return extra
