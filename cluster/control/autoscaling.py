"""Autoscaling on Kairos's own load: how many workers to ask Ray's autoscaler for, and which
worker to empty when there are more than the load needs.

Ray's autoscaler adds a node for resource demand it cannot place, and removes a node that has
been idle (no actor, nothing in use) for its idle timeout. Kairos's actors ask Ray for no
resources and every serving node hosts a gateway and shards, so neither happens by itself.
The controller therefore drives it (settings: AUTOSCALE_*):

- Load, each control round, from the shards' health (at most a second old): decisions and
  events per second (over the last 5 s), resident customers and queued requests per shard,
  each as a share of what one shard is to carry; the load is the fullest of the three (1.0:
  at capacity).
- Up: the load at capacity for AUTOSCALE_UP_AFTER_S -> one more worker. The request is a
  standing `request_resources` of that many one-unit bundles of AUTOSCALE_RESOURCE, which
  every worker offers once: the autoscaler adds the missing node, and the node that joins gets
  a gateway and shards (nodes.py), as any node that joins does.
- Down: the load, spread over the shards of all but the emptiest worker, under
  AUTOSCALE_DOWN_SHARE for AUTOSCALE_DOWN_AFTER_S -> the request drops by one and that worker
  is drained (controller.drain_node: its partitions move under traffic, its shards and
  gateway stop). Holding no actor, it goes idle, and the autoscaler removes it once its idle
  timeout passes; a draining node gets no gateway or shard again (nodes.py).
- A worker drained this way that the autoscaler has not removed yet is taken back by the next
  step up, rather than asking for a new node: its unit would answer the standing request as a
  new node's would, so the autoscaler would add none and keep it, drained, for good. So is one
  whose drain is held (a move not settled keeps shards there): it serves again as it is.
- One step per AUTOSCALE_COOLDOWN_S; no step up while a requested worker has not joined, none
  at all while a drain runs. Workers that join unasked count as wanted (up to the maximum); a
  worker drained by someone else (`kairos drain`) counts as one fewer wanted (down to the
  minimum), so that the autoscaler removes it too.

`Policy` decides from numbers alone (tested without Ray or a cluster); `Autoscaling` gathers
them from a Controller and acts through its Backend.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from kairos.cluster.settings import (AUTOSCALE_COOLDOWN_S, AUTOSCALE_DOWN_AFTER_S,
                                     AUTOSCALE_DOWN_SHARE, AUTOSCALE_MAX_WORKERS,
                                     AUTOSCALE_MIN_WORKERS, AUTOSCALE_RESOURCE,
                                     AUTOSCALE_SHARD_QUEUE, AUTOSCALE_SHARD_RATE,
                                     AUTOSCALE_SHARD_RESIDENT, AUTOSCALE_UP_AFTER_S,
                                     METRICS_FLUSH_S)
from kairos.cluster.transport.backend import Backend

log = logging.getLogger("kairos.autoscaling")
COUNTED = ("decisions", "events")  # the shards' counters whose growth is their work rate


@dataclass(frozen=True)
class Limits:
    """The policy's settings (settings.py's AUTOSCALE_* by default)."""

    min_workers: int = AUTOSCALE_MIN_WORKERS
    max_workers: int = AUTOSCALE_MAX_WORKERS
    shard_rate: float = AUTOSCALE_SHARD_RATE
    shard_resident: int = AUTOSCALE_SHARD_RESIDENT
    shard_queue: int = AUTOSCALE_SHARD_QUEUE
    down_share: float = AUTOSCALE_DOWN_SHARE
    up_after_s: float = AUTOSCALE_UP_AFTER_S
    down_after_s: float = AUTOSCALE_DOWN_AFTER_S
    cooldown_s: float = AUTOSCALE_COOLDOWN_S

    def __post_init__(self) -> None:
        if self.max_workers and self.min_workers > self.max_workers:
            raise ValueError(f"KAIROS_AUTOSCALE_MIN_WORKERS ({self.min_workers}) is more than "
                             f"KAIROS_AUTOSCALE_MAX_WORKERS ({self.max_workers})")
        if not 0 < self.down_share < 1:
            raise ValueError(f"the down share must be in (0, 1), got {self.down_share}")

    @property
    def enabled(self) -> bool:
        return self.max_workers > 0

    def bounded(self, workers: int) -> int:
        return min(self.max_workers, max(self.min_workers, workers))


@dataclass(frozen=True)
class Load:
    """The cluster's work at one moment: totals over its shards."""

    shards: int
    rate: float = 0.0  # decisions and events per second
    resident: int = 0
    queued: int = 0

    def share(self, limits: Limits, shards: int | None = None) -> float:
        """The fullest of rate, residents and queue per shard, as a share of what a shard is
        to carry, were it spread over `shards` (default: the shards there are)."""
        shards = self.shards if shards is None else shards
        if shards <= 0:
            return math.inf if self.rate or self.resident or self.queued else 0.0
        return max(self.rate / shards / limits.shard_rate,
                   self.resident / shards / limits.shard_resident,
                   self.queued / shards / limits.shard_queue)


