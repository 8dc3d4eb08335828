"""An idle gateway's load shedder (issue 17: idle CPU): with no call for PARK_AFTER_S it stops
waking its loop, and the next call starts it again, so an overload that call meets is still
measured, and shed, within an idle update."""
from __future__ import annotations

import asyncio
import time

from kairos.cluster.gateway import admission
from kairos.cluster.gateway.admission import Shedder

TARGET_S = 0.015
IDLE_UPDATE_S = 0.02
PARK_AFTER_S = 0.1


def shedder(monkeypatch) -> tuple[Shedder, list[tuple[float, float]]]:
    """A shedder whose updates are recorded: (when, the delay measured)."""
    monkeypatch.setattr(admission, "PARK_AFTER_S", PARK_AFTER_S)
    s = Shedder(TARGET_S, 0.005, 0.8, idle_update_s=IDLE_UPDATE_S)
    updates: list[tuple[float, float]] = []
    update = s.update

    def recorded(delay_s, busy=0.0):
        updates.append((time.monotonic(), delay_s))
        update(delay_s, busy)
    monkeypatch.setattr(s, "update", recorded)
    return s, updates


async def running(s: Shedder, test) -> None:
    task = asyncio.get_running_loop().create_task(s.run())
    try:
        await asyncio.wait_for(test(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_shedder_with_no_call_stops_updating_and_one_with_calls_goes_on(monkeypatch):
    s, updates = shedder(monkeypatch)

    async def test():
        await asyncio.sleep(PARK_AFTER_S + 3 * IDLE_UPDATE_S)
        parked = len(updates)
        await asyncio.sleep(0.4)
        assert len(updates) == parked  # 20 more before: one every IDLE_UPDATE_S
        for _ in range(20):  # a call every 20 ms: each update saw one
            assert s.admits()
            await asyncio.sleep(IDLE_UPDATE_S)
        assert len(updates) >= parked + 15

    asyncio.run(running(s, test))


def test_the_first_call_to_a_parked_shedder_has_the_overload_it_meets_measured(monkeypatch):
    s, updates = shedder(monkeypatch)

    async def test():
        await asyncio.sleep(PARK_AFTER_S + 3 * IDLE_UPDATE_S)
        parked = len(updates)
        called = time.monotonic()
        assert s.admits()
        await asyncio.sleep(0.001)
        time.sleep(0.05)  # the loop held: the calls behind this one wait
        while len(updates) == parked:
            await asyncio.sleep(0.001)
        when, delay_s = updates[parked]
        assert when - called < IDLE_UPDATE_S + 0.1
        assert delay_s > TARGET_S  # past the target: the share rises

    asyncio.run(running(s, test))
