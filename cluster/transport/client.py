"""The runtime's client: routes requests to the owning shard, in order, through moves.

Used by the gateway and the tests. Requests and replies are protocol.py's named types. The
client follows the controller's partition map by long poll, batches requests per shard
(batching.py) and keeps the requests of each route key (a customer, an alias) in the order
they were enqueued, even while partitions move between shards:

- each partition has a lane; a lane sends to one shard at a time;
- when a shard answers MOVED (the partition froze, or the map was stale), the lane stops,
  waits until every earlier request of the lane has its answer and the map shows the new
  owner, then re-sends the moved requests in their original order before anything newer
  (the lane's later requests still queued for the shard wait behind them too);
  a MOVED naming no newer map than the request was routed by (its owner is frozen behind a
  move not settled yet) waits as a shard not reached does (below), not re-sent at once.

A request whose batch failed in transit (the shard died or restarted) is answered
Unavailable, never re-sent: it may or may not have been applied. A batch that never left
(its connection to the shard had closed before it was written, as when every shard restarted
while the client was idle) is sent again, once, on a fresh connection to the shard's new
incarnation. When even that finds no connection (the shard's node left, the shard is
restarting), its requests wait, like MOVED ones, for the map to name a new owner or for the
shard to come back (CLIENT_REROUTE_S, CLIENT_REROUTES times), then go again.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from typing import Any, Mapping, Sequence

import numpy as np

from kairos.core.decision import Decision
from kairos.core.errors import InputError

from kairos.cluster import protocol
from kairos.cluster.control.partitions import partition_of
from kairos.cluster.longpoll import Changes
from kairos.cluster.protocol import (Decide, Event, EventAck, Outcome, ReadProfile, Reply,
                                     Request, WatchCustomer, route_key)
from kairos.cluster.settings import (CLIENT_INFLIGHT_CALLS, CLIENT_QUEUE_LIMIT,
                                     CLIENT_REROUTE_S, CLIENT_REROUTES, LONG_POLL_S)
from kairos.cluster.transport.backend import Backend, NotSent, ShardUnavailable, Unavailable
from kairos.cluster.transport.batching import Batching
from kairos.cluster.transport.lanes import Call, EarlierFailed, Failed, Item, Lane, Undelivered
from kairos.cluster.transport.links import ShardLink
from kairos.cluster.transport.sagas import IdentitySagas

log = logging.getLogger("kairos.client")
MAX_REDIRECTS = 20  # a request MOVED this many times in a row fails as Unavailable
HELD = "a move that a shard did not settle"  # waits for it: apart from its shard's (_wait)
_DONE = (protocol.Ok, protocol.EventAck, protocol.Forgotten)  # the replies that mean done


class Busy(Exception):
    """The owning shard's queue is full: back off (gRPC RESOURCE_EXHAUSTED)."""


class Conflict(Exception):
    """The request contradicts the state (an alias linked elsewhere): FAILED_PRECONDITION."""


