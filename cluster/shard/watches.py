"""Watches: who wants a customer's best action pushed when it changes.

A watch names a sink (an actor with `deliver`, usually a gateway that holds watch streams), a
channel and a placement. It is set per customer (WatchCustomer, journaled, and riding along
with the customer when it is passivated or moves) or for a whole channel (`watch_channel`,
from the controller, for outbound and orchestration). After each round the shard decides
again for every watched view of the customers the round changed, and pushes a decision only
when its ranked actions differ from the ones last pushed for that view (`shown`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kairos.core.decision import Decision
from kairos.core.errors import InputError
from kairos.core.request import placement_codes

from kairos.cluster.shard.context import ShardContext


@dataclass(frozen=True)
class Watch:
    """Who wants pushes, for which channel and placement."""

    sink: str
    channel: str
    placement: str | None = None


@dataclass
class Push:
    sink: str
    decision: Decision


class Watches:
    def __init__(self, ctx: ShardContext):
        self._ctx = ctx
        self.by_customer: dict[str, set[Watch]] = {}
        self.channel: set[Watch] = set()  # every customer's changes on a channel
        self.shown: dict[tuple[str, str, str | None], tuple[str, ...]] = {}  # last pushed

    def validate(self, sink: str, channel: str, placement: str | None) -> Watch:
        """The watch, once the catalog knows its channel and placement (InputError if not)."""
        placement_codes(self._ctx.compiled, channel, placement)
        return Watch(sink, channel, placement or None)

    def watch_customer(self, customer_id: str, watch: Watch, active: bool) -> None:
        mine = self.by_customer.setdefault(customer_id, set())
        if active:
            mine.add(watch)
        else:
            mine.discard(watch)
            self.shown.pop((customer_id, watch.channel, watch.placement), None)
            if not mine:  # a watch of a customer never seen leaves nothing behind
                del self.by_customer[customer_id]

    def watch_channel(self, sink: str, channel: str, placement: str | None,
                      active: bool = True) -> None:
        watch = self.validate(sink, channel, placement)
        if active:
            self.channel.add(watch)
        else:
            self.channel.discard(watch)

    def drop_sink(self, sink: str) -> None:
        """A sink went away: forget its watches."""
        self.channel = {w for w in self.channel if w.sink != sink}
        for customer_id in list(self.by_customer):
            self.by_customer[customer_id] = {w for w in self.by_customer[customer_id]
                                             if w.sink != sink}
            if not self.by_customer[customer_id]:
                del self.by_customer[customer_id]

    def switched(self) -> None:
        """The catalog switched (the context has its engine): channel watches of channels it
        no longer has go; customers' watches come back as the customers are reloaded, through
        `restore`, which checks them again."""
        self.by_customer = {}
        self.channel = {w for w in self.channel if w.channel in self._ctx.compiled.channel_index}

    def changes(self, touched: dict[str, float]) -> list[Push]:
        """Pushes for the watched views whose best actions changed, deciding as of each
        customer's latest change in the round."""
        engine = self._ctx.engine
        keys, encoded = [], []
        for customer_id, now in touched.items():
            watched = self.by_customer.get(customer_id, set()) | self.channel
            by_view: dict[tuple[str, str | None], list[str]] = {}
            for w in watched:
                by_view.setdefault((w.channel, w.placement), []).append(w.sink)
            for (channel, placement), sinks in by_view.items():
                keys.append((customer_id, channel, placement, sinks))
                encoded.append(engine.encode_request(customer_id, channel, placement, None, now))
        pushes = []
        for (customer_id, channel, placement, sinks), decision in \
                zip(keys, engine.decide_encoded(encoded)):
            best = tuple(a.action_id for a in decision.actions)
            key = (customer_id, channel, placement)
            if self.shown.get(key) != best:
                self.shown[key] = best
                self._ctx.counts["nba_changes"] += 1
                pushes.extend(Push(sink, decision) for sink in sinks)
        return pushes

    # -- a customer's watches ride along in its block (residency.py) ---------------------------

    def extra(self, customer_id: str) -> dict[str, Any]:
        return {"watches": [[w.sink, w.channel, w.placement]
                            for w in self.by_customer.get(customer_id, ())]}

    def restore(self, customer_id: str, extra: dict[str, Any]) -> None:
        for sink, channel, placement in extra["watches"]:
            try:
                self.by_customer.setdefault(customer_id, set()).add(
                    self.validate(sink, channel, placement))
            except InputError:  # the channel or placement left the catalog
                pass

    def drop(self, customer_id: str, evicted: bool) -> None:
        self.by_customer.pop(customer_id, None)
        if evicted:  # what was last pushed to channel watches goes with the customer
            for channel, placement in {(w.channel, w.placement) for w in self.channel}:
                self.shown.pop((customer_id, channel, placement), None)
