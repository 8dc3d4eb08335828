"""A step's requests are built before it starts, not at their sends: built at the send (or
in the slack between sends, which at 20,000/s never comes), a top-rate step built nearly
every measured request inside its window, on the cores the server shares, after its send was
stamped. The start comes once they are built, so none of its sends leaves late for it."""
from __future__ import annotations

import asyncio
import random
import time

from bench import loadgen
from bench.journeys import DECIDE, EVENT, Journeys
from kairos.core.catalog import load_default_catalog

RATE, MEASURE_S = 20_000.0, 0.5
START_DELAY_S = 0.05


class TimedJourneys:
    """The workload's requests, with when each was built."""

    def __init__(self) -> None:
        self.journeys = Journeys(load_default_catalog(), 1000, 1)
        self.built: list[float] = []

    def next(self, kinds: frozenset[str]):
        self.built.append(time.perf_counter())
        return self.journeys.next(kinds)


class Calls:
    """A server that answers at once: what was sent, and when."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.times: list[float] = []

        async def call(payload: bytes, timeout: float) -> bytes:
            self.sent.append(payload)
            self.times.append(time.perf_counter())
            return b""
        self.unary = {DECIDE: call, EVENT: call}
        self.batch = call


def started(schedules: list[loadgen._Schedule]) -> loadgen._Start:
    """The parent's start, START_DELAY_S after the requests were built."""
    return loadgen._Start(lambda: asyncio.sleep(0, time.time() + START_DELAY_S), schedules)


def test_a_top_rate_step_is_built_before_its_first_send():
    journeys, calls = TimedJourneys(), Calls()
    recorder = loadgen.Recorder(seconds=MEASURE_S)
    schedule = loadgen._Schedule(RATE, 0.0, MEASURE_S, random.Random(1), recorder)

    async def run() -> None:
        await loadgen._unary(lambda customer: calls, schedule, journeys,
                             loadgen.OPS["decide"], recorder, started([schedule]))

    asyncio.run(run())
    count = len(schedule)
    assert count > RATE * MEASURE_S * 0.9
    # every request built once, in order, and sent; none of them after the first send
    assert len(journeys.built) == count == len(calls.sent) == recorder.sent
    assert max(journeys.built) < schedule.times[0] <= min(calls.times)
    expected = Journeys(load_default_catalog(), 1000, 1)
    assert calls.sent == [loadgen._serialised(expected.next(loadgen.OPS["decide"]))
                          for _ in range(count)]


def test_a_relays_batches_are_its_events_built_before_the_start():
    journeys, calls = TimedJourneys(), Calls()
    recorder = loadgen.Recorder(seconds=MEASURE_S)
    schedule = loadgen._Schedule(RATE, 0.0, MEASURE_S, random.Random(2), recorder)
    asyncio.run(loadgen._batches(calls, schedule, journeys, recorder, started([schedule])))
    assert max(journeys.built) < schedule.times[0]
    assert sum(len(loadgen.pb.EventBatch.FromString(b).events) for b in calls.sent) == \
        len(schedule) == recorder.kinds[EVENT].ok


def test_every_lane_starts_once_the_last_has_built():
    """A process's stream lanes share one start: the first lane built waits for the last."""
    recorder = loadgen.Recorder(seconds=1.0)
    schedules = [loadgen._Schedule(100.0, 0.0, 1.0, random.Random(k), recorder)
                 for k in range(3)]
    asked: list[float] = []

    async def ready() -> float:
        asked.append(time.perf_counter())
        return time.time()

    async def lanes() -> None:
        start = loadgen._Start(ready, schedules)
        await asyncio.gather(*(start() for _ in schedules))

    asyncio.run(lanes())
    assert len(asked) == 1
    assert len({s.warm_end for s in schedules}) == 1  # the same t0
