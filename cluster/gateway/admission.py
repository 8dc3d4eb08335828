"""When a gateway sheds load: PIE (RFC 8033) over the delay its calls meet before they are
served, the event loop's lag.

An overloaded gateway that admits everything serves nobody: calls queue in gRPC and in the
event loop until their deadlines pass, and the shards still spend work on answers nobody
waits for. So a gateway refuses a share of new DecisionService calls, at once, with
RESOURCE_EXHAUSTED (before their request is parsed), and serves the rest at about the
latency it has when it is not overloaded.

The share is PIE's drop probability. Every SHED_UPDATE_S it is moved by how far the queueing
delay is above or below SHED_TARGET_S, and by how fast it is rising. The delay is how late a
timer of the event loop fires: a gateway short of CPU makes every call wait for its turn in
the loop, as the calls gRPC has not handed over yet do, and refusing a share of them is what
brings the wait down. Slow shards are not a reason to shed: their answers are awaited
without work, and refusing calls would not make them faster (the client's queue bound and the
callers' deadlines limit what waits for them). As RFC 8033 does, a short burst sheds nothing (no refusal while the delay is under half the
target and the share is low), and the share decays once the delay is gone (a timer is never
exactly on time, so "gone" is under half the target here).
"""
from __future__ import annotations

import asyncio
import random
import time
from typing import Callable

from kairos.cluster.settings import SHED_TARGET_S, SHED_UPDATE_S

ALPHA, BETA = 0.125, 1.25  # RFC 8033's gains, per second of delay
MAX_STEP = 0.02  # the most the share rises per update once it is 10 % or more (RFC 8033 5.1)
DECAY = 0.98  # per update while the delay is under half the target


class Shedder:
    """`shed_share` is the share of new calls refused; `run()` keeps it."""

    def __init__(self, target_s: float = SHED_TARGET_S, update_s: float = SHED_UPDATE_S,
                 draw: Callable[[], float] = random.random):
        self.target_s = target_s
        self.update_s = update_s
        self._draw = draw
        self.shed_share = 0.0
        self.delay_s = 0.0  # the last delay measured
        self.refused = 0  # calls refused so far

    def admits(self) -> bool:
        """Whether to take a new call (a refused one is counted)."""
        if self.shed_share == 0.0 or (self.delay_s < self.target_s / 2
                                      and self.shed_share < 0.2):
            return True
        if self._draw() >= self.shed_share:
            return True
        self.refused += 1
        return False

    async def run(self) -> None:
        """Measure the delay and move the share, every `update_s`, until cancelled."""
        while True:
            start = time.monotonic()
            await asyncio.sleep(self.update_s)
            self.update(max(0.0, time.monotonic() - start - self.update_s))

    def update(self, delay_s: float) -> None:
        """One PIE update with the delay just measured."""
        p = self.shed_share
        step = _scale(p) * (ALPHA * (delay_s - self.target_s) + BETA * (delay_s - self.delay_s))
        if p >= 0.1:
            step = min(step, MAX_STEP)
        p += step
        if max(delay_s, self.delay_s) < self.target_s / 2:  # RFC 8033: no delay at all
            p *= DECAY
        self.shed_share = min(max(p, 0.0), 1.0)
        self.delay_s = delay_s


def _scale(p: float) -> float:
    """RFC 8033's auto-tuning: small shares move in small steps, so that a stable share of a
    fraction of a percent is reachable."""
    for bound, divisor in ((1e-6, 2048), (1e-5, 512), (1e-4, 128), (1e-3, 32), (1e-2, 8),
                           (1e-1, 2)):
        if p < bound:
            return 1.0 / divisor
    return 1.0
