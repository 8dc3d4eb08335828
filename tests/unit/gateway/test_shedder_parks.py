"""An idle gateway's load shedder (issue 17: idle CPU): with no call for PARK_AFTER_S it wakes
its loop once every PARK_AFTER_S instead of ten times a second, and the next call starts its
updates again, so an overload that call meets is still measured, and shed, within an idle
update; so is one of work on calls already open, which asks it nothing, within PARK_AFTER_S."""
from __future__ import annotations

import asyncio
import time

from kairos.cluster.gateway import admission
from kairos.cluster.gateway.admission import Shedder

TARGET_S = 0.015
IDLE_UPDATE_S = 0.02
PARK_AFTER_S = 0.1


def shedder(monkeypatch, target_s: float = TARGET_S, busy_target: float = 0.8
            ) -> tuple[Shedder, list[tuple[float, float]]]:
    """A shedder whose updates are recorded: (when, the delay measured)."""
    monkeypatch.setattr(admission, "PARK_AFTER_S", PARK_AFTER_S)
    s = Shedder(target_s, 0.005, busy_target, idle_update_s=IDLE_UPDATE_S)
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
    # what parks it is no call: on a loaded machine, its timers late by half a target of 15 ms
    # or its thread waiting for a core as long (busy) kept it updating (CI, 7 more updates)
    s, updates = shedder(monkeypatch, target_s=1.0, busy_target=1.0)

    async def test():
        await asyncio.sleep(PARK_AFTER_S + 3 * IDLE_UPDATE_S)
        parked = len(updates)
        await asyncio.sleep(0.4)
        assert len(updates) <= parked + 5  # 20 more before: one every IDLE_UPDATE_S
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
        while not any(delay_s > TARGET_S for _, delay_s in updates[parked:]):
            await asyncio.sleep(0.001)
        when = next(when for when, delay_s in updates[parked:] if delay_s > TARGET_S)
        assert when - called < IDLE_UPDATE_S + 0.05 + 0.1  # past the target: the share rises

    asyncio.run(running(s, test))


def test_a_parked_shedder_sees_work_on_open_calls_keep_the_loop_busy(monkeypatch):
    """Stream messages and watches ask the shedder nothing: parked, it still measures the
    loop's demand every PARK_AFTER_S and, finding it busy, updates as before, so the first
    new call after a while of such work meets a share already raised."""
    s, updates = shedder(monkeypatch)
    monkeypatch.setattr(s, "_busy_on", True)

    async def test():
        await asyncio.sleep(PARK_AFTER_S + 3 * IDLE_UPDATE_S)  # parked
        stop = time.monotonic() + 1.0

        async def stream():  # an open stream's messages: CPU on the loop, no admits
            while time.monotonic() < stop:
                end = time.perf_counter() + 0.004
                while time.perf_counter() < end:
                    pass
                await asyncio.sleep(0)
        await asyncio.gather(*(stream() for _ in range(4)))
        assert s.busy >= admission.BUSY_IDLE * s.busy_target  # the updates saw it

    asyncio.run(running(s, test))