@dataclass(frozen=True)
class Worker:
    """A Ray node other than the controller's, as the policy sees it."""

    node: str
    shards: int = 0
    resident: int = 0
    draining: bool = False
    # drained by the autoscaler (done, or held and not running now) and not removed yet
    released: bool = False


@dataclass(frozen=True)
class Step:
    """What the policy decided: the workers to request, and the worker to drain (if any)."""

    desired: int
    drain: str | None = None
    reuse: str | None = None  # a released worker to take back instead of asking for a node


class Policy:
    """The desired worker count, from the load and the workers over time (`now` in seconds
    of any monotonic clock). Pure: no I/O."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.desired: int | None = None  # None until the first round sees the workers
        self._over_since: float | None = None
        self._under_since: float | None = None
        self._stepped_at = -math.inf
        self._draining: set[str] = set()  # draining workers already accounted for

    def decide(self, now: float, load: Load, workers: list[Worker]) -> Step | None:
        """A step to take now, or None (`desired` may still have changed: workers that
        joined or were drained by someone else are taken into account without a step)."""
        limits = self.limits
        serving = [w for w in workers if not w.draining]
        if self.desired is None:  # a first round, or a restarted controller's
            self.desired = limits.bounded(len(serving))
            self._draining = {w.node for w in workers if w.draining}  # gone already
        for w in workers:
            if w.draining and w.node not in self._draining:  # drained by someone else
                self.desired = limits.bounded(self.desired - 1)
        self._draining = {w.node for w in workers if w.draining}
        self.desired = limits.bounded(max(self.desired, len(serving)))  # joined unasked
        victim = self.victim(serving)
        share = load.share(limits)
        without = load.share(limits, load.shards - victim.shards) if victim else math.inf
        self._over_since = (self._over_since if self._over_since is not None else now) \
            if share >= 1.0 else None
        self._under_since = (self._under_since if self._under_since is not None else now) \
            if without < limits.down_share else None
        if now - self._stepped_at < limits.cooldown_s:
            return None
        up = self._over_since is not None and now - self._over_since >= limits.up_after_s
        released = sorted(w.node for w in workers if w.draining and w.released)
        if up and released and len(serving) < limits.max_workers:
            # its unit answers the standing request as well as a new node's would, so the
            # autoscaler would add none, and keep it, drained, for good
            return self._step(now, max(self.desired, len(serving) + 1), None, released[0])
        if up and self.desired < limits.max_workers and len(serving) >= self.desired:
            return self._step(now, self.desired + 1, None)
        if (self._under_since is not None and now - self._under_since >= limits.down_after_s
                and self.desired > limits.min_workers):
            desired = self.desired - 1
            drain = victim.node if len(serving) > desired else None  # else: one not joined yet
            if drain is not None:
                self._draining.add(drain)  # the policy's own drain: accounted for here
            return self._step(now, desired, drain)
        return None

    @staticmethod
    def victim(serving: list[Worker]) -> Worker | None:
        """The worker to drain first: the one with the fewest customers to move."""
        return min(serving, key=lambda w: (w.resident, w.shards, w.node), default=None)

    def _step(self, now: float, desired: int, drain: str | None,
              reuse: str | None = None) -> Step:
        self.desired = desired
        self._stepped_at = now
        self._over_since = self._under_since = None
        return Step(desired, drain, reuse)


class Meter:
    """Shard health answers, round after round, as a Load. The rate is the counters' growth
    over the last `window_s` at least: a shard's health holds statistics refreshed every
    METRICS_FLUSH_S, so rounds closer together than that see the same counters. A shard not
    in the window's first sample adds nothing yet; one whose counters went back (restarted)
    adds what it counted since."""

    def __init__(self, window_s: float = 5 * METRICS_FLUSH_S):
        self.window_s = window_s
        self._samples: deque[tuple[float, dict[str, float]]] = deque()

    def sample(self, now: float, healths: dict[str, dict[str, Any]]) -> Load:
        counted = {name: float(sum(h.get(k, 0) for k in COUNTED)) for name, h in healths.items()}
        self._samples.append((now, counted))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()  # the newest sample at least window_s old stays first
        then, before = self._samples[0]
        grown = sum(c - before[n] if c >= before[n] else c
                    for n, c in counted.items() if n in before)
        return Load(shards=len(healths), rate=grown / (now - then) if now > then else 0.0,
                    resident=sum(h.get("resident", 0) for h in healths.values()),
                    queued=sum(h.get("queued", 0) for h in healths.values()))


class Autoscaling:
    """The policy on a running controller: called once per control round (actor.py)."""

    def __init__(self, backend: Backend, limits: Limits | None = None,
                 clock: Callable[[], float] = time.monotonic, resource: str = AUTOSCALE_RESOURCE):
        self.limits = limits or Limits()
        if self.limits.enabled and not resource.strip():
            raise ValueError("KAIROS_AUTOSCALE_RESOURCE must name the Ray resource every worker "
                             "offers one of, got ''")
        self.backend = backend
        self.policy = Policy(self.limits)
        self.meter = Meter()
        self.clock = clock
        self.resource = resource
        self.requested: int | None = None  # what the standing request asks for now
        self.drain: asyncio.Task | None = None

    async def round(self, controller: Any) -> Step | None:
        """`controller`: the Controller (not imported: it would be a cycle through actor.py's
        imports). The step taken, if any."""
        if not self.limits.enabled or (self.drain is not None and not self.drain.done()):
            return None
        names = controller.shards
        answers = await asyncio.gather(*(self.backend.shard(n).health() for n in names),
                                       return_exceptions=True)
        healths = {n: h for n, h in zip(names, answers) if isinstance(h, dict)}
        load = self.meter.sample(self.clock(), healths)
        step = self.policy.decide(self.clock(), load, self.workers(controller, healths))
        if step is not None and step.reuse is not None:
            await controller.reuse_node(step.reuse)
        if self.requested != self.policy.desired:
            self.request(self.policy.desired)
        if step is not None:
            log.warning("autoscaling: load %.2f of capacity (%.0f/s, %d resident, %d queued "
                        "on %d shards): %d worker(s)%s%s", load.share(self.limits), load.rate,
                        load.resident, load.queued, load.shards, step.desired,
                        f", draining node {step.drain}" if step.drain else "",
                        f", taking back node {step.reuse}" if step.reuse else "")
        if step is not None and step.drain is not None:
            self.drain = asyncio.get_running_loop().create_task(
                self._drain(controller, step.drain))
        return step

    def workers(self, controller: Any, healths: dict[str, dict[str, Any]]) -> list[Worker]:
        """Every alive node but the controller's, with its shards and residents."""
        on: dict[str, list[dict[str, Any]]] = {}
        for name, health in healths.items():
            on.setdefault(controller.placement.get(name), []).append(health)
        placed = list(controller.placement.values())
        return [Worker(node, placed.count(node), sum(h.get("resident", 0)
                                                     for h in on.get(node, [])),
                       node in controller.nodes.draining,
                       node in controller.nodes.released | controller.nodes.releasing
                       and not controller.drain_running(node))
                for node in self.backend.nodes() if node != controller.home_node]

    def request(self, desired: int) -> None:
        self.backend.request_resources([{self.resource: 1}] * desired)
        log.warning("autoscaling: asking Ray's autoscaler for %d worker(s) (%s)", desired,
                    self.resource)
        self.requested = desired

    async def _drain(self, controller: Any, node: str) -> None:
        try:
            await controller.release_node(node)
        except Exception:  # cut short: it stays marked draining, the control loop finishes
            # it and marks it released then (a step up takes it back); refused (it left, say):
            # still serving, the next round counts it as wanted
            log.exception("autoscaling: draining node %s failed", node)
