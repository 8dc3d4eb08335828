"""The same-work Redis peer: Kairos's own core, the state in Redis. A stateless gRPC service
whose every request reads the customer's block from a real redis-server (127.0.0.1), loads it
into the core's engine on the catalog Kairos runs in the bench (the default), decides or
applies the event with the compiled kernel exactly as a shard's engine does, and writes the
block back where the request changed it (an event does; a Decide leaves it byte for byte as it
was, and the peer writes nothing back for it, where a Kairos Decide writes a decision-log
record carrying that block: a write this peer skips). The block is the core's one-customer
columnar block, the same bytes the decision log and partition handovers carry
(`kairos.cluster.storage.blocks`). The difference from Kairos in the decision work is where the
state lives: in Redis, a network round trip away on every request, instead of in the memory of
the shard that owns the customer.

What a shard does around the core is not repeated here: its journal (this peer's state is as
durable as its redis-server, which runs without persistence in the bench), decision ids sealed
for outcomes, the decision log, timers, idempotency keys, aliases. As in the simple Redis peer,
two requests for one customer at once both read the block and the later write wins (a shard
serialises them); the Decide sweep's requests leave the block as they found it, so that race
loses nothing there.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import redis
import redis.asyncio as aioredis

from kairos.cluster.gateway import requests, wire
from kairos.cluster.gateway.calls import abort
from kairos.cluster.storage import blocks
from kairos.core.compiler import default_compiled
from kairos.core.decision import Decision
from kairos.core.engine import DecisionEngine
from kairos.core.errors import InputError
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from ..journeys import PROFILE_EVENT, crm_profiles

POPULATE_BATCH = 10_000  # blocks per pipelined MSET
CONNECTIONS = 64  # the service's Redis connection pool
SEED = 0  # of the engine's draws (a shard's engine is seeded too)


class SameWork:
    """The core's engine over one customer at a time: the customer's block is loaded for the
    request and dropped after it, so the engine holds no customer between requests."""

    def __init__(self, seed: int = SEED, clock: Callable[[], float] = time.time):
        self.engine = DecisionEngine(default_compiled(), capacity=1, seed=seed)
        self.compiled = self.engine.compiled
        self.clock = clock

    def decide(self, customer_id: str, block: bytes | None, channel: str, placement: str,
               context: Mapping[str, Any], max_actions: int = 0, explain: bool = False
               ) -> tuple[Decision, bytes | None]:
        """The decision on the customer's block, and the block to write back: None where the
        decision left the block as it was read (a Kairos Decide logs it in a decision-log
        record instead, which this peer skips), or where there was none (a customer nobody
        has seen, decided on an empty profile, which Kairos does not keep)."""
        with self._loaded(customer_id, block):
            decision = self.engine.decide(customer_id, channel, placement, context,
                                          self.clock(), max_actions, explain)
            after = None if block is None else blocks.pack_one(self.engine, customer_id)
            return decision, None if after == block else after

    def ingest(self, customer_id: str, block: bytes | None, event_type: str, when: float,
               attributes: Mapping[str, Any], decide: tuple[str, str] | None = None
               ) -> tuple[int, Decision | None, bytes]:
        """Apply the event to the customer's block (a fresh profile for `None`): its sequence
        number, the decision it asked for (re-evaluated as of the event, as a shard does) and
        the block to write back. Input is checked before anything is applied."""
        event = self.engine.encode_event(customer_id, event_type, when, attributes)
        view = None if decide is None else \
            self.engine.encode_request(customer_id, *decide, None, event.time)
        with self._loaded(customer_id, block):
            sequence = self.engine.apply([event])[0]
            decision = None if view is None else self.engine.decide_encoded([view])[0]
            return sequence, decision, blocks.pack_one(self.engine, customer_id)

    @contextmanager
    def _loaded(self, customer_id: str, block: bytes | None) -> Iterator[None]:
        if block is None:
            self.engine.activate([customer_id])
        else:
            blocks.import_block(self.engine, blocks.unpack(block))
        try:
            yield
        finally:
            self.engine.table.evict(customer_id)


def populate(port: int, customers: int, on_progress: Callable[[int], None]) -> None:
    """Every customer's block, made by the core from the CRM profile event Kairos's bulk load
    sends (the same customers and attributes), in pipelined batches."""
    engine = SameWork().engine
    now = time.time()
    profiles = crm_profiles(customers)
    with redis.Redis(port=port) as client:
        for start in range(0, customers, POPULATE_BATCH):
            batch = [next(profiles) for _ in range(min(POPULATE_BATCH, customers - start))]
            engine.apply([engine.encode_event(customer, PROFILE_EVENT, now, attributes)
                          for customer, attributes in batch])
            packed = {}
            for customer, _ in batch:
                packed[customer] = blocks.pack_one(engine, customer)
                engine.table.evict(customer)
            client.mset(packed)
            on_progress(len(batch))


class CoreDecisions(decision_pb2_grpc.DecisionServiceServicer):
    """Decide and Ingest (unary) of kairos.v1, the requests checked as Kairos's gateway checks
    them (INVALID_ARGUMENT naming the field)."""

    def __init__(self, port: int, seed: int = SEED, clock: Callable[[], float] = time.time):
        self.port = port
        self.core = SameWork(seed, clock)
        self.redis: aioredis.Redis | None = None

    async def open(self) -> None:
        self.redis = aioredis.Redis(port=self.port, max_connections=CONNECTIONS)

    async def close(self) -> None:
        await self.redis.aclose()

    async def Decide(self, request: pb.DecideRequest, context) -> pb.Decision:
        try:
            customer = _customer(request)
            if request.record_impression:
                raise InputError("record_impression", "not supported by this peer")
            channel, placement = requests.view(self.core.compiled, request.channel,
                                               request.placement)
            values = requests.context_request(self.core.compiled, request)
            block = await self.redis.get(customer)
            decision, changed = self.core.decide(customer, block, channel, placement, values,
                                                 request.max_actions, request.explain)
        except InputError as exc:
            await abort(context, exc)
        if changed is not None:  # what the decision changed of the record
            await self.redis.set(customer, changed)
        return wire.decision_out(decision, self.core.compiled.agent_texts)

    async def Ingest(self, request: pb.Event, context) -> pb.IngestAck:
        try:
            customer = _customer(request)
            _, event = requests.event_request(request, self.core.compiled)
            block = await self.redis.get(customer)
            sequence, decision, changed = self.core.ingest(
                customer, block, event.event_type, event.time, event.attributes, event.decide)
        except InputError as exc:
            await abort(context, exc)
        await self.redis.set(customer, changed)
        ack = pb.IngestAck(event_id=request.event_id, sequence=sequence)
        if decision is not None:
            ack.decision.CopyFrom(wire.decision_out(decision, self.core.compiled.agent_texts))
        return ack


def _customer(request: pb.DecideRequest | pb.Event) -> str:
    """The customer id the request names (this peer keeps no alias directory)."""
    who = requests.who(request)
    if who.customer_id is None:
        raise InputError("alias", "not supported by this peer: name the customer_id")
    return who.customer_id
