"""A generator builds a step's requests ahead of their sends, between them, not all before
the first: built up front, a step at the top rates left its first sends seconds late."""
from __future__ import annotations

import asyncio
import random
import time

from bench import loadgen
from bench.journeys import DECIDE, Journeys
from kairos.core.catalog import load_default_catalog

BUILD_S = 0.0003  # per request: 400 of them take 120 ms, 120 sends' worth at 1,000/s


class SlowJourneys:
    """The workload's requests, each taking BUILD_S to build."""

    def __init__(self) -> None:
        self.journeys = Journeys(load_default_catalog(), 100, 1)
        self.built = 0

    def next(self, kinds: frozenset[str]):
        time.sleep(BUILD_S)
        self.built += 1
        return self.journeys.next(kinds)


class Calls:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

        async def decide(payload: bytes, timeout: float) -> bytes:
            self.sent.append(payload)
            return b""
        self.unary = {DECIDE: decide}


def test_sends_leave_on_schedule_while_the_requests_are_built():
    journeys, calls = SlowJourneys(), Calls()
    recorder = loadgen.Recorder(seconds=0.4)

    async def run() -> None:
        schedule = loadgen._Schedule(1000.0, time.perf_counter() + 0.005, 0.0, 0.4,
                                     random.Random(1), recorder)
        await loadgen._unary(lambda customer: calls, schedule, journeys,
                             loadgen.OPS["decide"], recorder)
        return len(schedule)

    count = asyncio.run(run())
    # every request built once, in order, and sent
    assert journeys.built == count == len(calls.sent) == recorder.sent
    expected = Journeys(load_default_catalog(), 100, 1)
    assert calls.sent == [loadgen._serialised(expected.next(loadgen.OPS["decide"]))
                          for _ in range(count)]
    # up front, the first sends left ~120 ms late; ahead, at most a slice's build late
    assert recorder.summary()["generator"]["lag_max_ms"] < 50.0
