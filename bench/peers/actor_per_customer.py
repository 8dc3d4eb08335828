"""The literal card: one Ray actor per customer, each with its own decision engine.

One Ray actor process per customer cannot hold a million customers: each costs a worker
process. So this peer does not try to fill the machine. It creates a bounded number of actors,
measures the memory each one really takes (RSS, PSS and USS from /proc/<pid>/smaps_rollup) and
how long creating them took, and *extrapolates* how many the machine could hold from the
memory available before they were created. It then serves Decide for exactly the customers it
hosts, so its latency and throughput are measured, not assumed.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any, Callable

import ray

from kairos.cluster.gateway import wire
from kairos.core.compiler import default_compiled
from kairos.core.decision import Decision
from kairos.core.engine import DecisionEngine
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from ..journeys import PROFILE_EVENT, customer_id, profile_attributes

NAMESPACE = "kairos-bench"
CREATE_TIMEOUT_S = 600.0


@ray.remote(num_cpus=0)
class CustomerActor:
    """One customer: its profile, its models and a compiled catalog of its own."""

    def __init__(self, customer: str):
        self.customer = customer
        self.engine = DecisionEngine(default_compiled(), capacity=1)
        self.engine.apply([self.engine.encode_event(customer, PROFILE_EVENT, time.time(),
                                                    profile_attributes(random.Random(customer)))])

    def pid(self) -> int:
        return os.getpid()

    def decide(self, channel: str, placement: str, context: dict[str, Any]) -> Decision:
        return self.engine.decide(self.customer, channel, placement or None, context)

    def ingest(self, event_type: str, attributes: dict[str, Any],
               decide: tuple[str, str] | None) -> Decision | None:
        now = time.time()
        self.engine.apply([self.engine.encode_event(self.customer, event_type, now,
                                                    attributes)])
        return self.engine.decide(self.customer, *decide, now=now) if decide else None


def actor_name(index: int) -> str:
    return f"bench-customer-{customer_id(index)}"


def create(n: int, on_progress: Callable[[int], None]) -> dict[str, Any]:
    """Create n customer actors (c0000000 ...); their memory, creation time and the
    extrapolated capacity of this machine."""
    available = _meminfo_bytes("MemAvailable")
    started = time.perf_counter()
    actors = [CustomerActor.options(name=actor_name(i), namespace=NAMESPACE).remote(
        customer_id(i)) for i in range(n)]
    pids = []
    pending = {a.pid.remote(): a for a in actors}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=CREATE_TIMEOUT_S)
        if not done:
            raise TimeoutError(f"customer actors not created within {CREATE_TIMEOUT_S:.0f} s")
        pids.append(ray.get(done[0]))
        pending.pop(done[0])
        on_progress(1)
    created_s = time.perf_counter() - started
    memory = [_smaps_bytes(pid) for pid in pids]
    per_actor = {kind: sum(m[kind] for m in memory) / n for kind in ("rss", "pss", "uss")}
    return {"actors": actors, "hosted": n, "create_s": round(created_s, 2),
            "create_s_per_actor": round(created_s / n, 3),
            "mib_per_customer": {k: round(v / 2**20, 1) for k, v in per_actor.items()},
            "available_gib": round(available / 2**30, 2),
            # extrapolated, not attempted: the memory available before the actors, divided
            # by what one actor took (PSS: shared pages counted once across actors)
            "capacity_extrapolated": int(available // per_actor["pss"]),
            "capacity_extrapolated_by_rss": int(available // per_actor["rss"])}


def _meminfo_bytes(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _smaps_bytes(pid: int) -> dict[str, int]:
    """RSS, PSS and USS (private pages) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value) * 1024
    return {"rss": fields["Rss"], "pss": fields["Pss"],
            "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


class ActorDecisions(decision_pb2_grpc.DecisionServiceServicer):
    """Routes each request to its customer's actor by name."""

    def __init__(self, n: int):
        self.actors = {customer_id(i): ray.get_actor(actor_name(i), namespace=NAMESPACE)
                       for i in range(n)}

    async def Decide(self, request: pb.DecideRequest, context) -> pb.Decision:
        actor = self.actors[request.customer_id]
        decision = await actor.decide.remote(request.channel, request.placement,
                                             wire.values_in("context", request.context))
        return wire.decision_out(decision)

    async def Ingest(self, request: pb.Event, context) -> pb.IngestAck:
        actor = self.actors[request.customer_id]
        decide = (request.channel, request.decide_placement) if request.decide_placement \
            else None
        decision = await actor.ingest.remote(request.type,
                                             wire.values_in("attributes", request.attributes),
                                             decide)
        ack = pb.IngestAck(event_id=request.event_id)
        if decision is not None:
            ack.decision.CopyFrom(wire.decision_out(decision))
        return ack
