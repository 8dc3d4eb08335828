"""When a gateway sheds load: PIE (RFC 8033) over the delay its calls meet before they are
served (the event loop's lag), and over how much of the time the loop wants a CPU.

An overloaded gateway that admits everything serves nobody: calls queue in gRPC and in the
event loop until their deadlines pass, and the shards still spend work on answers nobody
waits for. So a gateway refuses a share of new DecisionService calls, at once, with
RESOURCE_EXHAUSTED (before their request is parsed), and serves the rest at about the
latency it has when it is not overloaded.

The share is PIE's drop probability. Every SHED_UPDATE_S it is moved by how far the queueing
delay is above or below SHED_TARGET_S, and by how fast it is rising (every SHED_IDLE_UPDATE_S
while nothing is shed and the loop is on time and far from busy: each update wakes the loop, and
an idle gateway need not pay 67 wake-ups a second). A gateway that had no call for PARK_AFTER_S
updates once every PARK_AFTER_S, or at once when the next call arrives (its delay: how long the
loop took to turn to the shedder after it): with no new call there is nothing to refuse, and
work on calls already open (stream messages, watches) that keeps the loop busy is still seen
within PARK_AFTER_S, and the updates go on as before. The delay is how late a timer of the event
loop fires: a gateway short of CPU makes every call wait for its turn in the loop, as the calls
gRPC has not handed over yet do, and refusing a share of them is what brings the wait down. Slow
shards are not a reason to shed: their answers are awaited without work, and refusing calls
would not make them faster (the client's queue bound and the callers' deadlines limit what waits
for them). As RFC 8033 does, a short burst sheds nothing (no refusal while the delay is under
half the target and the share is low), and the share decays once the delay is gone (a timer is
never exactly on time, so "gone" is under half the target here).

The lag alone misses the overload that matters most on a busy node. grpc.aio accepts one call
of a method at a time, each through a hand-over from its poller thread to the loop, so when
the node's cores are all taken the calls queue inside gRPC, unseen, while every turn of the
loop stays short: measured on 2 cores at 2,250 Decides/s, callers waited 0.7 s (p50) and
timed out, with the loop never late by half the target. What does show it is the loop's
thread wanting a CPU nearly all the time: running, or runnable and waiting for a core (Linux
counts both, /proc/thread-self/schedstat). That share was 0.37 at 500 Decides/s, 0.75 at
1,500 and 0.95 at 2,250. While its moving average is above SHED_BUSY the share shed rises
in proportion to the excess, up to BUSY_MAX_SHARE: refusals cost CPU too, so a loop kept busy
by them alone (or by other processes on its cores) must not end up refusing everything.

Refusing relieves the loop of only part of a call: grpc.aio's own work per call (about 200
µs of CPU here, a served Decide costs the gateway about 400) is spent on a refused call too.
So shedding turns timeouts into fast refusals, but on a node whose cores are all taken it
does not bring what it admits back to a quiet node's latency (bench.overload measures both).
"""
from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Callable

from kairos.cluster.settings import SHED_BUSY, SHED_IDLE_UPDATE_S, SHED_TARGET_S, SHED_UPDATE_S

ALPHA, BETA = 0.125, 1.25  # RFC 8033's gains, per second of delay
MAX_STEP = 0.02  # the most the share rises per update once it is 10 % or more (RFC 8033 5.1)
DECAY = 0.98  # per update while the delay is under half the target (and the loop not busy)
BUSY_WEIGHT = 0.2  # of each update's measure in the busy share's moving average (~75 ms)
BUSY_GAIN = 0.15  # share added per update, per unit of busy share above SHED_BUSY
BUSY_MAX_SHARE = 0.9  # the most the busy share alone makes the gateway refuse
# Under this fraction of SHED_BUSY the loop counts as idle enough for the share to decay;
# between it and SHED_BUSY the share holds, so that it does not swing on and off.
BUSY_HOLD = 0.9
# Under this fraction of SHED_BUSY (and with nothing shed, the loop on time) the share is
# updated every SHED_IDLE_UPDATE_S rather than every SHED_UPDATE_S.
BUSY_IDLE = 0.5
# An idle shedder that saw no call for this long updates once this long, or when the next call
# arrives, rather than ten times a second; shorter gaps between calls keep it updating as it
# did, as waiting and being woken for each of a trickle of calls would cost as much.
PARK_AFTER_S = 1.0