class KairosClient(Batching, IdentitySagas):
    """Async client of the runtime. `await connect()` first (it fetches the map)."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.version = 0
        self.catalog_version = ""
        self._shards: list[str] = []
        self._owners: np.ndarray | None = None
        self._lanes: dict[int, Lane] = {}
        self._waiting: Counter[str] = Counter()  # requests waiting in lanes, by shard (_hold)
        self._held: set[int] = set()  # partitions whose lanes wait for a move to settle
        self._links: dict[str, ShardLink] = {}
        self._map_changes = Changes()
        self._poller: asyncio.Task | None = None

    # -- the map -------------------------------------------------------------------------------

    async def connect(self) -> "KairosClient":
        self._apply_map(await self.backend.controller().get_map(-1, 0.0))
        self._poller = asyncio.get_running_loop().create_task(self._follow_map())
        return self

    async def close(self) -> None:
        tasks = [self._poller] + [link.task for link in self._links.values()]
        for task in tasks:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)
        await self.backend.close()

    def _apply_map(self, routing: dict[str, Any] | None) -> None:
        if routing is None or routing["version"] == self.version:
            return
        self.version = routing["version"]
        self.catalog_version = routing["catalog_version"]
        self._shards = routing["shards"]
        self._owners = np.frombuffer(routing["owners"], np.uint16)
        self._map_changes.announce()

    async def _follow_map(self) -> None:
        controller = self.backend.controller()
        while True:
            try:
                self._apply_map(await controller.get_map(self.version, LONG_POLL_S))
                await self._drop_gone_links()
            except Unavailable:
                await asyncio.sleep(0.2)  # the controller is restarting
            except Exception:  # the controller failed this poll: the map must keep following
                log.exception("following the partition map failed; polling again")
                await asyncio.sleep(1.0)

    async def _drop_gone_links(self) -> None:
        """Drop the links to shards the map no longer names, with their pump tasks and the
        backend's connections to them, once nothing waits in their queue or is in flight on
        them: shard names are never reused, so autoscaling would otherwise grow them without
        bound in a long-lived gateway. One still busy (its requests answered MOVED go again
        to their partitions' new owners, through their links) goes at a later poll, at most
        LONG_POLL_S after it drains."""
        named = set(self._shards)
        idle = [link for name, link in self._links.items()
                if name not in named and not link.queue and not link.calls]
        for link in idle:
            del self._links[link.name]
            link.task.cancel()
        await asyncio.gather(*(link.task for link in idle), return_exceptions=True)
        for link in idle:
            await self.backend.disconnect(link.name)

    async def _map_newer_than(self, version: int, timeout_s: float) -> None:
        await self._map_changes.wait_until(lambda: self.version >= version, timeout_s)

    def routes(self) -> tuple[int, list[str], list[int]]:
        """The map for clients that route (kairos.v1 GetRoutes): its version, the shards and
        each partition's owner's index among them."""
        return self.version, list(self._shards), self._owners.tolist()

    def owner(self, key: str) -> str:
        """The shard that owns a route key (a customer id, an alias key) now."""
        return self._owner_of(partition_of(key, len(self._owners)))

    def _owner_of(self, p: int) -> str:
        return self._shards[self._owners[p]]

    # -- requests ------------------------------------------------------------------------------

    async def ingest(self, customer_id: str, event_type: str, event_time: Any,
                     attributes: Mapping[str, Any] | None = None) -> int:
        """Apply an event; the customer's sequence number for it."""
        return (await self.ingest_ack(customer_id, event_type, event_time, attributes,
                                      None)).sequence

    async def ingest_ack(self, customer_id: str, event_type: str, event_time: Any,
                         attributes: Mapping[str, Any] | None, idempotency_key: str | None,
                         decide: tuple[str, str | None] | None = None) -> EventAck:
        """Apply an event once per idempotency key; with `decide` = (channel, placement), the
        acknowledgement carries the decision for that view after the event."""
        return await self._ask(Event(customer_id=customer_id, event_type=event_type,
                                     time=event_time, attributes=dict(attributes or {}),
                                     idempotency_key=idempotency_key, decide=decide))

    async def decide(self, customer_id: str, channel: str, placement: str | None = None,
                     context: Mapping[str, Any] | None = None, *, max_actions: int = 0,
                     explain: bool = False, now: float | None = None,
                     record_impression: bool = False, expires: float | None = None) -> Decision:
        return await self._value(Decide(
            customer_id=customer_id, channel=channel, placement=placement,
            context=dict(context or {}), max_actions=max_actions, explain=explain, now=now,
            record_impression=record_impression, expires=expires))

    async def respond(self, customer_id: str, action_id: str, channel: str, outcome: str,
                      when: Any, decision_id: str | None = None, value: float | None = None,
                      idempotency_key: str | None = None) -> str:
        """Record an outcome (a convert may carry its value) once per idempotency key; what
        the models learned from (a core.decision.Learned value: DUPLICATE for a key the
        customer had). The gateway sends one by alias itself (decisions.py `_outcome`)."""
        return await self._value(Outcome(customer_id=customer_id, action_id=action_id,
                                channel=channel, outcome=outcome, when=when,
                                decision_id=decision_id, value=value,
                                idempotency_key=idempotency_key))

    async def profile(self, customer_id: str, now: float | None = None) -> dict | None:
        """The golden record, or None for a customer nobody has seen."""
        return await self._value(ReadProfile(
            customer_id=customer_id, now=now if now is not None else time.time()))

    async def watch(self, customer_id: str, sink: str, channel: str,
                    placement: str | None = None, active: bool = True) -> None:
        """Have the customer's owner push changes of the best action to the actor `sink`."""
        await self._ask(WatchCustomer(customer_id=customer_id, sink=sink, channel=channel,
                                      placement=placement, active=active, by=customer_id))

    async def _ask(self, request: Request) -> Reply | None:
        """One request, routed and settled."""
        return await self.settle(request, await self.enqueue(request))

    async def _value(self, request: Request) -> Any:
        reply = await self._ask(request)
        return None if reply is None else reply.value

    def enqueue(self, request: Request, call: Call | None = None) -> asyncio.Future:
        """Route a request now, by its route key, without awaiting; a future of the shard's
        reply, which `settle` turns into the result (gateways stream many requests this way,
        without a task per request). Requests enqueued with the same route key are applied
        in the order they were enqueued, through moves. InputError for a route key that is
        not a non-empty string; Busy when the owning shard has CLIENT_QUEUE_LIMIT requests
        waiting: to be sent, or in its partitions' lanes (for a newer map, for the shard to
        come back, or behind those; those of partitions a move holds count apart: HELD). A
        request of a `call` goes unsent only with the rest of the call (`Call.give_up`)."""
        p = self._partition(request)
        counted = self._counted_at(p)
        if (waiting := self._waiting_for(counted)) >= CLIENT_QUEUE_LIMIT:
            raise Busy(f"{counted} has {waiting} requests waiting to be sent")
        lane = self._lanes.get(p)
        if lane is None:
            lane = self._lanes[p] = Lane()
        future = asyncio.get_running_loop().create_future()
        item = Item(request._replace(partition=p), future, next(lane.orders), call=call)
        if lane.moved or lane.held or (lane.inflight and lane.shard != self._owner_of(p)):
            lane.held.append(item)  # behind what must go first
            self._hold(item)
        else:
            self._send(lane, item)
        return future

    def check_room(self, requests: Sequence[Request]) -> None:
        """Busy unless every shard the requests route to has room for all of its share
        within CLIENT_QUEUE_LIMIT: enqueued right after, with no await between, none of them
        is refused (IngestBatch is taken whole or not at all). InputError as `enqueue`."""
        fullest = max(map(self._waiting_for, {*self._links, *self._waiting}), default=0)
        if fullest + len(requests) <= CLIENT_QUEUE_LIMIT:
            return  # room for all of them at any shard: no need to hash each to its owner
        shares = Counter(self._counted_at(self._partition(request)) for request in requests)
        for shard, share in shares.items():
            if (waiting := self._waiting_for(shard)) + share > CLIENT_QUEUE_LIMIT:
                raise Busy(f"{shard} has {waiting} requests waiting to be sent, and {share} "
                           f"more would pass its limit of {CLIENT_QUEUE_LIMIT}")

    def _partition(self, request: Request) -> int:
        key = route_key(request)
        if not isinstance(key, str) or not key:
            raise InputError(request._fields[2], f"expected a non-empty string, got "
                                                 f"{type(key).__name__} {key!r}")
        return partition_of(key, len(self._owners))

    def _waiting_for(self, shard: str) -> int:
        """The requests counted against `shard`'s CLIENT_QUEUE_LIMIT."""
        link = self._links.get(shard)
        return (0 if link is None else len(link.queue)) + self._waiting[shard]

    def _counted_at(self, p: int) -> str:
        """What `p`'s requests count against: its owner in the map now, or HELD (`_wait`)."""
        return HELD if p in self._held else self._owner_of(p)

    def _hold(self, item: Item) -> None:
        """Count a request waiting in its lane, until it goes, as `_counted_at` counts new ones."""
        item.waits_at = self._counted_at(item.request.partition)
        self._waiting[item.waits_at] += 1

    def _unhold(self, item: Item) -> None:
        """It goes (or fails): no longer counted. A count that reaches 0 goes too, as the shard
        it counted against may have left the map for good."""
        self._waiting[item.waits_at] -= 1
        if not self._waiting[item.waits_at]:
            del self._waiting[item.waits_at]

    async def settle(self, request: Request, reply: Reply) -> Reply | None:
        """What a request's reply comes to: the done reply (Ok, EventAck or Forgotten); the
        reply to the same request re-sent to the customer a Merged reply names; None for
        Missing. Raises what the others stand for: InputError (Invalid), Conflict, Busy,
        Unavailable (also for a request that kept meeting MOVED)."""
        if isinstance(reply, _DONE):
            return reply
        if isinstance(reply, protocol.Merged):  # an anonymous customer since linked: an event
            # or outcome keeps the id it named (`via`), which a link's hold goes by (linkhold.py)
            via = {"via": request.via or request.customer_id} if "via" in request._fields else {}
            return await self._ask(request._replace(customer_id=reply.customer_id, **via))
        if isinstance(reply, protocol.Missing):
            return None
        if isinstance(reply, protocol.Invalid):
            raise InputError(reply.field, reply.reason)
        if isinstance(reply, protocol.Conflict):
            raise Conflict(reply.reason)
        if isinstance(reply, protocol.Busy):  # a full queue's names its shard, not the
            # customer, whom a request by alias must not name to a key without profile:read
            # (decision.proto, Decision.customer_id)
            raise Busy(reply.reason or f"{self.owner(route_key(request))} is at its queue "
                                       f"limit")
        if isinstance(reply, Failed):
            raise reply.kind(reply.reason)
        if isinstance(reply, protocol.Unavailable):
            raise ShardUnavailable(reply.reason)
        raise Unavailable(f"unexpected reply {reply!r}")  # MOVED never reaches here

    def _send(self, lane: Lane, item: Item) -> None:
        lane.shard = self._owner_of(item.request.partition)
        lane.inflight += 1
        item.routed = self.version
        link = self._links.get(lane.shard)
        if link is None:
            link = self._links[lane.shard] = ShardLink(lane.shard, CLIENT_INFLIGHT_CALLS)
            link.task = asyncio.get_running_loop().create_task(self._pump(link))
        link.queue.append(item)
        link.wake.set()

    def _answered(self, item: Item, reply: Reply) -> None:
        p = item.request.partition
        lane = self._lanes[p]
        lane.inflight -= 1
        named = reply.map_version if isinstance(reply, protocol.Moved) else None
        # held: its owner is frozen by a move not settled (control/moves.py): a bounded wait
        held = named is not None and protocol.NOT_MINE != named <= item.routed
        if held or isinstance(reply, Undelivered):
            item.reroutes += 1
            self._wait(lane, item, item.routed + 1, CLIENT_REROUTE_S, item.reroutes >
                       CLIENT_REROUTES and (f"partition {p} is not served yet" if held
                                            else reply.reason), held)
        elif named is not None:
            item.redirects += 1
            self._wait(lane, item, self.version + 1 if named == protocol.NOT_MINE else named,
                       LONG_POLL_S, item.redirects > MAX_REDIRECTS
                       and f"partition {p} kept moving")
        elif isinstance(reply, Failed):
            self._fail(item, reply)
        elif isinstance(reply, (protocol.Busy, protocol.Unavailable)):
            # the shard refused it or failed it (an Unavailable may have been applied: a round
            # that failed after a sync covered it is replayed): the rest of its call goes
            # unsent, for order, as for the client's own failures (not for Invalid: the
            # gateway checks an event's values before it routes it)
            if isinstance(reply, protocol.Busy) and not reply.reason:  # a full queue's: named
                # by the shard that answered, not the partition's owner now (a move may have
                # changed it meanwhile)
                reply = reply._replace(reason=f"{lane.shard} is at its queue limit")
            self._fail(item, reply)
        elif not item.future.done():
            item.future.set_result(reply)
        self._resume_when_free(p, lane)

    def _behind(self, item: Item) -> None:
        """Take back a request not sent yet whose lane has an earlier one waiting to go again:
        it waits with it, to go after it (`_resume` re-sends them in their original order)."""
        lane = self._lanes[item.request.partition]
        lane.inflight -= 1
        self._wait(lane, item, 0, 0.0, failed=False)
        self._resume_when_free(item.request.partition, lane)

    def _resume_when_free(self, p: int, lane: Lane) -> None:
        """Once none of the lane's requests is in flight, re-send what waits in it."""
        if lane.inflight == 0 and (lane.moved or lane.held):
            asyncio.get_running_loop().create_task(self._resume(p, lane))

    def _wait(self, lane: Lane, item: Item, version: int, wait_s: float,
              failed: str | bool, held: bool = False) -> None:
        """Have a request that did not reach its owner wait for map `version` (up to `wait_s`)
        before going again (`held` by a move: HELD counts the lane's waits, not its shard); or,
        when it `failed` (a reason) or was given up on, answer it NotSent (`_fail`)."""
        if item.given_up() or failed:  # no shard took it: not applied
            self._fail(item, item.unsent() if item.given_up() else Failed(NotSent, failed))
            return
        if held:
            self._held.add(item.request.partition)
        lane.moved.append(item)
        self._hold(item)
        lane.want_version = max(lane.want_version, version)
        lane.wait_s = max(lane.wait_s, wait_s)

    async def _resume(self, p: int, lane: Lane) -> None:
        """Every earlier request has its answer: re-send the moved ones in their original
        order once the map shows their new owner, then what was held behind them; those
        given up on meanwhile go no further (never sent, they had no effect: answered so)."""
        if lane.moved:
            await self._map_newer_than(lane.want_version, lane.wait_s)
        if lane.inflight:  # another resume already started
            return
        ready = sorted(lane.moved, key=lambda item: item.order) + list(lane.held)
        lane.moved, lane.held, lane.wait_s = [], deque(), 0.0
        self._held.discard(p)
        for item in ready:
            self._unhold(item)
            if item.given_up():
                self._fail(item, item.unsent())
            else:
                self._send(lane, item)

    @staticmethod
    def _fail(item: Item, failure: Reply | Failed, reason: str = "") -> None:
        """Answer `item` with a failure, the client's own or its shard's refusal or failure
        (unless its caller went away); an Unavailable may have been applied, which its answer
        says (retry with the same key). The rest of its call is given up first, for that
        reason (the failure's own, unless given): sent later, a customer's later events of the
        call would be applied without it (and the caller's retry would apply it after them)."""
        if item.call is not None:
            item.call.give_up(f"not sent: an earlier event of its call failed: "
                              f"{reason or failure.reason}", EarlierFailed)
        if not item.future.done():
            item.future.set_result(failure)
