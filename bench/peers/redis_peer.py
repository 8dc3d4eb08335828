"""The Redis peer: what most teams would build. A stateless gRPC service; every customer's
profile lives in Redis (a real redis-server on 127.0.0.1). Each Decide reads the profile,
scores every action with NumPy and writes the profile back; each Ingest reads it, applies the
event (decayed counters), re-scores and writes it back.

The model is deliberately simple (a logistic score per action, times value and lever, masked
by the channel, top-k), far less than Kairos evaluates; what it measures is the architecture:
a network round trip to the store and back on every request.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import redis
import redis.asyncio as aioredis

from kairos.core.compiler import default_compiled
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from ..journeys import customer_id

POPULATE_BATCH = 10_000  # profiles per pipelined MSET
CONNECTIONS = 64  # the service's Redis connection pool
HALF_LIFE_S = 7 * 86400.0  # of the event counters
SEED = 7


class Scorer:
    """Profiles as float64 vectors (as long as Kairos's profile row); a fixed, seeded model."""

    def __init__(self) -> None:
        compiled = default_compiled()
        rng = np.random.default_rng(SEED)
        self.width = compiled.layout.size
        self.action_ids = compiled.action_ids
        self.channel_index = compiled.channel_index
        self.placement_index = compiled.placement_index
        self.top_k = compiled.placement_top_k
        self.weights = rng.normal(0.0, 0.3, (len(self.action_ids), self.width - 1))
        self.bias = rng.normal(-2.0, 0.5, len(self.action_ids))
        self.worth = rng.uniform(1.0, 50.0, len(self.action_ids)) * compiled.lever
        self.offered = compiled.offered.astype(bool)
        self.event_slot = {e.name: 1 + i % (self.width - 1)
                           for i, e in enumerate(compiled.catalog.events)}

    def new_profiles(self, n: int, rng: np.random.Generator) -> np.ndarray:
        profiles = rng.exponential(1.0, (n, self.width))
        profiles[:, 0] = time.time()  # slot 0: the profile's clock
        return profiles

    def apply(self, profile: np.ndarray, event_type: str, now: float) -> None:
        profile[1:] *= 0.5 ** ((now - profile[0]) / HALF_LIFE_S)
        profile[0] = now
        profile[self.event_slot.get(event_type, 1)] += 1.0

    def best(self, profile: np.ndarray, channel: str, placement: str) -> list[pb.RankedAction]:
        ch = self.channel_index[channel]
        k = int(self.top_k[ch, self.placement_index[ch].get(placement, 0)])
        propensity = 1.0 / (1.0 + np.exp(-(self.weights @ profile[1:] + self.bias)))
        priority = np.where(self.offered[:, ch], propensity * self.worth, 0.0)
        top = np.argpartition(-priority, k)[:k]
        top = top[np.argsort(-priority[top])]
        return [pb.RankedAction(action_id=self.action_ids[a], priority=float(priority[a]),
                                propensity=float(propensity[a])) for a in top if priority[a] > 0]


def populate(port: int, customers: int, on_progress: Callable[[int], None]) -> None:
    """Every customer's profile, in pipelined batches."""
    scorer = Scorer()
    rng = np.random.default_rng(SEED)
    with redis.Redis(port=port) as client:
        for start in range(0, customers, POPULATE_BATCH):
            stop = min(start + POPULATE_BATCH, customers)
            rows = scorer.new_profiles(stop - start, rng)
            client.mset({customer_id(i): rows[i - start].tobytes() for i in range(start, stop)})
            on_progress(stop - start)


class RedisDecisions(decision_pb2_grpc.DecisionServiceServicer):
    def __init__(self, port: int):
        self.port = port
        self.scorer = Scorer()
        self.redis: aioredis.Redis | None = None

    async def open(self) -> None:
        self.redis = aioredis.Redis(port=self.port, max_connections=CONNECTIONS)

    async def close(self) -> None:
        await self.redis.aclose()

    async def _profile(self, key: str) -> np.ndarray:
        raw = await self.redis.get(key)
        if raw is None:
            return self.scorer.new_profiles(1, np.random.default_rng())[0]
        return np.frombuffer(raw, np.float64).copy()

    async def Decide(self, request: pb.DecideRequest, context) -> pb.Decision:
        profile = await self._profile(request.customer_id)
        actions = self.scorer.best(profile, request.channel, request.placement)
        profile[0] = time.time()  # the decision is part of the record: write it back
        await self.redis.set(request.customer_id, profile.tobytes())
        return pb.Decision(customer_id=request.customer_id, channel=request.channel,
                           placement=request.placement, actions=actions)

    async def Ingest(self, request: pb.Event, context) -> pb.IngestAck:
        profile = await self._profile(request.customer_id)
        self.scorer.apply(profile, request.type, time.time())
        ack = pb.IngestAck(event_id=request.event_id)
        if request.decide_placement:
            ack.decision.actions.extend(self.scorer.best(profile, request.channel,
                                                         request.decide_placement))
        await self.redis.set(request.customer_id, profile.tobytes())
        return ack