class Shedder:
    """`shed_share` is the share of new calls refused; `run()` keeps it."""

    def __init__(self, target_s: float = SHED_TARGET_S, update_s: float = SHED_UPDATE_S,
                 busy_target: float = SHED_BUSY, draw: Callable[[], float] = random.random,
                 idle_update_s: float = SHED_IDLE_UPDATE_S):
        self.target_s = target_s
        self.update_s = update_s
        self.idle_update_s = max(idle_update_s, update_s)
        self.busy_target = busy_target
        self._busy_on = busy_target < 1.0  # SHED_BUSY=1 turns the busy signal off
        self._draw = draw
        self.shed_share = 0.0
        self.delay_s = 0.0  # the last delay measured
        self.busy = 0.0  # moving average of the share of time the loop wanted a CPU
        self.refused = 0  # calls refused so far
        self._calls = 0  # calls asked about so far
        self._arrived: asyncio.Event | None = None  # set by the next call, while parked
        self._arrived_at = 0.0  # when it was set

    def admits(self) -> bool:
        """Whether to take a new call (a refused one is counted)."""
        self._calls += 1
        if self._arrived is not None and not self._arrived.is_set():
            self._arrived_at = time.monotonic()
            self._arrived.set()
        if self.shed_share == 0.0 or (self.delay_s < self.target_s / 2
                                      and not self._loop_busy()
                                      and self.shed_share < 0.2):
            return True
        if self._draw() >= self.shed_share:
            return True
        self.refused += 1
        return False

    async def run(self) -> None:
        """Measure the delay and the loop's demand and move the share, every `update_s`
        (`idle_update_s` while `idle()`), until cancelled (within the loop's thread: the
        demand measured is the caller's thread's)."""
        calls, called = self._calls, time.monotonic()
        try:
            with ThreadDemand() as demand:
                while True:
                    if calls != self._calls:
                        calls, called = self._calls, time.monotonic()
                    elif self.idle() and time.monotonic() - called >= PARK_AFTER_S:
                        start = time.monotonic()
                        arrived = await self._next_call(PARK_AFTER_S)
                        now, busy = time.monotonic(), demand.share()
                        self.update(now - arrived if arrived is not None else
                                    max(0.0, now - start - PARK_AFTER_S), busy)
                        if arrived is not None or busy >= BUSY_IDLE * self.busy_target:
                            calls, called = self._calls, now  # updating as before
                        continue
                    start = time.monotonic()
                    interval = self.idle_update_s if self.idle() else self.update_s
                    await asyncio.sleep(interval)
                    self.update(max(0.0, time.monotonic() - start - interval), demand.share())
        finally:
            self.shed_share = 0.0  # nothing keeps it any more: admit everything
            self._arrived = None

    async def _next_call(self, timeout_s: float) -> float | None:
        """When `admits` was next asked about a call, or None after `timeout_s` without."""
        self._arrived = arrived = asyncio.Event()
        try:
            await asyncio.wait_for(arrived.wait(), timeout_s)
            return self._arrived_at
        except TimeoutError:
            return None
        finally:
            self._arrived = None

    def idle(self) -> bool:
        """Nothing shed, the loop on time and far from busy: updates may come less often."""
        return self.shed_share == 0.0 and self.delay_s < self.target_s / 2 and \
            not (self._busy_on and self.busy >= BUSY_IDLE * self.busy_target)

    def update(self, delay_s: float, busy: float = 0.0) -> None:
        """One PIE update with the delay just measured, and the share of the time since the
        last update that the loop's thread wanted a CPU."""
        self.busy += BUSY_WEIGHT * (busy - self.busy)
        p = self.shed_share
        step = _scale(p) * (ALPHA * (delay_s - self.target_s) + BETA * (delay_s - self.delay_s))
        if self._loop_busy() and p < BUSY_MAX_SHARE:
            step = max(step, min(BUSY_GAIN * (self.busy - self.busy_target),
                                 BUSY_MAX_SHARE - p))
        if p >= 0.1:
            step = min(step, MAX_STEP)
        p += step
        if (max(delay_s, self.delay_s) < self.target_s / 2  # RFC 8033: no delay at all
                and not (self._busy_on and self.busy >= BUSY_HOLD * self.busy_target)):
            p *= DECAY
        self.shed_share = min(max(p, 0.0), 1.0)
        self.delay_s = delay_s

    def _loop_busy(self) -> bool:
        return self._busy_on and self.busy > self.busy_target


class ThreadDemand:
    """The share of wall time the calling thread wanted a CPU since the last `share()`: the
    time it ran plus the time it was runnable and waited in a run queue (Linux's schedstat).
    Where schedstat cannot be read, or reads no run time for a thread that is running (a
    kernel that keeps no schedstats), only the time it ran (`time.thread_time`)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        try:
            self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            if self._schedstat_s()[0] <= 0.0:
                self._close()
        except (OSError, ValueError):
            self._close()
        self._last = (time.monotonic(), self._wanted_s())

    def __enter__(self) -> ThreadDemand:
        return self

    def __exit__(self, *exc) -> None:
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def share(self) -> float:
        """(0 for the interval in which schedstat stopped reading: the fallback's clock
        cannot be compared with its; at most 2, whatever a clock's rounding does)."""
        reading = self._fd is not None
        wanted = self._wanted_s()
        now = time.monotonic()
        (then, before), self._last = self._last, (now, wanted)
        if reading and self._fd is None:
            return 0.0
        return min(max((wanted - before) / max(now - then, 1e-9), 0.0), 2.0)

    def _wanted_s(self) -> float:
        if self._fd is not None:
            try:
                return sum(self._schedstat_s())
            except (OSError, ValueError):
                self._close()  # from here on, the time it ran alone
        return time.thread_time()

    def _schedstat_s(self) -> tuple[float, float]:
        """(seconds run, seconds waited runnable) of the thread that opened the file."""
        ran_ns, waited_ns = os.pread(self._fd, 128, 0).split()[:2]
        return int(ran_ns) / 1e9, int(waited_ns) / 1e9


def _scale(p: float) -> float:
    """RFC 8033's auto-tuning: small shares move in small steps, so that a stable share of a
    fraction of a percent is reachable."""
    for bound, divisor in ((1e-6, 2048), (1e-5, 512), (1e-4, 128), (1e-3, 32), (1e-2, 8),
                           (1e-1, 2)):
        if p < bound:
            return 1.0 / divisor
    return 1.0
